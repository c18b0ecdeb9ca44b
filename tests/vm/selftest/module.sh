#!/bin/sh
# shellcheck source-path=SCRIPTDIR
# Harness self-test: the out-of-tree module given with mkinitramfs.sh --module loads
# by name (depmod ran over /lib/modules/$KVER/extra/) and unloads.
# shellcheck source=../guest/lib.sh
. "${DCTEST_LIB:-/lib/dctest/lib.sh}"

dmesg_mark
check module-in-extra test "$(modinfo -n dctest_dummy)" = \
	"/lib/modules/$KVER/extra/dctest_dummy.ko"
check modprobe-by-name modprobe dctest_dummy
check module-listed grep -q '^dctest_dummy ' /proc/modules
check module-logged sh -c 'dmesg | grep -q "dctest_dummy: loaded"'
check rmmod rmmod dctest_dummy
die_on_kernel_warning module-kernel-log
