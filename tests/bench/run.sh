#!/usr/bin/env bash
# make bench: one guest, one backing device, five configurations (raw,
# dm-crypt defaults, dm-crypt without workqueues, diskcrypt, diskcrypt with
# crypto always inline), fio workloads,
# medians of BENCH_ROUNDS rounds (default 5), printed side by side.
# A benchmark, not a test: it asserts nothing about speed.
# Environment: BENCH_ROUNDS, BENCH_RUNTIME (seconds per fio run), BENCH_CPU
# (max or qemu64), BENCH_SMP (guest CPUs, default 2).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD=${DISKCRYPT_BUILD:-$ROOT/build}
KMOD=${KMOD:-$ROOT/kmod/dm-diskcrypt.ko}
W=$BUILD/vm/bench

[ -e "$KMOD" ] || { echo "bench: $KMOD is missing; run 'make all' first" >&2; exit 2; }
kver=$("$ROOT/tests/vm/kernel.sh")
mkdir -p "$W"
head -c 64 /dev/urandom >"$W/key.bin"
"$ROOT/tests/vm/mkinitramfs.sh" --kver "$kver" --out "$W/initramfs.cpio" \
	--module "$KMOD" --tests "$ROOT/tests/kmod" --tests "$ROOT/tests/bench" \
	--file "$W/key.bin:/data/key.bin"
# The backing image lives in RAM (/dev/shm) when it can: host writeback of a
# disk-backed image stalls the emulated device at random and widens every
# spread. All configurations share it, so the comparison is unchanged.
img=$W/disk.img
[ -d /dev/shm ] && [ -w /dev/shm ] && img=$(mktemp /dev/shm/diskcrypt-bench.XXXXXX)
trap 'rm -f "$img"' EXIT
rm -f "$img"
truncate -s 256M "$img"
rounds=${BENCH_ROUNDS:-5} runtime=${BENCH_RUNTIME:-3}
echo "bench: $rounds rounds x 6 workloads x 5 configs x ${runtime}s; this takes a while" >&2
rc=0
"$ROOT/tests/vm/run.sh" --kver "$kver" --initramfs "$W/initramfs.cpio" --disk "$img" \
	--cpu "${BENCH_CPU:-max}" --smp "${BENCH_SMP:-2}" --mem 1024 \
	--append "BENCH_ROUNDS=$rounds BENCH_RUNTIME=$runtime" \
	--run bench/fio --timeout $((rounds * 30 * (runtime + 4) + 300)) --out "$W/run" --label bench >/dev/null || rc=$?
rm -f "$W/key.bin"
python3 "$ROOT/tests/bench/report.py" "$W/run/results.txt"
exit "$rc"
