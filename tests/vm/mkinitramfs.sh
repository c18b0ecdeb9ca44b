#!/usr/bin/env bash
# Build the initramfs (uncompressed newc cpio) that the QEMU test guest boots.
#
# Usage: tests/vm/mkinitramfs.sh [options]
#   --kver KVER         guest kernel release (default: what tests/vm/kernel.sh prints)
#   --kernel-dir DIR    kernel cache of tests/vm/kernel.sh (default $DISKCRYPT_BUILD/vm/kernel),
#                       or the folder tests/vm/debug-kernel.sh prints (with its --kver)
#   --out FILE          output cpio (default $DISKCRYPT_BUILD/vm/initramfs.cpio)
#   --module PATH.ko    out-of-tree module, installed to /lib/modules/KVER/extra/ (repeatable)
#   --kmod NAME         extra in-tree module to include with its dependencies (repeatable)
#   --no-kmod NAME      leave out one of the default in-tree modules below (repeatable):
#                       the debug kernel has no AF_ALG (no networking)
#   --bin PATH          extra host binary to include with its libraries (repeatable)
#   --tests DIR         test directory, copied to /tests/<basename>/ (repeatable)
#   --file SRC:DST      host file SRC copied to DST in the guest (repeatable)
#   --no-fio            leave fio out: its libraries (ceph, glusterfs, ICU) are 70 MB of
#                       the image's 88 MB and cost ~0.4 s per boot
# DISKCRYPT_BUILD defaults to <repo>/build.
#
# Guest layout: busybox applets in /bin (linked at boot by /init); kmod's modprobe & co. in /sbin; other real
# tools in /usr/sbin (with their libraries, loader and libgcc_s); /init and
# /lib/dctest/lib.sh from tests/vm/guest/. busybox sh runs its own applets before
# searching PATH, so /etc/dctest/real-tools lists the real tools that shadow an applet;
# lib.sh turns each into a shell function calling the real binary.
set -euo pipefail
umask 022

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD=${DISKCRYPT_BUILD:-$ROOT/build}
GUEST=$ROOT/tests/vm/guest
# shellcheck source=kernel-lib.sh
. "$ROOT/tests/vm/kernel-lib.sh"

# In-tree modules the guest loads at boot (dependencies are added automatically).
MODULES=(
	virtio_pci virtio_blk                        # the test disks
	dm-mod dm-crypt dm-flakey dm-delay dm-zero   # device-mapper
	xts ecb aesni-intel cryptd crypto_simd       # AES-XTS, with AES-NI under -cpu max
	brd loop null_blk configfs                   # scratch block devices
	af_alg algif_skcipher                        # user-space crypto API for known answers
)
# Real tools, all to /usr/sbin; most beat a busybox applet of the same name.
TOOLS=(dmsetup cryptsetup keyctl losetup blockdev blkdiscard blkid cmp)
KMOD_LINKS=(modprobe insmod rmmod lsmod depmod modinfo)

log() { echo "mkinitramfs.sh: $*" >&2; }
die() {
	log "error: $*"
	exit 1
}

kver="" kdir=$BUILD/vm/kernel out=$BUILD/vm/initramfs.cpio with_fio=1
oot_modules=() extra_bins=() test_dirs=() files=() no_kmods=" "
opts=$(getopt -n mkinitramfs.sh -o h \
	-l kver:,kernel-dir:,out:,module:,kmod:,no-kmod:,bin:,tests:,file:,no-fio,help -- "$@") || exit 2
eval set -- "$opts"
while true; do
	case "$1" in
	--kver) kver=$2 ;;
	--kernel-dir) kdir=$2 ;;
	--out) out=$2 ;;
	--module) oot_modules+=("$2") ;;
	--kmod) MODULES+=("$2") ;;
	--no-kmod) no_kmods+="$2 " ;;
	--bin) extra_bins+=("$2") ;;
	--tests) test_dirs+=("$2") ;;
	--file) files+=("$2") ;;
	--no-fio)
		with_fio=0
		shift
		continue
		;;
	-h | --help)
		awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
		exit 0
		;;
	--)
		shift
		break
		;;
	esac
	shift 2
done
(($# == 0)) || die "unexpected argument '$1'"
((with_fio)) && TOOLS+=(fio)
[[ -n "$kver" ]] || kver=$("$ROOT/tests/vm/kernel.sh" "$kdir")
ktree=$kdir/$kver
[[ -f "$ktree/lib/modules/$kver/modules.dep" ]] ||
	die "no module tree in $ktree (run tests/vm/kernel.sh)"

mkdir -p "$(dirname "$out")"
STAGE=$(mktemp -d "$(dirname "$out")/.initramfs.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT
declare -A copied=()

# Copy host file $1 to $2 inside the image (dereferencing symlinks), once.
put() {
	[[ -n "${copied[$2]:-}" ]] && return 0
	[[ -d "$STAGE${2%/*}" ]] || mkdir -p "$STAGE${2%/*}"
	cp -L --preserve=mode "$1" "$STAGE$2"
	copied[$2]=1
}

# Directories and minimal /etc.
mkdir -p "$STAGE"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,run,tmp,mnt,root,etc/dctest,tests}
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$STAGE/etc/passwd"
printf 'root:x:0:\n' >"$STAGE/etc/group"

# Dynamic binaries: kmod (its tools link to it from /sbin), real tools, extras.
bins=("$(command -v kmod)")
put "${bins[0]}" /usr/bin/kmod
for name in "${KMOD_LINKS[@]}"; do
	ln -s ../usr/bin/kmod "$STAGE/sbin/$name"
done
for name in "${TOOLS[@]}"; do
	path=$(command -v "$name") || die "$name not found on the host (run packaging/install-deps.sh)"
	bins+=("$path")
	put "$path" "/usr/sbin/$name"
done
for path in "${extra_bins[@]}"; do
	[[ -f "$path" && -x "$path" ]] || die "--bin $path: not an executable"
	bins+=("$path")
	put "$path" "/usr/bin/$(basename "$path")"
done

# Their libraries and the loader, at the host's paths, from one ldd run (it fails for
# static binaries; they need nothing). Lines are "name => /path (addr)", or
# "/path (addr)" for the loader; mawk knows no \s. glibc loads libgcc_s at run time
# for thread cancellation, so ldd does not list it.
ldd_out=$(ldd "${bins[@]}" 2>&1) || true
if grep -q 'not found' <<<"$ldd_out"; then
	die "missing libraries: $(grep 'not found' <<<"$ldd_out" | tr -s '\t\n' '  ')"
fi
libgcc=$(ldconfig -p | awk '$1 == "libgcc_s.so.1" && /x86-64/ && !n++ { print $NF }')
[[ -n "$libgcc" ]] || die "libgcc_s.so.1 not found on the host"
while read -r lib; do
	put "$lib" "$lib"
done < <({
	awk '$2 == "=>" && $3 ~ /^\// { print $3; next }
		$1 ~ /^\// && $2 ~ /^\(0x/ { print $1 }' <<<"$ldd_out"
	echo "$libgcc"
} | LC_ALL=C sort -u)

# busybox: /bin/sh for the kernel to start /init, which runs "busybox --install -s
# /bin" for the other applet links (faster than ~270 ln calls here). Real tools that
# shadow an applet are listed for lib.sh.
put /bin/busybox /bin/busybox
ln -s busybox "$STAGE/bin/sh"
while read -r applet; do
	for dir in sbin usr/sbin usr/bin; do
		if [[ -e "$STAGE/$dir/$applet" || -L "$STAGE/$dir/$applet" ]]; then
			echo "$applet /$dir/$applet"
		fi
	done
done < <(/bin/busybox --list | LC_ALL=C sort) >"$STAGE/etc/dctest/real-tools"

# Out-of-tree modules, checked against the guest kernel; the in-tree modules they
# depend on are added to the list below.
mroot=lib/modules/$kver
oot_names=" "
for ko in "${oot_modules[@]}"; do
	[[ -f "$ko" ]] || die "--module $ko: no such file"
	magic=$(modinfo -F vermagic "$ko") || die "--module $ko: not a kernel module"
	[[ "${magic%% *}" == "$kver" ]] ||
		die "--module $ko was built for '${magic%% *}', the guest runs $kver"
	mkdir -p "$STAGE/$mroot/extra"
	cp "$ko" "$STAGE/$mroot/extra/"
	oot_names+="$(basename "$ko" .ko | tr - _) "
	IFS=, read -r -a deps <<<"$(modinfo -F depends "$ko")"
	MODULES+=("${deps[@]}")
done

# In-tree modules with their dependencies (ignoring the host's modprobe.d). A module
# built into the kernel (all of them in the debug kernel) is listed in modules.builtin:
# modprobe prints "builtin NAME" for it, nothing is copied, and in the guest modprobe
# succeeds without loading anything. A module that is neither is an error.
wanted=()
for mod in "${MODULES[@]}"; do
	[[ "$oot_names" != *" ${mod//-/_} "* ]] || continue
	[[ "$no_kmods" != *" $mod "* ]] || continue
	wanted+=("$mod")
done
install_modules "$STAGE" "$ktree" "$kver" "${wanted[@]}"

depmod -b "$STAGE" "$kver"

# Guest scripts, tests and extra files.
install -m 0755 "$GUEST/init" "$STAGE/init"
install -D -m 0644 "$GUEST/lib.sh" "$STAGE/lib/dctest/lib.sh"
for dir in "${test_dirs[@]}"; do
	[[ -d "$dir" ]] || die "--tests $dir: not a directory"
	dst=$STAGE/tests/$(basename "$(cd "$dir" && pwd)")
	mkdir -p "$dst"
	cp -R "$dir/." "$dst/"
done
for spec in "${files[@]}"; do
	src=${spec%:*} dst=${spec##*:}
	[[ "$spec" == *:* && -f "$src" && "$dst" == /* ]] ||
		die "--file $spec: want an existing SRC and an absolute DST"
	put "$src" "$dst"
done

# Deterministic archive: sorted names, fixed owner and times.
find "$STAGE" -exec touch -h -d "@${SOURCE_DATE_EPOCH:-0}" {} +
(cd "$STAGE" && find . -mindepth 1 -printf '%P\n' | LC_ALL=C sort |
	cpio -o -H newc -R 0:0 --reproducible --quiet) >"$out.tmp"

# Append /dev/console (char 5:1) as a second archive, written by hand so that no root
# is needed for mknod; the kernel opens it for PID 1's stdio before /init runs.
newc_entry() { # NAME MODE RDEVMAJOR RDEVMINOR
	local name=$1 hdr
	hdr=$(printf '070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X' \
		0 "$2" 0 0 1 "${SOURCE_DATE_EPOCH:-0}" 0 0 0 "$3" "$4" $((${#name} + 1)) 0)
	printf '%s%s\0' "$hdr" "$name"
	# Header plus name are padded to a multiple of 4 bytes.
	head -c $(((4 - (110 + ${#name} + 1) % 4) % 4)) /dev/zero
}
{
	newc_entry dev/console $((0020600)) 5 1
	newc_entry 'TRAILER!!!' 0 0 0
} >>"$out.tmp"
mv "$out.tmp" "$out"
log "wrote $out ($(du -h "$out" | cut -f1), kernel $kver)"
