#!/usr/bin/env bash
# An initramfs for guests that run the agent: tests/vm/mkinitramfs.sh with
# dm-diskcrypt.ko, diskcrypt-agent, the diskcrypt CLI, the tests' unwrap tool,
# SoftHSM2 (softhsm2-util and the dlopen()ed module, whose libraries ldd
# finds through the binaries that link the same ones) and pkcs11-tool; no fio.
# Used by the attach suite, make demo and the attach benchmark.
#
# Usage: tests/vm/initramfs-agent.sh --out FILE [--kver KVER] [mkinitramfs.sh options...]
# Environment: DISKCRYPT_BUILD (default <repo>/build), KMOD (default <repo>/kmod/dm-diskcrypt.ko).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD=${DISKCRYPT_BUILD:-$ROOT/build}
KMOD=${KMOD:-$ROOT/kmod/dm-diskcrypt.ko}
SOFTHSM=/usr/lib/softhsm/libsofthsm2.so

# The module is dlopen()ed, so its libraries are not in any binary's ldd
# output unless a binary links them too: check that each one is covered.
needed=$(ldd "$SOFTHSM" | awk '$2 == "=>" && $3 ~ /^\// { print $3 }')
covered=$(ldd "$BUILD/cmake/diskcrypt-agent" "$(command -v softhsm2-util)" | awk '$2 == "=>" { print $3 }')
for lib in $needed; do
	grep -qxF "$lib" <<<"$covered" || { echo "initramfs-agent.sh: $SOFTHSM needs $lib, which no binary brings" >&2; exit 2; }
done

# Our binaries without their debug information (a third of the image's size otherwise).
bins=$BUILD/vm/agent-bin
mkdir -p "$bins"
for b in diskcrypt-agent diskcrypt tests/diskcrypt-test-unwrap; do
	strip -o "$bins/${b##*/}" "$BUILD/cmake/$b"
done
# The cryptsetup token plugin, where the guest's libcryptsetup looks for
# external tokens (its libraries are the agent's: libcryptsetup, libcrypto,
# libstdc++).
plugin=libcryptsetup-token-diskcrypt-kms.so
strip --strip-unneeded -o "$bins/$plugin" "$BUILD/cmake/$plugin"
real=$(readlink -f "$SOFTHSM")
exec "$ROOT/tests/vm/mkinitramfs.sh" --no-fio --module "$KMOD" \
	--bin "$bins/diskcrypt-agent" --bin "$bins/diskcrypt" --bin "$bins/diskcrypt-test-unwrap" \
	--bin "$(command -v softhsm2-util)" --bin "$(command -v pkcs11-tool)" \
	--file "$real:$SOFTHSM" --file "$real:$real" \
	--file "$bins/$plugin:/lib/x86_64-linux-gnu/cryptsetup/$plugin" "$@"
