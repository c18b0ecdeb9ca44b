// Replays fuzz inputs without libFuzzer (g++ builds, ctest): every regular
// file under each argument (a file or a folder; a missing folder is empty) is
// passed once to LLVMFuzzerTestOneInput, in name order. A crash, a sanitizer
// report or an escaping exception fails the test like it fails the fuzzer.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);
// Optional: a target that needs one-time set-up defines it.
extern "C" __attribute__((weak)) int LLVMFuzzerInitialize(int* argc, char*** argv);

namespace {

std::vector<std::filesystem::path> inputs(const std::filesystem::path& arg)
{
    std::vector<std::filesystem::path> files;
    std::error_code ec;
    if (std::filesystem::is_regular_file(arg, ec)) {
        files.push_back(arg);
    } else if (std::filesystem::is_directory(arg, ec)) {
        for (const auto& e : std::filesystem::recursive_directory_iterator(arg)) {
            if (e.is_regular_file() && e.path().filename().string().front() != '.') {
                files.push_back(e.path());
            }
        }
    }
    std::sort(files.begin(), files.end());
    return files;
}

}  // namespace

int main(int argc, char** argv)
{
    if (LLVMFuzzerInitialize != nullptr) {
        (void)LLVMFuzzerInitialize(&argc, &argv);
    }
    std::size_t count = 0;
    for (int i = 1; i < argc; ++i) {
        for (const auto& path : inputs(argv[i])) {
            std::ifstream in(path, std::ios::binary);
            const std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
            if (!in.eof() && in.fail()) {
                std::cerr << "replay: cannot read " << path.string() << '\n';
                return 1;
            }
            std::cerr << "replay: " << path.string() << " (" << bytes.size() << " bytes)\n";
            (void)LLVMFuzzerTestOneInput(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size());
            ++count;
        }
    }
    std::cerr << "replay: " << count << " inputs, no crash\n";
    return count == 0 ? 1 : 0;
}
