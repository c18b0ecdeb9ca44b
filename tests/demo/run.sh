#!/usr/bin/env bash
# make demo: boots Debian's kernel in QEMU with dm-diskcrypt.ko, the agent, the
# CLI and SoftHSM2 as the embedded default KMS, and runs the narrated guest
# demo (tests/demo/demo.sh): an HSM key, an access policy, a disk formatted,
# its attach refused until the customer grants its service account decrypt on
# the key, then attached, written, detached, attached again and read back,
# status, a header of another disk refused, the audit trail.
# Exits non-zero if any step fails.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD=${DISKCRYPT_BUILD:-$ROOT/build}
KMOD=${KMOD:-$ROOT/kmod/dm-diskcrypt.ko}
W=$BUILD/vm/demo

for f in "$KMOD" "$BUILD/cmake/diskcrypt-agent" "$BUILD/cmake/diskcrypt"; do
	[ -e "$f" ] || { echo "demo: $f is missing; run 'make all' first" >&2; exit 2; }
done
echo "demo: preparing the guest kernel and initramfs" >&2
kver=$("$ROOT/tests/vm/kernel.sh")
mkdir -p "$W"
"$ROOT/tests/vm/initramfs-agent.sh" --kver "$kver" --out "$W/initramfs.cpio" \
	--tests "$ROOT/tests/attach" --tests "$ROOT/tests/demo" 2>/dev/null
rm -f "$W"/vd?.img
truncate -s 64M "$W/vda.img" "$W/vdb.img"
echo "demo: booting the guest (QEMU, software emulation)" >&2
rc=0
"$ROOT/tests/vm/run.sh" --kver "$kver" --initramfs "$W/initramfs.cpio" \
	--disk "$W/vda.img" --disk "$W/vdb.img" --smp 2 \
	--run demo/demo --timeout 300 --out "$W/run" --label demo | sed -n 's/^INFO //p; /^FAIL /p; /passed,/p' || rc=$?
rm -f "$W"/vd?.img
exit "$rc"
