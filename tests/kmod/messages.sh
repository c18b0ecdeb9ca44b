#!/bin/sh
# Key messages: refused while live; after suspend + wipe, resume is refused
# until a key is set; the right key serves the same data again, a wrong one
# does not.
. /tests/kmod/common.sh
kmod_setup || { fail messages-setup "cannot load dm-diskcrypt or add the key"; exit 1; }

dd if=/dev/urandom bs=64 count=1 2>/dev/null | keyctl padd logon diskcrypt:other @s >/dev/null
dm_create msg "0 $MiB diskcrypt aes-xts-plain64 $KEYREF 0 /dev/vda $((48 * MiB))" ||
	{ fail messages-create "cannot create the mapping"; exit 1; }
write_file "$DATA/pattern.bin" /dev/mapper/msg

dmesg -c >/dev/null
expect_fail msg-wipe-refused-live dmsetup message msg 0 key wipe
check msg-wipe-refused-live-reason kernel_says "key messages need a suspended device"
expect_fail msg-set-refused-live dmsetup message msg 0 key set "$KEYREF"
read_dev /dev/mapper/msg /tmp/r
check msg-live-data-intact cmp -s /tmp/r "$DATA/pattern.bin"

dmsetup suspend msg
check msg-wipe-suspended dmsetup message msg 0 key wipe
check msg-status-wiped sh -c "dmsetup status msg | grep -q ' key:wiped '"
dmesg -c >/dev/null
expect_fail msg-resume-refused-after-wipe dmsetup resume msg
check msg-resume-refused-reason kernel_says "resume refused: the key was wiped"

dmesg -c >/dev/null
expect_fail msg-set-missing-key-refused dmsetup message msg 0 key set :64:logon:diskcrypt:absent
check msg-set-missing-key-reason kernel_says "key set refused: Key not found in the caller's keyrings"
expect_fail msg-set-hex-refused dmsetup message msg 0 key set "$(od -An -tx1 "$DATA/key.bin" | tr -d ' \n')"
expect_fail msg-unknown-refused dmsetup message msg 0 frobnicate now
expect_fail msg-resume-still-refused dmsetup resume msg

# A wrong key: the device resumes but the data is not readable.
check msg-set-other-key dmsetup message msg 0 key set :64:logon:diskcrypt:other
check msg-resume-other-key dmsetup resume msg
check msg-table-names-other-key sh -c "dmsetup table msg | grep -q ':64:logon:diskcrypt:other '"
read_dev /dev/mapper/msg /tmp/r
expect_fail msg-wrong-key-garbles cmp -s /tmp/r "$DATA/pattern.bin"

# The right key: the same data again.
dmsetup suspend msg
check msg-set-key dmsetup message msg 0 key set "$KEYREF"
check msg-resume-after-set dmsetup resume msg
echo 3 >/proc/sys/vm/drop_caches
read_dev /dev/mapper/msg /tmp/r
check msg-same-data-after-set cmp -s /tmp/r "$DATA/pattern.bin"
check msg-status-valid sh -c "dmsetup status msg | grep -q ' key:valid '"
dm_remove msg
