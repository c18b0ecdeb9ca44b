#!/usr/bin/env bash
# The attach suite: the agent, the CLI, SoftHSM2 and dm-diskcrypt.ko together
# in one QEMU guest (-cpu max, 2 CPUs). The test makes its token, key, PIN,
# configuration and access policy on the guest's tmpfs; disks vda and vdb are
# 64 MiB images.
#   lifecycle  format, attach, write, detach, attach, read; table and dm uuid;
#              ciphertext equal to dm-crypt's; stock cryptsetup recovery; idempotence
#   custody    /proc/key-users back to its count, no key in any keyring, the
#              DEK (hex, HEX, base64) in no table, log, audit line, CLI output,
#              argv or environment
#   errors     every refusal a user can hit, with its exit code and message
#   restart    the agent killed: mappings serve I/O; a new agent lists and detaches
#   parallel   two disks attached at once; one disk attached twice at once
#   hostile-peer    1000 mappings listed as one table and one JSON document
#   hostile-header  bytes that are not text in a header, a holder named \377,
#              discards never from the header, a FIFO device, an empty leftover
#              mapping, one odd header in 'list'
#   access     the access policy: a service account without a binding refused
#              (exit 18) before the KMS is asked, nothing mapped; a grant and a
#              revocation (file replaced) take effect without a restart; a
#              broken policy is refused and the last good one stays; SIGHUP
#              reloads; a header under another key or disk type refused (11);
#              format refused for a user without the role, device untouched
#   profiles   each disk type's table options in `dmsetup table` (sector size,
#              zero_unwritten, discards on request), unwritten blocks read as
#              zeros; a host override of a type's profile in the next attach
#   copy       snapshot, image and disk copies read the same data through
#              their own mappings; a snapshot never attaches; an attached
#              source refused; a copy whose client is killed refuses to
#              attach (19) until run again; rewrap of an attached disk; a
#              snapshot under a key the user may not use and a user without
#              kms.viewer refused (18), the target untouched
#   import     an unencrypted image through the kernel target reads back the
#              same, zero runs zeroed instead of encrypted; too large or odd
#              images refused untouched; a killed import refuses to attach
#              until run again; decrypt refused (21)
#   recovery   stock cryptsetup through the token plugin: refused while the
#              host disables recovery (the default) and audited; enabled, it
#              opens the disk with dm-crypt and reads diskcrypt's data; a
#              service account without the role refused; luksDump without
#              the wrapped secret; the agent stopped: a clear message
#
# Usage: tests/attach/run.sh [TEST,...]
# Environment: DISKCRYPT_BUILD (default <repo>/build), KMOD (default
# <repo>/kmod/dm-diskcrypt.ko), DISKCRYPT_VM_VERBOSE=1 streams the console.
# Exit status: 0 all passed, 1 a check failed, 2 the harness failed.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD=${DISKCRYPT_BUILD:-$ROOT/build}
KMOD=${KMOD:-$ROOT/kmod/dm-diskcrypt.ko}
TESTS=${1:-lifecycle,custody,errors,restart,parallel,hostile-peer,hostile-header,access,profiles,copy,import,recovery}
W=$BUILD/vm/attach
SOFTHSM=/usr/lib/softhsm/libsofthsm2.so

for f in "$KMOD" "$BUILD/cmake/diskcrypt-agent" "$BUILD/cmake/diskcrypt" \
	"$BUILD/cmake/tests/diskcrypt-test-unwrap" "$BUILD/cmake/libcryptsetup-token-diskcrypt-kms.so" "$SOFTHSM"; do
	[ -e "$f" ] || { echo "attach/run.sh: $f is missing; run 'make all' first" >&2; exit 2; }
done

kver=$("$ROOT/tests/vm/kernel.sh")
mkdir -p "$W"
"$ROOT/tests/vm/initramfs-agent.sh" --kver "$kver" --out "$W/initramfs.cpio" \
	--tests "$ROOT/tests/attach" --kmod ext4
rm -f "$W"/vd?.img
truncate -s 64M "$W/vda.img" "$W/vdb.img"
rc=0
"$ROOT/tests/vm/run.sh" --kver "$kver" --initramfs "$W/initramfs.cpio" \
	--disk "$W/vda.img" --disk "$W/vdb.img" --cpu max --smp 2 \
	--run "$TESTS" --timeout 600 --out "$W/run" --label attach || rc=$?
rm -f "$W"/vd?.img
exit "$rc"
