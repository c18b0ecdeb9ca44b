#!/bin/sh
# Flush and FUA reach the device; discards pass only with allow_discards
# (and with zero_unwritten a discarded range reads as zeros).
. /tests/kmod/common.sh
kmod_setup || { fail flush-setup "cannot load dm-diskcrypt or add the key"; exit 1; }

# Field 16 of /sys/block/X/stat: flush requests completed.
flushes() { awk '{ print $16 }' /sys/block/vda/stat; }

dm_create fl "0 $((4 * MiB)) diskcrypt aes-xts-plain64 $KEYREF 0 /dev/vda $((236 * MiB))"
dm=$(dev_name fl)
check flush-write-cache-advertised test "$(cat "/sys/block/$dm/queue/write_cache")" = "$(cat /sys/block/vda/queue/write_cache)"

before=$(flushes)
dd if="$DATA/pattern.bin" of=/dev/mapper/fl bs=64k conv=fsync 2>/dev/null
check flush-fsync-reaches-device test "$(flushes)" -gt "$before"

# An O_DSYNC direct write is a REQ_FUA write; virtio-blk has no FUA, so the
# block layer turns it into a write plus a flush, which the counter shows.
before=$(flushes)
check flush-fua-write fio --name=fua --filename=/dev/mapper/fl --rw=write --bs=4k --offset=2m --size=4k \
	--direct=1 --sync=dsync --ioengine=psync --output=/dev/null
check flush-fua-reaches-device test "$(flushes)" -gt "$before"
read_dev /dev/mapper/fl /tmp/r
check flush-data-intact cmp -s /tmp/r "$DATA/pattern.bin"

check discard-not-offered test "$(cat "/sys/block/$dm/queue/discard_max_bytes")" = 0
expect_fail discard-refused-without-allow_discards blkdiscard -o 0 -l 1048576 /dev/mapper/fl
read_dev /dev/mapper/fl /tmp/r
check discard-refused-data-intact cmp -s /tmp/r "$DATA/pattern.bin"
dm_remove fl

# Discards need a device that honours them: a loop device on a tmpfs file
# (a discard punches a hole, which reads as zeros).
truncate -s 8M /tmp/loop.img
loopdev=$(losetup -f --show /tmp/loop.img)
dm_create fld "0 $((8 * MiB)) diskcrypt aes-xts-plain64 $KEYREF 0 $loopdev 0 2 allow_discards zero_unwritten"
write_file "$DATA/pattern.bin" /dev/mapper/fld 0
write_file "$DATA/pattern.bin" /dev/mapper/fld 1
check discard-allowed blkdiscard -o 1048576 -l 1048576 /dev/mapper/fld
read_dev /dev/mapper/fld /tmp/r 1 0
check discard-leaves-other-data cmp -s /tmp/r "$DATA/pattern.bin"
read_dev /dev/mapper/fld /tmp/r 1 1
check discard-range-reads-zeros is_zero_file /tmp/r
dd if="$loopdev" of=/tmp/raw bs=1M skip=1 count=1 iflag=direct 2>/dev/null
check discard-reached-device is_zero_file /tmp/raw
dm_remove fld
losetup -d "$loopdev"
rm -f /tmp/loop.img
