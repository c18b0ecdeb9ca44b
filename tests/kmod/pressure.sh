#!/bin/sh
# Memory pressure: with nearly all guest memory pinned in tmpfs, and writers
# confined to a 16 MiB memory cgroup, I/O through diskcrypt keeps completing
# and verifying, with no allocation failure or warning in the kernel log.
. /tests/kmod/common.sh
kmod_setup || { fail pressure-setup "cannot load dm-diskcrypt or add the key"; exit 1; }

off=$((256 * MiB))
dm_create pr "0 $((24 * MiB)) diskcrypt aes-xts-plain64 $KEYREF 0 /dev/vda $off"
dm_create prs "0 $((8 * MiB)) diskcrypt aes-xts-plain64 $KEYREF 0 /dev/vda $((off + 24 * MiB))"
dd if=/dev/urandom of=/tmp/src bs=1M count=8 2>/dev/null
dmesg_mark

# Pin all of the available memory but what the test programs need (fio's
# buffers, bioshapes' model: ~150 MiB) and some room for the page cache;
# tmpfs without swap cannot be reclaimed.
avail=$(awk '/^MemAvailable:/ { print int($2 / 1024) }' /proc/meminfo)
hog=$((avail - 256))
mkdir -p /hog
mount -t tmpfs -o size=${hog}m tmpfs /hog
dd if=/dev/zero of=/hog/fill bs=1M count="$hog" 2>/dev/null
info "pressure: pinned $hog MiB of $avail MiB available; now $(awk '/^MemAvailable:/ { print int($2 / 1024) }' /proc/meminfo) MiB available"

/usr/local/bin/bioshapes /dev/mapper/prs 512 8 "$(shapes_iterations 300)" 77 >/tmp/shapes.out 2>&1 &
shapes=$!
check pressure-fio-direct fio_verify /dev/mapper/pr "$(bssplit 512)" 1 41
check pressure-fio-buffered fio_verify /dev/mapper/pr "$(bssplit 512)" 0 42
wait "$shapes"
rc=$?
cat /tmp/shapes.out
check pressure-shapes test "$rc" = 0

# Buffered writeback from inside a small memory cgroup.
if mount -t cgroup2 none /sys/fs/cgroup 2>/dev/null || grep -q cgroup2 /proc/mounts; then
	echo +memory >/sys/fs/cgroup/cgroup.subtree_control
	mkdir -p /sys/fs/cgroup/small
	echo 16M >/sys/fs/cgroup/small/memory.max
	sh -c 'echo $$ >/sys/fs/cgroup/small/cgroup.procs;
		dd if=/tmp/src of=/dev/mapper/prs bs=1M conv=fsync 2>/dev/null'
	check pressure-cgroup-writeback test $? = 0
	drop_caches
	read_dev /dev/mapper/prs /tmp/r 8
	check pressure-cgroup-data cmp -s /tmp/r /tmp/src
else
	fail pressure-cgroup "cannot mount cgroup2"
fi

umount /hog
no_alloc_failure() {
	! dmesg_since_mark | grep -E 'page allocation failure|WARNING:|BUG:'
}
check pressure-no-allocation-failure no_alloc_failure
check pressure-no-errors test "$(status_field pr errors)" = 0
dm_remove pr prs
