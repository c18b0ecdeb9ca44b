#!/bin/sh
# Interoperability both ways: data written through diskcrypt reads back
# through a stock dm-crypt mapping with the same parameters, and the reverse;
# whole regions and small writes at unaligned offsets.
. /tests/kmod/common.sh
kmod_setup || { fail interop-setup "cannot load dm-diskcrypt or add the key"; exit 1; }

# name sector_size iv_offset large slot
for c in "ss512 512 0 0 32" "ss4096-large 4096 8192 1 36" "ss4096-ivhigh 4096 4294971392 0 40" \
	"ss1024-large 1024 64 1 44"; do
	# shellcheck disable=SC2086
	set -- $c
	name=$1 ss=$2 iv=$3 large=$4 slot=$5
	opts=$(feature_args "$ss" "$large")
	a=$((slot * MiB)) b=$(((slot + 2) * MiB))
	dm_create io-dc-a "0 $MiB diskcrypt aes-xts-plain64 $KEYREF $iv /dev/vda $a $opts"
	dm_create io-crypt-a "0 $MiB crypt aes-xts-plain64 $KEYREF $iv /dev/vda $a $opts"
	dm_create io-dc-b "0 $MiB diskcrypt aes-xts-plain64 $KEYREF $iv /dev/vda $b $opts"
	dm_create io-crypt-b "0 $MiB crypt aes-xts-plain64 $KEYREF $iv /dev/vda $b $opts"

	write_file "$DATA/pattern.bin" /dev/mapper/io-dc-a
	read_dev /dev/mapper/io-crypt-a /tmp/r
	check "interop-diskcrypt-to-dmcrypt-$name" cmp -s /tmp/r "$DATA/pattern.bin"

	write_file "$DATA/pattern.bin" /dev/mapper/io-crypt-b
	read_dev /dev/mapper/io-dc-b /tmp/r
	check "interop-dmcrypt-to-diskcrypt-$name" cmp -s /tmp/r "$DATA/pattern.bin"

	# A small write at an odd sector (in sector_size units) through
	# diskcrypt, read through dm-crypt: only that piece changes.
	dd if=/dev/urandom of=/tmp/piece bs="$ss" count=3 2>/dev/null
	dd if=/tmp/piece of=/dev/mapper/io-dc-a bs="$ss" seek=7 oflag=direct conv=notrunc 2>/dev/null
	cp "$DATA/pattern.bin" /tmp/expect
	dd if=/tmp/piece of=/tmp/expect bs="$ss" seek=7 conv=notrunc 2>/dev/null
	read_dev /dev/mapper/io-crypt-a /tmp/r
	check "interop-partial-write-$name" cmp -s /tmp/r /tmp/expect
	dm_remove io-dc-a io-crypt-a io-dc-b io-crypt-b
done
