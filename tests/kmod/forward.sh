#!/bin/sh
# Forward progress under memory pressure with asynchronous crypto: an
# xts(aes) behind cryptd (every request completes in cryptd's worker), a
# memory hog that leaves about 95 MB available, and six buffered random
# writers (64 KiB, queue depth 32) with verification. The hung task detector
# is armed (20 s, panic; 120 s on the debug kernel), so a writer stuck in
# writeback ends the run as a kernel panic; fio runs under a time limit.
# dm-crypt runs the same load first, as the control.
. /tests/kmod/common.sh
kmod_setup || { fail forward-setup "cannot load dm-diskcrypt or add the key"; exit 1; }

off=$((64 * MiB)) len=$((96 * MiB))
# The debug guest (KASAN: every access checked) gives writeback and fio
# longer and writes less: DCTEST_HUNG_TASK_SECS, DCTEST_FORWARD_LIMIT and
# DCTEST_FORWARD_MIB on its command line.
LIMIT=${DCTEST_FORWARD_LIMIT:-300}	# seconds per fio run
HUNG=${DCTEST_HUNG_TASK_SECS:-20}
MIB=${DCTEST_FORWARD_MIB:-16}

arm_hung_task_detector() {
	echo "$HUNG" >/proc/sys/kernel/hung_task_timeout_secs &&
		echo 1 >/proc/sys/kernel/hung_task_panic &&
		test "$(cat /proc/sys/kernel/hung_task_panic)" = 1
}
check forward-hung-task-detector arm_hung_task_detector
# Let dirty pages fill memory, so that reclaim has to wait for writeback.
echo 60 >/proc/sys/vm/dirty_ratio
echo 30 >/proc/sys/vm/dirty_background_ratio

# forward_fio DEV SEED: six writers, each into its own MIB MiB, buffered,
# then verified.
forward_fio() {
	timeout "$LIMIT" fio --name=forward --filename="$1" --ioengine=libaio \
		--iodepth=32 --direct=0 --rw=randwrite --bs=64k --size="${MIB}M" \
		--offset_increment="${MIB}M" --numjobs=6 --verify=crc32c \
		--verify_fatal=1 --do_verify=1 --randseed="$2" --end_fsync=1 \
		--group_reporting --output=/tmp/forward.out ||
		{ cat /tmp/forward.out; return 1; }
}

avail_mib() {
	awk '/^MemAvailable:/ { print int($2 / 1024) }' /proc/meminfo
}

# Pin memory in tmpfs (no swap: it cannot be reclaimed) until about 95 MB
# remain available.
avail=$(avail_mib)
hog=$((avail - 95))
mkdir -p /hog
mount -t tmpfs -o size=${hog}m tmpfs /hog
dd if=/dev/zero of=/hog/fill bs=1M count="$hog" 2>/dev/null
info "forward: pinned $hog MiB of $avail MiB available; now $(avail_mib) MiB available"
dmesg_mark

# The control shows that the load itself is survivable; the debug guest skips
# it (DCTEST_CONTROL=0, common.sh).
if [ "$CONTROL" = 1 ]; then
	dm_create fwc "0 $len crypt $ASYNC $KEYREF 0 /dev/vdb $off"
	t0=$(now_ms)
	check forward-dmcrypt-writers forward_fio /dev/mapper/fwc 51
	info "forward: dm-crypt took $((($(now_ms) - t0) / 1000)) s"
	dm_remove fwc
fi

dm_create fw "0 $len diskcrypt $ASYNC $KEYREF 0 /dev/vda $off"
t0=$(now_ms)
check forward-writers forward_fio /dev/mapper/fw 52
info "forward: diskcrypt took $((($(now_ms) - t0) / 1000)) s; $(dmsetup status fw | cut -d' ' -f4-)"
check forward-went-async test "$(status_field fw async)" -gt 0
check forward-no-errors test "$(status_field fw errors)" = 0
dm_remove fw

umount /hog
no_oom() {
	! dmesg_since_mark | grep -E 'invoked oom-killer|Out of memory|blocked for more than|page allocation failure'
}
check forward-no-oom-no-hang no_oom
