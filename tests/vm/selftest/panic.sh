#!/bin/sh
# shellcheck source-path=SCRIPTDIR
# Harness self-test: crashes the kernel (sysrq c); the runner must report a panic.
# shellcheck source=../guest/lib.sh
. "${DCTEST_LIB:-/lib/dctest/lib.sh}"

pass panic-started
echo c >/proc/sysrq-trigger
