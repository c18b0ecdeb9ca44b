#!/bin/sh
# Alignment: a cipher driver whose alignmask asks for 16-byte IVs and whose
# request context is 4 bytes past a multiple of 8 (dctest_align, built from
# tests/kmod/align-kmod) sees every diskcrypt request aligned: each IV on 16
# bytes, each request as struct skcipher_request, in dm's per-bio data (the
# first request of a bio) and in the request pool (the others), for reads
# and writes, 512- and 4096-byte sectors. dm-crypt reads the data back.
. /tests/kmod/common.sh
kmod_setup || { fail align-setup "cannot load dm-diskcrypt or add the key"; exit 1; }
check align-driver-loads /sbin/modprobe dctest_align || exit 0

P=/sys/module/dctest_align/parameters
off=$((288 * MiB)) len=$((28 * MiB))
for ss in 512 4096; do
	opts=$(feature_args "$ss" 0)
	dm_create al "0 $len diskcrypt capi:xts-aes-dctest-align-plain64 $KEYREF 0 /dev/vda $off $opts" ||
		{ fail "align-create-$ss" "cannot create a mapping over xts-aes-dctest-align"; continue; }
	r0=$(cat $P/requests) iv0=$(cat $P/misaligned_iv) rq0=$(cat $P/misaligned_req)
	check "align-fio-$ss" fio_verify /dev/mapper/al "$(bssplit "$ss")" 1 41
	r=$(($(cat $P/requests) - r0))
	iv=$(($(cat $P/misaligned_iv) - iv0))
	rq=$(($(cat $P/misaligned_req) - rq0))
	info "align $ss: $r requests, $iv with a misaligned IV, $rq misaligned"
	check "align-driver-used-$ss" test "$r" -gt 0
	check "align-iv-$ss" test "$iv" = 0
	check "align-request-$ss" test "$rq" = 0
	check "align-no-errors-$ss" test "$(status_field al errors)" = 0
	dm_remove al
	dm_create alc "0 $len crypt aes-xts-plain64 $KEYREF 0 /dev/vda $off $opts"
	check "align-dmcrypt-reads-data-$ss" fio_verify /dev/mapper/alc "$(bssplit "$ss")" 1 41 --verify_only
	dm_remove alc
done
check align-driver-unloads /sbin/rmmod dctest_align
