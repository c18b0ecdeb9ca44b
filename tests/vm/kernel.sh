#!/usr/bin/env bash
# Prepare the guest kernel for the QEMU tests, without installing it.
#
# Usage: tests/vm/kernel.sh [CACHE_DIR]
#   CACHE_DIR defaults to $DISKCRYPT_BUILD/vm/kernel, and DISKCRYPT_BUILD to <repo>/build.
#
# The kernel release (KVER) is the one the installed linux-headers-amd64 metapackage
# depends on, so modules built against /lib/modules/$KVER/build match the guest.
# Produces, once (later runs only print KVER):
#   CACHE_DIR/KVER/vmlinux              ELF kernel for QEMU's PVH boot (the bzImage if
#                                       extraction failed; QEMU boots both)
#   CACHE_DIR/KVER/vmlinuz              the bzImage from the package
#   CACHE_DIR/KVER/config               the kernel's .config
#   CACHE_DIR/KVER/lib/modules/KVER/    the module tree, with depmod's index files
# Prints only KVER on stdout, so callers can do: KVER=$(tests/vm/kernel.sh)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD=${DISKCRYPT_BUILD:-$ROOT/build}
CACHE=${1:-$BUILD/vm/kernel}

# shellcheck source=kernel-lib.sh
. "$ROOT/tests/vm/kernel-lib.sh"
guest_kernel_versions

DEST=$CACHE/$KVER
ready() { [[ -f "$DEST/vmlinux" && -f "$DEST/lib/modules/$KVER/modules.dep" ]]; }
if ready; then
	echo "$KVER"
	exit 0
fi

# One preparer at a time (parallel test jobs); the others wait, then find it done.
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9
if ready; then
	echo "$KVER"
	exit 0
fi

# Read a little-endian integer of SIZE bytes at byte OFFSET of FILE.
le_int() { od -An -tu"$3" --endian=little -j "$2" -N "$3" "$1" | tr -d ' '; }

# Print LEN bytes of FILE from byte OFFSET.
payload() { dd if="$1" iflag=skip_bytes,count_bytes skip="$2" count="$3" bs=1M status=none; }

# Decompress the kernel payload of bzImage $1 into $2. The boot protocol header gives
# where it is (payload_offset at 0x248, relative to the protected-mode code that
# follows the (setup_sects + 1) 512-byte setup sectors); its magic tells the format.
# Debian's 6.1 kernels are xz-compressed; gzip and zstd are handled for other builds.
extract_vmlinux() {
	local bz=$1 out=$2 setup_sects off len magic
	setup_sects=$(le_int "$bz" $((0x1f1)) 1)
	((setup_sects == 0)) && setup_sects=4
	off=$(((setup_sects + 1) * 512 + $(le_int "$bz" $((0x248)) 4)))
	len=$(le_int "$bz" $((0x24c)) 4)
	magic=$(od -An -tx1 -j "$off" -N 6 "$bz" | tr -d ' ')
	# The build appends the uncompressed size (4 bytes) to xz and zstd payloads.
	case "$magic" in
	fd377a585a00) payload "$bz" "$off" "$len" | xz -dc --single-stream ;;
	1f8b*) payload "$bz" "$off" "$len" | gzip -dc ;;
	28b52ffd*) payload "$bz" "$off" $((len - 4)) | zstd -dcq ;;
	*)
		log "unknown payload magic '$magic' at offset $off"
		return 1
		;;
	esac >"$out" || return 1
	[[ "$(head -c 4 "$out")" == $'\x7fELF' ]]
}

WORK=$(mktemp -d "$CACHE/.$KVER.XXXXXX")
DL=$(mktemp -d)
trap 'rm -rf "$WORK" "$DL"' EXIT

# apt-get download fetches as user _apt when run as root; let it write the directory,
# otherwise apt warns and falls back to downloading as root.
if ((EUID == 0)) && id _apt >/dev/null 2>&1; then
	chown _apt "$DL"
fi
pkg=linux-image-$KVER${PKGVER:+=$PKGVER}
log "downloading $pkg"
(cd "$DL" && apt-get download -qq "$pkg") >&2 ||
	die "apt-get download $pkg failed (stale package lists? try apt-get update)"

log "unpacking"
dpkg-deb -x "$DL"/linux-image-*.deb "$WORK/deb"
mkdir -p "$WORK/out/lib/modules"
mv "$WORK/deb/lib/modules/$KVER" "$WORK/out/lib/modules/"
mv "$WORK/deb/boot/vmlinuz-$KVER" "$WORK/out/vmlinuz"
mv "$WORK/deb/boot/config-$KVER" "$WORK/out/config"
depmod -b "$WORK/out" "$KVER"

if extract_vmlinux "$WORK/out/vmlinuz" "$WORK/out/vmlinux"; then
	log "extracted ELF vmlinux for PVH boot"
else
	log "could not extract an ELF vmlinux; falling back to the bzImage (boots ~3 s slower)"
	cp "$WORK/out/vmlinuz" "$WORK/out/vmlinux"
fi

rm -rf "$DEST"
mv "$WORK/out" "$DEST"
log "kernel $KVER ready in $DEST"
echo "$KVER"
