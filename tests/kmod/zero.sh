#!/bin/sh
# zero_unwritten: a never-written (all-zero ciphertext) region reads as zeros;
# written data, written zeros included, reads back exactly; without the
# option the same region reads as noise.
. /tests/kmod/common.sh
kmod_setup || { fail zero-setup "cannot load dm-diskcrypt or add the key"; exit 1; }
dd if=/dev/zero of=/tmp/z1 bs=1M count=1 2>/dev/null

for ss in 512 4096; do
	slot=$([ "$ss" = 512 ] && echo 52 || echo 56)
	off=$((slot * MiB))
	opts=$(feature_args "$ss" 1)
	zopts=$(feature_args "$ss" 1 zero_unwritten)
	dm_create zero "0 $((4 * MiB)) diskcrypt aes-xts-plain64 $KEYREF 0 /dev/vda $off $zopts" ||
		{ fail "zero-create-$ss" "cannot create: $zopts"; continue; }
	dm_create nozero "0 $((4 * MiB)) diskcrypt aes-xts-plain64 $KEYREF 0 /dev/vda $off $opts"

	read_dev /dev/mapper/zero /tmp/r 4
	check "zero-unwritten-reads-zeros-$ss" is_zero_file /tmp/r
	read_dev /dev/mapper/nozero /tmp/r 1
	expect_fail "zero-off-reads-noise-$ss" is_zero_file /tmp/r

	write_file /tmp/z1 /dev/mapper/zero 0
	write_file "$DATA/pattern.bin" /dev/mapper/zero 1
	read_dev /dev/mapper/zero /tmp/r 1 0
	check "zero-written-zeros-read-back-$ss" is_zero_file /tmp/r
	raw_region /dev/vda "$slot" 1 /tmp/raw
	expect_fail "zero-written-zeros-encrypted-$ss" is_zero_file /tmp/raw
	read_dev /dev/mapper/zero /tmp/r 1 1
	check "zero-written-data-read-back-$ss" cmp -s /tmp/r "$DATA/pattern.bin"
	read_dev /dev/mapper/zero /tmp/r 2 2
	check "zero-rest-still-zeros-$ss" is_zero_file /tmp/r
	# Without the option, written data still reads the same.
	read_dev /dev/mapper/nozero /tmp/r 1 1
	check "zero-same-ciphertext-$ss" cmp -s /tmp/r "$DATA/pattern.bin"
	check "zero-status-counts-$ss" sh -c "dmsetup status zero | grep -qv ' zero_sectors:0 '"
	dm_remove zero nozero
done
