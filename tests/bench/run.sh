#!/usr/bin/env bash
# make bench: fio workloads raw, through dm-crypt and through diskcrypt, printed
# side by side. A benchmark, not a test: it asserts nothing about speed.
# Two modes, each one guest (BENCH_MODE picks: both (default), icount, wallclock):
#   icount     QEMU with -icount shift=0,sleep=off,align=off (guest time counts
#              instructions, 1 ns each), one vCPU, a brd ram disk: raw, dm-crypt
#              defaults, dm-crypt no_read_workqueue no_write_workqueue, dm-crypt
#              cipher_null-ecb (the cipher's share) and diskcrypt, one fio run of
#              BENCH_ICOUNT_MS (300) ms of guest time each. IOPS = 1e9 /
#              instructions per I/O; with nothing random (below), the same
#              figures on every boot. BENCH_DEVICE=nullb: a memory-backed
#              null_blk that completes in hard-IRQ context instead of brd
#              (which completes in the submitter).
#   wallclock  plain TCG, the virtio disk (image in host RAM), five configurations
#              (the above without cipher_null, plus diskcrypt inline_depth:65536),
#              medians of BENCH_ROUNDS rounds (default 5, each starting one
#              configuration later) of BENCH_RUNTIME seconds, with a bootstrap
#              95% interval of diskcrypt / the better dm-crypt.
# Environment: BENCH_MODE, BENCH_ROUNDS, BENCH_RUNTIME, BENCH_ICOUNT_MS, BENCH_DEVICE,
# BENCH_CONFIGS (the guest's configuration list for both modes), BENCH_WORKLOADS
# (only these workloads, e.g. randwrite-4k-qd32), BENCH_CPU (max
# or qemu64), BENCH_SMP (wall-clock guest CPUs, default 2), DISKCRYPT_BUILD, KMOD.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD=${DISKCRYPT_BUILD:-$ROOT/build}
KMOD=${KMOD:-$ROOT/kmod/dm-diskcrypt.ko}
W=$BUILD/vm/bench
# A fixed date on a guest-time RTC: nothing from the host's clock enters the guest.
ICOUNT_ARGS=(-icount "shift=0,sleep=off,align=off" -rtc "base=2026-01-01T00:00:00,clock=vm")

mode=${BENCH_MODE:-both}
case $mode in
both | icount | wallclock) ;;
*)
	echo "bench: BENCH_MODE=$mode: want both, icount or wallclock" >&2
	exit 2
	;;
esac
[ -e "$KMOD" ] || { echo "bench: $KMOD is missing; run 'make all' first" >&2; exit 2; }
kver=$("$ROOT/tests/vm/kernel.sh")
mkdir -p "$W"
head -c 64 /dev/urandom >"$W/key.bin"
"$ROOT/tests/vm/mkinitramfs.sh" --kver "$kver" --out "$W/initramfs.cpio" \
	--module "$KMOD" --tests "$ROOT/tests/kmod" --tests "$ROOT/tests/bench" \
	--file "$W/key.bin:/data/key.bin"
rm -f "$W/key.bin"
img=""
trap 'rm -f "$img"' EXIT
cpu=${BENCH_CPU:-max}
# BENCH_CONFIGS reaches the guest as one kernel argument, commas for spaces.
configs=()
[ -n "${BENCH_CONFIGS:-}" ] && configs=("BENCH_CONFIGS=${BENCH_CONFIGS// /,}")
[ -n "${BENCH_DEVICE:-}" ] && configs+=("BENCH_DEVICE=$BENCH_DEVICE")
[ -n "${BENCH_WORKLOADS:-}" ] && configs+=("BENCH_WORKLOADS=${BENCH_WORKLOADS// /,}")
rc=0
times=()

# The QEMU arguments of the icount mode, through run.sh's --qemu-arg.
icount_run() {
	local arg extra=()
	for arg in "${ICOUNT_ARGS[@]}"; do
		extra+=(--qemu-arg "$arg")
	done
	"$ROOT/tests/vm/run.sh" "${extra[@]}" "$@"
}

if [ "$mode" != wallclock ]; then
	ms=${BENCH_ICOUNT_MS:-300}
	echo "bench: instruction counting, 6 workloads x 6 configs x ${ms} ms of guest time" >&2
	start=$SECONDS
	r=0
	# Randomness changes instruction counts: where fio's buffers land (whether
	# huge pages back them: raw 1 MiB rows moved 8-16% with address space
	# randomization), the kernel's hashes and free lists. norandmaps keeps the
	# layout fixed; without RDRAND and RDSEED and with a fixed date the guest's
	# randomness comes from its own counted timing.
	icount_run --kver "$kver" --initramfs "$W/initramfs.cpio" \
		--cpu "$cpu,-rdrand,-rdseed" --smp 1 --mem 1024 \
		--append "norandmaps BENCH_MODE=icount BENCH_ICOUNT_MS=$ms ${configs[*]}" \
		--run bench/fio --timeout 3600 --out "$W/icount" --label bench-icount >/dev/null || r=$?
	python3 "$ROOT/tests/bench/report.py" --icount "$W/icount/results.txt" || r=$((r ? r : 1))
	times+=("icount $((SECONDS - start)) s")
	((r > rc)) && rc=$r
	echo
fi

if [ "$mode" != icount ]; then
	# The backing image lives in RAM (/dev/shm) when it can: host writeback of a
	# disk-backed image stalls the emulated device at random and widens every
	# spread. All configurations share it, so the comparison is unchanged.
	img=$W/disk.img
	[ -d /dev/shm ] && [ -w /dev/shm ] && img=$(mktemp /dev/shm/diskcrypt-bench.XXXXXX)
	rm -f "$img"
	truncate -s 256M "$img"
	rounds=${BENCH_ROUNDS:-5} runtime=${BENCH_RUNTIME:-3}
	echo "bench: wall clock, $rounds rounds x 6 workloads x 5 configs x ${runtime}s; this takes a while" >&2
	start=$SECONDS
	r=0
	"$ROOT/tests/vm/run.sh" --kver "$kver" --initramfs "$W/initramfs.cpio" --disk "$img" \
		--cpu "$cpu" --smp "${BENCH_SMP:-2}" --mem 1024 \
		--append "BENCH_ROUNDS=$rounds BENCH_RUNTIME=$runtime ${configs[*]}" \
		--run bench/fio --timeout $((rounds * 30 * (runtime + 4) + 300)) --out "$W/run" \
		--label bench >/dev/null || r=$?
	python3 "$ROOT/tests/bench/report.py" "$W/run/results.txt" || r=$((r ? r : 1))
	times+=("wall clock $((SECONDS - start)) s")
	((r > rc)) && rc=$r
	rm -f "$img"
fi
summary=$(printf '%s; ' "${times[@]}")
echo "bench: host time per mode (the initramfs build aside): ${summary%; }"
exit "$rc"
