#!/bin/sh
# Known-answer test: the same plaintext written through diskcrypt (on vda)
# and through dm-crypt (on vdb) with the same key, sector size, IV offset and
# iv_large_sectors gives byte-identical ciphertext. The host then decrypts
# vda's regions with OpenSSL (tests/kmod/run.sh) as the independent check.
. /tests/kmod/common.sh
kmod_setup || { fail kat-setup "cannot load dm-diskcrypt or add the key"; exit 1; }

grep -v '^#' /tests/kmod/kat-cases.txt | while read -r name ss iv large slot; do
	[ -n "$name" ] || continue
	off=$((slot * MiB))
	opts=$(feature_args "$ss" "$large")
	dm_create kat-dc "0 $MiB diskcrypt aes-xts-plain64 $KEYREF $iv /dev/vda $off $opts" &&
		dm_create kat-crypt "0 $MiB crypt aes-xts-plain64 $KEYREF $iv /dev/vdb $off $opts" || {
		fail "kat-$name" "cannot create mappings (iv_offset $iv, $opts)"
		dm_remove kat-dc kat-crypt
		continue
	}
	write_file "$DATA/pattern.bin" /dev/mapper/kat-dc
	write_file "$DATA/pattern.bin" /dev/mapper/kat-crypt
	raw_region /dev/vda "$slot" 1 /tmp/dc.raw
	raw_region /dev/vdb "$slot" 1 /tmp/crypt.raw
	check "kat-dmcrypt-$name" cmp -s /tmp/dc.raw /tmp/crypt.raw
	expect_fail "kat-not-plaintext-$name" cmp -s /tmp/dc.raw "$DATA/pattern.bin"
	read_dev /dev/mapper/kat-dc /tmp/back
	check "kat-roundtrip-$name" cmp -s /tmp/back "$DATA/pattern.bin"
	dm_remove kat-dc kat-crypt

	# Where the IV passes 2^32, plain64 and plain differ: a reader using
	# "plain" must not see the data.
	shift=0
	[ "$large" = 1 ] && shift=$(sector_shift "$ss")
	if [ $(((iv + MiB) >> shift)) -gt 4294967296 ]; then
		dm_create kat-plain "0 $MiB crypt aes-xts-plain $KEYREF $iv /dev/vda $off $opts"
		read_dev /dev/mapper/kat-plain /tmp/plain
		expect_fail "kat-plain-differs-$name" cmp -s /tmp/plain "$DATA/pattern.bin"
		dm_remove kat-plain
	fi
	hostcheck kat "$name"
done
