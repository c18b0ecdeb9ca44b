#!/bin/sh
# The asynchronous crypto path, for real: an xts(aes) behind cryptd (every
# request completes in cryptd's worker; with the guest's small cryptd queue,
# requests are also backlogged). Known answers against dm-crypt, fio with
# verification, shaped I/O, and the read_workqueue/write_workqueue options.
. /tests/kmod/common.sh
kmod_setup || { fail async-setup "cannot load dm-diskcrypt or add the key"; exit 1; }

for c in "512 0 0 128" "4096 2048 1 130"; do
	# shellcheck disable=SC2086
	set -- $c
	ss=$1 iv=$2 large=$3 slot=$4
	off=$((slot * MiB)) opts=$(feature_args "$ss" "$large")
	dm_create as-dc "0 $MiB diskcrypt $ASYNC $KEYREF $iv /dev/vda $off $opts" &&
		dm_create as-crypt "0 $MiB crypt aes-xts-plain64 $KEYREF $iv /dev/vdb $off $opts" ||
		{ fail "async-kat-create-$ss" "cannot create mappings"; continue; }
	write_file "$DATA/pattern.bin" /dev/mapper/as-dc
	write_file "$DATA/pattern.bin" /dev/mapper/as-crypt
	raw_region /dev/vda "$slot" 1 /tmp/dc.raw
	raw_region /dev/vdb "$slot" 1 /tmp/crypt.raw
	check "async-kat-dmcrypt-$ss" cmp -s /tmp/dc.raw /tmp/crypt.raw
	read_dev /dev/mapper/as-dc /tmp/r
	check "async-kat-roundtrip-$ss" cmp -s /tmp/r "$DATA/pattern.bin"
	check "async-requests-went-async-$ss" test "$(status_field as-dc async)" -gt 0
	dm_remove as-dc as-crypt
done

for ss in $SECTOR_SIZES; do
	base=$(((ss == 512 ? 132 : 164) * MiB))
	opts=$(feature_args "$ss" 1)
	dm_create as "0 $((24 * MiB)) diskcrypt $ASYNC $KEYREF 0 /dev/vda $base $opts" &&
		dm_create ass "0 $((8 * MiB)) diskcrypt $ASYNC $KEYREF 0 /dev/vda $((base + 24 * MiB)) $opts" ||
		{ fail "async-create-$ss" "cannot create mappings"; continue; }
	/usr/local/bin/bioshapes /dev/mapper/ass "$ss" 8 "$(shapes_iterations 300)" "$((ss + 1))" >/tmp/shapes.out 2>&1 &
	shapes=$!
	check "async-fio-direct-$ss" fio_verify /dev/mapper/as "$(bssplit "$ss")" 1 21
	wait "$shapes"
	rc=$?
	cat /tmp/shapes.out
	check "async-shapes-$ss" test "$rc" = 0
	check "async-fio-buffered-$ss" fio_verify /dev/mapper/as "$(bssplit "$ss")" 0 22
	if [ "$CONTROL" = 1 ]; then
		drop_caches
		dm_create asc "0 $((24 * MiB)) crypt aes-xts-plain64 $KEYREF 0 /dev/vda $base $opts"
		check "async-dmcrypt-reads-fio-data-$ss" fio_verify /dev/mapper/asc "$(bssplit "$ss")" 1 22 --verify_only
		dm_remove asc
	fi
	info "async $ss: $(dmsetup status as | cut -d' ' -f4-)"
	check "async-backlog-exercised-$ss" test "$(status_field as backlogged)" -gt 0
	check "async-no-errors-$ss" test "$(status_field as errors)" = 0
	dm_remove as ass
done

# The workqueue options: same data, crypto moved off the submitting and
# completing contexts.
off=$((196 * MiB))
dm_create wq "0 $((24 * MiB)) diskcrypt aes-xts-plain64 $KEYREF 0 /dev/vda $off 2 read_workqueue write_workqueue"
check options-workqueue-table sh -c "dmsetup table wq | grep -q ' 2 read_workqueue write_workqueue$'"
check options-workqueue-fio fio_verify /dev/mapper/wq "$(bssplit 512)" 1 31
check options-workqueue-deferred test "$(status_field wq deferred)" -gt 0
dm_remove wq
dm_create wq "0 $((24 * MiB)) diskcrypt aes-xts-plain64 $KEYREF 0 /dev/vda $off 1 inline_depth:0"
check options-inline-depth-table sh -c "dmsetup table wq | grep -q ' 1 inline_depth:0$'"
check options-depth0-reads-same-data fio_verify /dev/mapper/wq "$(bssplit 512)" 1 31 --verify_only
check options-depth0-deferred test "$(status_field wq deferred)" -gt 0
dm_remove wq
dm_create wq "0 $((24 * MiB)) diskcrypt aes-xts-plain64 $KEYREF 0 /dev/vda $off 1 inline_depth:65536"
check options-inline-reads-same-data fio_verify /dev/mapper/wq "$(bssplit 512)" 1 31 --verify_only
dm_remove wq

# Bounded work: with every bio inline (inline_depth:65536), one bio gets at
# most 128 KiB of crypto in map() or in a completion, and the rest of a
# larger bio continues on the workqueue; the data are what dm-crypt reads.
# With two CPUs, multi-queue virtio completes reads in hard-IRQ context, so
# QD16 1 MiB reads also fill the tasklet past its per-run budget. The cipher
# is synchronous (SYNC, common.sh): every bio of an async cipher leaves the
# submitting context anyway.
dm_create bw "0 $((24 * MiB)) diskcrypt $SYNC $KEYREF 0 /dev/vda $off 1 inline_depth:65536"
dd if=/dev/mapper/bw of=/dev/null bs=128k count=64 iflag=direct 2>/dev/null
dd if=/dev/zero of=/dev/mapper/bw bs=128k count=64 oflag=direct 2>/dev/null
check bounded-128k-stays-inline test "$(status_field bw deferred)" = 0
check bounded-1m-write-verify fio_verify /dev/mapper/bw 1m 1 32
check bounded-1m-crypto-deferred test "$(status_field bw deferred)" -gt 0
d=$(status_field bw deferred)
dd if=/dev/mapper/bw of=/dev/null bs=1M count=8 iflag=direct 2>/dev/null
check bounded-1m-read-deferred test "$(status_field bw deferred)" -gt "$d"
check bounded-no-errors test "$(status_field bw errors)" = 0
check bounded-cipher-synchronous test "$(status_field bw async)" = 0
dm_remove bw
if [ "$CONTROL" = 1 ]; then
	dm_create bwc "0 $((24 * MiB)) crypt aes-xts-plain64 $KEYREF 0 /dev/vda $off"
	check bounded-1m-dmcrypt-reads-data fio_verify /dev/mapper/bwc 1m 1 32 --verify_only
	dm_remove bwc
fi
