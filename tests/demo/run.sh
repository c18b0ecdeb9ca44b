#!/usr/bin/env bash
# make demo: boots Debian's kernel in QEMU with dm-diskcrypt.ko and runs the
# narrated guest demo (tests/demo/demo.sh). Exits non-zero if any step fails.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD=${DISKCRYPT_BUILD:-$ROOT/build}
KMOD=${KMOD:-$ROOT/kmod/dm-diskcrypt.ko}
W=$BUILD/vm/demo

[ -e "$KMOD" ] || { echo "demo: $KMOD is missing; run 'make all' first" >&2; exit 2; }
echo "demo: preparing the guest kernel and initramfs" >&2
kver=$("$ROOT/tests/vm/kernel.sh")
mkdir -p "$W"
head -c 64 /dev/urandom >"$W/key.bin"
"$ROOT/tests/vm/mkinitramfs.sh" --kver "$kver" --out "$W/initramfs.cpio" \
	--module "$KMOD" --tests "$ROOT/tests/kmod" --tests "$ROOT/tests/demo" \
	--file "$W/key.bin:/data/key.bin"
rm -f "$W/disk.img"
truncate -s 64M "$W/disk.img"
echo "demo: booting the guest (QEMU, software emulation)" >&2
rc=0
"$ROOT/tests/vm/run.sh" --kver "$kver" --initramfs "$W/initramfs.cpio" --disk "$W/disk.img" \
	--run demo/demo --timeout 300 --out "$W/run" --label demo | sed -n 's/^INFO //p; /^FAIL /p; /passed,/p' || rc=$?
rm -f "$W/disk.img" "$W/key.bin"
exit "$rc"
