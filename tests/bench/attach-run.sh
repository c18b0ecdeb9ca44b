#!/usr/bin/env bash
# make bench-attach: attach latency in one QEMU guest (tests/bench/attach.sh):
# p50/p99 of BENCH_CYCLES (default 50) attach+detach cycles through the agent
# and the CLI, next to stock cryptsetup open/close of the same volume through
# a keyslot with the same PBKDF. A benchmark: it prints a table and fails only
# if a cycle fails.
# Environment: DISKCRYPT_BUILD, KMOD, BENCH_CYCLES, BENCH_CPU (max or qemu64).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD=${DISKCRYPT_BUILD:-$ROOT/build}
W=$BUILD/vm/bench-attach
cycles=${BENCH_CYCLES:-50}

kver=$("$ROOT/tests/vm/kernel.sh")
mkdir -p "$W"
"$ROOT/tests/vm/initramfs-agent.sh" --kver "$kver" --out "$W/initramfs.cpio" \
	--tests "$ROOT/tests/attach" --tests "$ROOT/tests/bench"
rm -f "$W"/vd?.img
truncate -s 64M "$W/vda.img" "$W/vdb.img"
echo "bench-attach: $cycles cycles of diskcrypt attach/detach and of cryptsetup open/close" >&2
rc=0
"$ROOT/tests/vm/run.sh" --kver "$kver" --initramfs "$W/initramfs.cpio" \
	--disk "$W/vda.img" --disk "$W/vdb.img" --cpu "${BENCH_CPU:-max}" --smp 2 \
	--append "BENCH_CYCLES=$cycles" --run bench/attach --timeout $((cycles * 10 + 120)) \
	--out "$W/run" --label bench-attach | sed -n 's/^INFO //p; /^FAIL /p' || rc=$?
rm -f "$W"/vd?.img
exit "$rc"
