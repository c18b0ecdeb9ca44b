#!/bin/sh
# Swap on diskcrypt under memory pressure: with all but ~96 MiB of the
# guest's memory pinned in ramfs (which cannot be swapped), a hog confined to
# a 32 MiB memory cgroup writes 112 MiB of random data into tmpfs, so that
# most of it must go out to a 96 MiB swap device on diskcrypt and come back
# in when the hog reads it. The data reads back with the checksum it was
# written with, within a time limit, with the hung-task detector armed
# (a hang panics the guest), and with no OOM kill and no kernel warning.
# Meanwhile dm core's swap_bios limit holds: the target sets limit_swap_bios
# (as dm-crypt does: every swap write in flight holds bounce pages, so
# without a limit swapping out could itself take the memory it frees).
. /tests/kmod/common.sh
kmod_setup || { fail swap-setup "cannot load dm-diskcrypt or add the key"; exit 1; }

SWAP_MIB=96
HOG_MIB=112
CG_MIB=32
LEAVE_MIB=96
LIMIT=600	# seconds
dm_create sw "0 $((SWAP_MIB * MiB)) diskcrypt aes-xts-plain64 $KEYREF 0 /dev/vdb $((224 * MiB))" ||
	{ fail swap-create "cannot create the mapping"; exit 1; }
check swap-mkswap mkswap /dev/mapper/sw >/dev/null
check swap-on swapon /dev/mapper/sw || { dm_remove sw; exit 1; }

# At most SWAP_BIOS swap writes in the target at once (dm_mod's swap_bios,
# read on every swap bio; swap reads carry no REQ_SWAP and are not limited).
# The mapping's count of writes in flight may show up to one more per CPU:
# dm core gives a bio's slot back just before it stops counting the bio.
SWAP_BIOS=2
swap_bios=/sys/module/dm_mod/parameters/swap_bios
swap_bios0=$(cat $swap_bios)
echo $SWAP_BIOS >$swap_bios
# inflight_max FILE OUT: the most writes in flight in FILE
# (/sys/block/dm-N/inflight), written to OUT, until /tmp/sampler.stop exists.
inflight_max() {
	_max=0
	echo 0 >"$2"
	while [ ! -e /tmp/sampler.stop ]; do
		read -r _r _w <"$1"
		if [ "$_w" -gt "$_max" ]; then
			_max=$_w
			echo "$_max" >"$2"
		fi
	done
}

vm_counter() { awk -v k="$1" '$1 == k { print $2 }' /proc/vmstat; }
avail_mib() { awk '/^MemAvailable:/ { print int($2 / 1024) }' /proc/meminfo; }

# A hang becomes a panic (the harness reports it) instead of a timeout.
hung_secs=$(cat /proc/sys/kernel/hung_task_timeout_secs)
hung_panic=$(cat /proc/sys/kernel/hung_task_panic)
echo 60 >/proc/sys/kernel/hung_task_timeout_secs
echo 1 >/proc/sys/kernel/hung_task_panic
dmesg_mark

drop_caches
pin=$(($(avail_mib) - LEAVE_MIB))
mkdir -p /pin /hog
mount -t ramfs ramfs /pin
mount -t tmpfs -o size=$((HOG_MIB + 16))m tmpfs /hog
dd if=/dev/zero of=/pin/fill bs=1M count="$pin" 2>/dev/null
out0=$(vm_counter pswpout) in0=$(vm_counter pswpin)
info "swap: pinned $pin MiB in ramfs, $(avail_mib) MiB available, writing $HOG_MIB MiB"

# The hog: random data into tmpfs, its checksum taken on the way in, then
# read back (from swap, for what was swapped out) and checked again. Its
# cgroup holds at most CG_MIB of it in memory: the rest must be swapped.
grep -q cgroup2 /proc/mounts || mount -t cgroup2 none /sys/fs/cgroup ||
	{ fail swap-cgroup "cannot mount cgroup2"; exit 1; }
echo +memory >/sys/fs/cgroup/cgroup.subtree_control
mkdir -p /sys/fs/cgroup/swaphog
echo "${CG_MIB}M" >/sys/fs/cgroup/swaphog/memory.max
cat >/tmp/hog.sh <<'EOF'
echo $$ >/sys/fs/cgroup/swaphog/cgroup.procs || exit 2
dd if=/dev/urandom bs=1M count="$1" 2>/dev/null | tee /hog/data | md5sum >/tmp/sum.in &&
	md5sum </hog/data >/tmp/sum.out
EOF
rm -f /tmp/sampler.stop
inflight_max "/sys/block/$(dev_name sw)/inflight" /tmp/inflight.max &
sampler=$!
t0=$(now_ms)
check swap-hog-in-time timeout "$LIMIT" sh /tmp/hog.sh "$HOG_MIB"
t1=$(now_ms)
touch /tmp/sampler.stop
wait "$sampler"
inflight=$(cat /tmp/inflight.max)
info "swap: at most $inflight swap writes in flight (swap_bios=$SWAP_BIOS)"
check swap-bios-seen test "$inflight" -ge 1
check swap-bios-limited test "$inflight" -le $((SWAP_BIOS + $(nproc)))
echo "$swap_bios0" >$swap_bios
swapped_out=$((($(vm_counter pswpout) - out0) * 4 / 1024))
swapped_in=$((($(vm_counter pswpin) - in0) * 4 / 1024))
info "swap: $((t1 - t0)) ms, $swapped_out MiB swapped out, $swapped_in MiB swapped in, $(status_field sw writes) writes through diskcrypt"
check swap-data-verified cmp -s /tmp/sum.in /tmp/sum.out
check swap-used test "$swapped_out" -ge $((HOG_MIB - CG_MIB - 16))
check swap-read-back test "$swapped_in" -ge $((HOG_MIB - CG_MIB - 16))
no_oom() {
	! dmesg_since_mark | grep -E 'invoked oom-killer|Out of memory|page allocation failure|(^|\] )(BUG|WARNING:|INFO: task)'
}
check swap-no-oom-or-warning no_oom

rm -f /hog/data /pin/fill
umount /hog
rmdir /sys/fs/cgroup/swaphog
umount /pin
check swap-off swapoff /dev/mapper/sw
check swap-no-errors test "$(status_field sw errors)" = 0
echo "$hung_secs" >/proc/sys/kernel/hung_task_timeout_secs
echo "$hung_panic" >/proc/sys/kernel/hung_task_panic
dm_remove sw
