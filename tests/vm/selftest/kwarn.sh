#!/bin/sh
# shellcheck source-path=SCRIPTDIR
# Harness self-test: makes the kernel log a "Call Trace" (sysrq l: backtrace of all
# CPUs), which die_on_kernel_warning and /init's final dmesg scan must report.
# shellcheck source=../guest/lib.sh
. "${DCTEST_LIB:-/lib/dctest/lib.sh}"

dmesg_mark
pass kwarn-started
echo l >/proc/sysrq-trigger
sleep 1
die_on_kernel_warning kwarn-detected
