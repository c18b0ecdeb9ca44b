#!/bin/sh
# Module unload and reload with several devices created and removed.
. /tests/kmod/common.sh
kmod_setup || { fail reload-setup "cannot load dm-diskcrypt or add the key"; exit 1; }

for d in $(dmsetup ls --target diskcrypt 2>/dev/null | cut -f1); do dm_remove "$d"; done
for round in 1 2 3; do
	check "reload-rmmod-$round" /sbin/rmmod dm_diskcrypt
	check "reload-unloaded-$round" sh -c "! grep -q '^dm_diskcrypt ' /proc/modules"
	check "reload-modprobe-$round" /sbin/modprobe dm-diskcrypt
	ok=1
	for i in 0 1 2 3; do
		dm_create "rl$i" "0 $((MiB / 4)) diskcrypt aes-xts-plain64 $KEYREF 0 /dev/vda $((60 * MiB + i * MiB / 4))" || ok=0
		dd if="$DATA/pattern.bin" of="/dev/mapper/rl$i" bs=64k count=4 oflag=direct 2>/dev/null || ok=0
		dd if="/dev/mapper/rl$i" of=/tmp/r bs=64k count=4 iflag=direct 2>/dev/null || ok=0
		dd if="$DATA/pattern.bin" of=/tmp/p bs=64k count=4 2>/dev/null
		cmp -s /tmp/r /tmp/p || ok=0
	done
	check "reload-devices-work-$round" test "$ok" = 1
	expect_fail "reload-rmmod-busy-$round" /sbin/rmmod dm_diskcrypt
	dm_remove rl0 rl1 rl2 rl3
done
check reload-target-listed sh -c "dmsetup targets | grep -q '^diskcrypt *v1.1.0'"
