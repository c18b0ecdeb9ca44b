# diskcrypt: top-level build and test entry points.
#
#   make demo     install dependencies, build, boot the QEMU guest and tell the
#                 story: HSM key, format, attach, write, detach, attach, read,
#                 status, audit (the README's first command)
#   make check    every test: lint, host unit tests (a Release unity build with
#                 -Werror, and ASan+UBSan), 10 s of each fuzz
#                 target, the harness self-test, the kernel suite on Debian's
#                 kernel and on the debug kernel (DEBUG_KERNEL=0: not), the
#                 attach suite in QEMU guests, the Debian packages and the
#                 systemd guest (the README's second command)
#   make all      build the module (kmod/) and the C++ parts (CMake)
#   make debug-kernel  build the guest's debug kernel (KASAN, lockdep, ...) once;
#                 cached in ~/.cache/diskcrypt/debug-kernel (tests/vm/debug-kernel.sh)
#   make test-kmod-debug  the kernel suite's debug-full guest on that kernel
#                 alone (make check: beside the other steps)
#   make test-attach  agent, CLI, SoftHSM2 and the module together in a guest
#   make deb      the Debian packages (diskcrypt, diskcrypt-dkms) in build/deb, lintian
#   make test-packaging  the packages, lintian, dkms build, make install DESTDIR=
#   make test-systemd  the packages installed in a Debian guest booting systemd:
#                 units, hardening, restarts, watchdog, udev auto-attach (hot-plug),
#                 the audit trail read from the journal
#   make bench    throughput (raw, dm-crypt, diskcrypt) in two modes, then attach
#                 latency: BENCH_MODE=both (default), icount (instructions per
#                 I/O under QEMU -icount, repeatable) or wallclock (medians)
#   make bench-attach attach latency alone: diskcrypt vs cryptsetup open
#   make bench-kms  KMS unwraps per second, p50/p99, 1/8/64 at once: PKCS#11
#                 (SoftHSM2) and KMIP (PyKMIP over TLS) side by side
#   make lint     checkpatch --strict, W=1, sparse, clang-tidy, clang-format
#   make fuzz-smoke  build the libFuzzer targets (clang) and run each for
#                 FUZZ_SMOKE_SECONDS (10); part of make check
#   make fuzz     run each fuzz target for FUZZ_SECONDS (1800) and print the
#                 executions and crashes per target (FUZZ_PARALLEL=2: two at a time)
#   make release-check  a Release build with -Werror (packagers' flags build clean)
#   make install  install the module and programs (DESTDIR honoured)
#   make clean
#
# Build outputs go to build/ (override with BUILD=...).

BUILD ?= $(CURDIR)/build
export DISKCRYPT_BUILD := $(BUILD)
JOBS ?= $(shell nproc)
FUZZ_SECONDS ?= 1800
FUZZ_SMOKE_SECONDS ?= 10
FUZZ_PARALLEL ?= 1
BENCH_MODE ?= both
# -Werror for every build made here (and CI); CMake leaves it off for packagers.
WERROR := -DDISKCRYPT_WERROR=ON
# The plain build (build/cmake): RelWithDebInfo for development. make check
# builds it as Release, what a distribution builds, and runs every test on
# that: one build is both the Release check and the tested build.
CXX_BUILD_TYPE ?= RelWithDebInfo
# make check builds it as a unity build (CMAKE_UNITY_BUILD): 347 CPU-seconds
# against 523 one file at a time (Release, 2026-12-03). The package build
# (packaging/build-deb.sh) compiles one file at a time, as a distribution
# does, so it still shows a file that misses an include, and
# tests/packaging/run.sh fails on any compiler warning in it.
CXX_UNITY ?= OFF

all: kmod cxx

deps:
	@packaging/install-deps.sh

kmod:
	$(MAKE) -C kmod

cxx:
	cmake -S . -B $(BUILD)/cmake -DCMAKE_BUILD_TYPE=$(CXX_BUILD_TYPE) -DCMAKE_UNITY_BUILD=$(CXX_UNITY) \
		$(WERROR) >/dev/null
	cmake --build $(BUILD)/cmake -j $(JOBS)

# A unity build: it compiles the tree in about 25% less CPU time (300 s
# against 406 s).
cxx-asan:
	cmake -S . -B $(BUILD)/asan -DCMAKE_BUILD_TYPE=Debug -DDISKCRYPT_SANITIZE=ON \
		-DCMAKE_UNITY_BUILD=ON $(WERROR) >/dev/null
	cmake --build $(BUILD)/asan -j $(JOBS)

# What a distribution builds (Release), with -Werror: it must stay warning-free.
release-check:
	cmake -S . -B $(BUILD)/release -DCMAKE_BUILD_TYPE=Release $(WERROR) >/dev/null
	cmake --build $(BUILD)/release -j $(JOBS)

# libFuzzer targets: clang, -fsanitize=fuzzer,address,undefined (tests/fuzz).
# A unity build, as cxx-asan: the agent's code is compiled in a few batches.
fuzz-build:
	cmake -S . -B $(BUILD)/fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER=clang++-14 \
		-DDISKCRYPT_FUZZ=ON -DCMAKE_UNITY_BUILD=ON $(WERROR) >/dev/null
	cmake --build $(BUILD)/fuzz -j $(JOBS) --target fuzz-targets

fuzz-smoke: fuzz-build
	FUZZ_PARALLEL=$(JOBS) tests/fuzz/run.sh $(BUILD)/fuzz $(FUZZ_SMOKE_SECONDS)

fuzz: deps
	$(MAKE) fuzz-build
	FUZZ_PARALLEL=$(FUZZ_PARALLEL) tests/fuzz/run.sh $(BUILD)/fuzz $(FUZZ_SECONDS)

lint: deps
	tests/lint.sh

unit: cxx cxx-asan
	cd $(BUILD)/cmake && ctest --output-on-failure -j $(JOBS)
	cd $(BUILD)/asan && ctest --output-on-failure -j $(JOBS)

test-vm:
	tests/vm/selftest.sh

debug-kernel:
	JOBS=$(JOBS) tests/vm/debug-kernel.sh >/dev/null

test-kmod: kmod cxx
	tests/kmod/run.sh

test-kmod-debug: kmod cxx debug-kernel
	DISKCRYPT_GUESTS=debug-full tests/kmod/run.sh

test-attach: kmod cxx
	tests/attach/run.sh

# The Debian packages (lintian), DKMS, make install DESTDIR=; then the
# systemd guest installs those packages and tests the units.
test-packaging: kmod
	MAKE_INSTALL_ARGS="CXX_BUILD_TYPE=$(CXX_BUILD_TYPE)" tests/packaging/run.sh

test-systemd: test-packaging
	tests/systemd/run.sh

deb:
	packaging/build-deb.sh

# make check also runs the kernel suite's debug-full guest (tests/kmod/run.sh)
# on the debug kernel, started at once, beside the other steps: it builds the
# debug kernel first when it is not cached (18-20 CPU-minutes), then boots it.
# It runs in a process group of its own, so that a failing step stops it with
# all its children; its output is shown, and its status counted, at the end
# (log: $(BUILD)/test-kmod-debug.log). Its KASAN and KFENCE take the place of
# the slub guest (slub_debug on Debian's kernel: the same tests, a subset of
# the memory errors KASAN reports), so test-kmod then leaves that guest out.
# DEBUG_KERNEL=0 leaves the debug guest out and runs the slub guest instead.
# The fuzz smoke and the Debian packages' build (packaging/build-deb.sh,
# lintian included) run in the background too, at nice 19, from the end of
# the unit step: they take the CPU that the guests of test-vm, test-kmod and
# test-attach leave idle (the attach guest kept 45% of two cores busy,
# 2026-12-03). test-systemd waits for the packages and checks them
# (tests/packaging/run.sh with DEBS_PREBUILT=1) before its guest installs them.
DEBUG_KERNEL ?= 1
ifeq ($(DEBUG_KERNEL),1)
CHECK_KMOD_GUESTS := max-smp2 qemu64 forward
else
CHECK_KMOD_GUESTS := max-smp2 qemu64 forward slub
endif
check: deps
	@mkdir -p $(BUILD); bgjobs=""; \
	background() { \
		name=$$1; shift; \
		echo "check: $$name (started $$(date +%T), in the background)"; \
		perl -e 'setpgrp or die "setpgrp: $$!\n"; exec @ARGV or die "$$ARGV[0]: $$!\n"' \
			"$$@" >$(BUILD)/$$name.log 2>&1 & \
		bgjobs="$$bgjobs $$name:$$!"; \
	}; \
	await() { \
		rest=""; \
		for j in $$bgjobs; do \
			if [ "$${j%%:*}" != "$$1" ]; then rest="$$rest $$j"; continue; fi; \
			echo "check: waiting for $$1 ($$(date +%T))"; \
			rc=0; wait $${j#*:} || rc=$$?; \
			cat $(BUILD)/$$1.log; \
			[ $$rc = 0 ] || { echo "check: $$1 failed (exit $$rc)"; exit 1; }; \
		done; \
		bgjobs=$$rest; \
	}; \
	trap 'for j in $$bgjobs; do kill -- -$${j#*:} 2>/dev/null; done; true' EXIT; \
	trap 'exit 130' INT TERM; \
	if [ "$(DEBUG_KERNEL)" = 1 ]; then \
		background test-kmod-debug env DISKCRYPT_GUESTS=debug-full \
			DISKCRYPT_KMOD_WORK=$(BUILD)/vm/kmod-debug-full JOBS=$(JOBS) tests/kmod/run.sh; \
	fi; \
	for step in lint unit fuzz-smoke test-vm test-kmod test-attach test-systemd; do \
		if [ $$step = fuzz-smoke ]; then \
			background fuzz-smoke nice -n 19 $(MAKE) -s fuzz-smoke; \
			background deb nice -n 19 packaging/build-deb.sh; \
			continue; \
		fi; \
		[ $$step != test-systemd ] || await deb; \
		echo "check: $$step (started $$(date +%T))"; \
		DEBS_PREBUILT=1 DISKCRYPT_GUESTS="$(CHECK_KMOD_GUESTS)" \
			$(MAKE) $$step CXX_BUILD_TYPE=Release CXX_UNITY=ON || exit 1; \
	done; \
	for j in $$bgjobs; do await $${j%%:*}; done; \
	echo "check: passed ($$(date +%T))"

demo: deps
	$(MAKE) all
	tests/demo/run.sh

bench: deps
	$(MAKE) all
	BENCH_MODE=$(BENCH_MODE) tests/bench/run.sh
	tests/bench/attach-run.sh
	$(BUILD)/cmake/tests/kms-bench "[.bench]"

bench-kms: deps
	$(MAKE) all
	$(BUILD)/cmake/tests/kms-bench "[.bench]"

bench-attach: deps
	$(MAKE) all
	tests/bench/attach-run.sh

# PREFIX (default /usr/local) is set at configure time: the unit names the
# agent's installed path. The module goes to /lib/modules/KVER/updates, the
# token plugin to libcryptsetup's directory; DESTDIR is honoured by both.
PREFIX ?= /usr/local
install: kmod
	cmake -S . -B $(BUILD)/cmake -DCMAKE_BUILD_TYPE=$(CXX_BUILD_TYPE) -DCMAKE_INSTALL_PREFIX=$(PREFIX) $(WERROR) >/dev/null
	cmake --build $(BUILD)/cmake -j $(JOBS)
	$(MAKE) -C kmod install DESTDIR=$(DESTDIR)
	DESTDIR=$(DESTDIR) cmake --install $(BUILD)/cmake

clean:
	$(MAKE) -C kmod clean
	rm -rf $(BUILD)

.PHONY: deb test-packaging test-systemd all deps kmod debug-kernel test-kmod-debug cxx cxx-asan release-check fuzz-build fuzz-smoke fuzz lint unit test-vm test-kmod test-attach check demo bench bench-attach bench-kms install clean
