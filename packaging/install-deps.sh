#!/usr/bin/env bash
# Install every build and test dependency of diskcrypt from Debian 12's archive.
#
# Usage: packaging/install-deps.sh [--check]
#   --check   only list missing packages; exit 1 if any is missing, 0 otherwise.
#
# Idempotent and quiet when everything is present: dpkg-query decides first, and
# apt-get runs only for missing packages. Installing needs root; sudo is used when
# available. Recommends are never installed (they pull in systemd and ~200 packages).
# No kernel image is installed on purpose: tests/vm/kernel.sh downloads and unpacks
# the guest kernel without installing it.
set -euo pipefail

PACKAGES=(
	# C/C++ toolchain and build systems
	build-essential make gcc g++ cmake pkg-config
	# out-of-tree kernel module build against Debian's kernel
	linux-headers-amd64 bc flex bison libelf-dev
	# lint and static analysis
	sparse clang-format clang-tidy
	# fuzzing (make fuzz-smoke, make fuzz): clang 14 and its runtimes, which
	# ship libFuzzer (libclang_rt.fuzzer-x86_64.a) and the ASan/UBSan runtimes
	clang-14 libclang-rt-14-dev
	# guest kernel tests: emulator, guest userland, initramfs tools
	qemu-system-x86 busybox-static kmod cryptsetup-bin dmsetup keyutils fio
	cpio xz-utils zstd
	# crypto tooling used by tests to check ciphertext on the host
	openssl
	# scripting
	perl python3
	# agent and CLI libraries
	libcryptsetup-dev libdevmapper-dev libkeyutils-dev libsystemd-dev libssl-dev
	libcli11-dev nlohmann-json3-dev libblkid-dev libtomlplusplus-dev
	# host tests of format: filesystems to refuse, loop devices, other users, blkid
	e2fsprogs mount util-linux
	# unit tests (Debian 12 ships Catch2 v2, header-only)
	catch2
	# e2e: strace kills the agent at each of its writes (rewrap crash safety)
	strace
	# Debian packages (packaging/build-deb.sh), DKMS, man pages, and the
	# systemd guest's root file system (tests/vm/mkrootfs-systemd.sh)
	dpkg-dev debhelper dh-dkms dkms lintian fakeroot go-md2man man-db mmdebstrap
	# PKCS#11 and KMIP KMS backends and their test servers (SoftHSM2, PyKMIP)
	libp11-kit-dev softhsm2 python3-pykmip opensc
)

check_only=0
case "${1:-}" in
"") ;;
--check) check_only=1 ;;
-h | --help)
	awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
	exit 0
	;;
*)
	echo "install-deps.sh: unknown argument '$1' (try --help)" >&2
	exit 2
	;;
esac

# Collect the packages dpkg does not report as installed (one dpkg-query run; it
# complains about unknown packages, which are simply missing).
declare -A installed=()
while read -r pkg status; do
	if [[ "$status" == installed ]]; then
		installed[$pkg]=1
	fi
done < <(dpkg-query -W -f='${Package} ${db:Status-Status}\n' "${PACKAGES[@]}" 2>/dev/null || true)
missing=()
for pkg in "${PACKAGES[@]}"; do
	[[ -n "${installed[$pkg]:-}" ]] || missing+=("$pkg")
done

if ((${#missing[@]} == 0)); then
	exit 0
fi

if ((check_only)); then
	echo "missing packages: ${missing[*]}" >&2
	exit 1
fi

# Installing needs root: use sudo when we are not root.
as_root=()
if ((EUID != 0)); then
	if command -v sudo >/dev/null 2>&1; then
		as_root=(sudo)
	else
		echo "install-deps.sh: need root to install: ${missing[*]}" >&2
		echo "install-deps.sh: run as root, or install sudo" >&2
		exit 1
	fi
fi

echo "install-deps.sh: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update -qq
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
	apt-get install -y -qq --no-install-recommends "${missing[@]}"
