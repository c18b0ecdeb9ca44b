#!/bin/sh
# The data path under every bio shape: fio with verification (blocks of one
# sector to 4 MiB, two jobs on the guest's CPUs, direct and buffered, io_uring
# with REQ_NOWAIT), random-shaped preadv/pwritev at unaligned addresses with
# a check that the caller's buffers are never modified, and dm-crypt reading
# what fio wrote.
. /tests/kmod/common.sh
kmod_setup || { fail datapath-setup "cannot load dm-diskcrypt or add the key"; exit 1; }

for ss in $SECTOR_SIZES; do
	base=$(((ss == 512 ? 64 : 96) * MiB))
	opts=$(feature_args "$ss" 1)
	tab="aes-xts-plain64 $KEYREF 0 /dev/vda"
	dm_create dp "0 $((24 * MiB)) diskcrypt $tab $base $opts" &&
		dm_create dps "0 $((8 * MiB)) diskcrypt $tab $((base + 24 * MiB)) $opts" ||
		{ fail "datapath-create-$ss" "cannot create mappings"; continue; }
	check "datapath-block-size-$ss" test "$(blockdev --getss /dev/mapper/dp)" = "$ss"

	# Mixed random reads and writes of every shape, concurrently with fio.
	/usr/local/bin/bioshapes /dev/mapper/dps "$ss" 8 "$(shapes_iterations 600)" "$ss" >/tmp/shapes.out 2>&1 &
	shapes=$!
	check "datapath-fio-direct-$ss" fio_verify /dev/mapper/dp "$(bssplit "$ss")" 1 11
	wait "$shapes"
	rc=$?
	cat /tmp/shapes.out
	check "datapath-shapes-$ss" test "$rc" = 0
	check "datapath-caller-pages-unchanged-$ss" test "$rc" != 3

	drop_caches
	check "datapath-fio-reread-$ss" fio_verify /dev/mapper/dp "$(bssplit "$ss")" 1 11 --verify_only
	if [ "$CONTROL" = 1 ]; then
		dm_create dpc "0 $((24 * MiB)) crypt $tab $base $opts"
		check "datapath-dmcrypt-reads-fio-data-$ss" fio_verify /dev/mapper/dpc "$(bssplit "$ss")" 1 11 --verify_only
		dm_remove dpc
	fi

	check "datapath-fio-buffered-$ss" fio_verify /dev/mapper/dp "$(bssplit "$ss")" 0 12
	drop_caches
	check "datapath-fio-buffered-reread-$ss" fio_verify /dev/mapper/dp "$(bssplit "$ss")" 1 12 --verify_only

	check "datapath-io_uring-$ss" fio_verify /dev/mapper/dp "$(bssplit "$ss")" 1 13 --ioengine=io_uring
	info "datapath $ss: $(dmsetup status dp | cut -d' ' -f4-)"
	check "datapath-no-errors-$ss" test "$(status_field dp errors)" = 0
	dm_remove dp dps
done
