#!/usr/bin/env bash
# Build the guest's debug kernel: Debian's own linux-source-6.1 (the source of the
# kernel tests/vm/kernel.sh prepares) with KASAN, KFENCE, lockdep, DEBUG_ATOMIC_SLEEP,
# DEBUG_OBJECTS_WORK and the hung task and soft lockup detectors, and only what the
# guest needs, built in (tests/vm/debug-kernel.config, merged onto allnoconfig).
#
# Usage: tests/vm/debug-kernel.sh [CACHE_DIR]
#   CACHE_DIR defaults to $DISKCRYPT_DEBUG_KERNEL_CACHE, else
#   ${XDG_CACHE_HOME:-$HOME/.cache}/diskcrypt/debug-kernel: outside the work tree, so
#   that it survives "make clean" and is shared by every checkout.
# Environment: JOBS (default nproc) parallel compile jobs.
#
# The build is cached in CACHE_DIR/KEY, KEY being the source package version and a
# hash of the config fragment, the script's LAYOUT number and the compiler version; a
# later run only prints. It is built in a temporary folder next to it and renamed into place, so an
# interrupted build leaves no half cache (a stale temporary folder is removed by the
# next build). Layout, as tests/vm/kernel.sh's cache, for --kernel-dir of run.sh and
# mkinitramfs.sh:
#   CACHE_DIR/KEY/KVER/vmlinux            ELF kernel for QEMU's PVH boot
#   CACHE_DIR/KEY/KVER/config             its .config
#   CACHE_DIR/KEY/KVER/build/             headers, scripts and Module.symvers for
#                                         out-of-tree modules (make -C .../build M=...)
#   CACHE_DIR/KEY/KVER/lib/modules/KVER/  modules.builtin, modules.order, depmod's
#                                         index files (no .ko: everything is built in)
# Prints two lines on stdout: the kernel folder (CACHE_DIR/KEY, for --kernel-dir) and
# KVER, so callers can do: { read -r kdir; read -r kver; } < <(tests/vm/debug-kernel.sh)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
FRAGMENT=$HERE/debug-kernel.config
CACHE=${1:-${DISKCRYPT_DEBUG_KERNEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/diskcrypt/debug-kernel}}
JOBS=${JOBS:-$(nproc)}

# shellcheck source=kernel-lib.sh
. "$HERE/kernel-lib.sh"
# The guest kernel's source package version: linux-source-6.1 comes from the
# same source package.
guest_kernel_versions
# Bump LAYOUT whenever this script changes what it builds or how the cache looks.
LAYOUT=3
hash=$( {
	cat "$FRAGMENT"
	echo "layout $LAYOUT"
	gcc --version | head -n 1
} | sha256sum | cut -c1-12)
KEY=$PKGVER-$hash
DEST=$CACHE/$KEY

ready() {
	local k
	k=$(cat "$DEST/kver" 2>/dev/null) &&
		[[ -f "$DEST/$k/vmlinux" && -f "$DEST/$k/lib/modules/$k/modules.dep" ]]
}
print() { printf '%s\n%s\n' "$DEST" "$(cat "$DEST/kver")"; }
if ready; then
	print
	exit 0
fi

# One builder at a time; the others wait, then find it done.
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9
if ready; then
	print
	exit 0
fi
# Leftovers of interrupted builds (we hold the lock: nobody else is building).
rm -rf "$CACHE"/.build.*

start=$(date +%s)
WORK=$(mktemp -d "$CACHE/.build.$KEY.XXXXXX")
DL=$(mktemp -d)
trap 'rm -rf "$WORK" "$DL"' EXIT
# apt-get download fetches as user _apt when run as root; let it write the folder.
if ((EUID == 0)) && id _apt >/dev/null 2>&1; then
	chown _apt "$DL"
fi
log "downloading linux-source-6.1=$PKGVER"
(cd "$DL" && apt-get download -qq "linux-source-6.1=$PKGVER") >&2 ||
	die "apt-get download linux-source-6.1=$PKGVER failed (stale package lists? try apt-get update)"

log "unpacking"
dpkg-deb --fsys-tarfile "$DL"/linux-source-6.1_*.deb |
	tar -xO ./usr/src/linux-source-6.1.tar.xz | xz -dc -T0 | tar -x -C "$WORK"
rm -rf "$DL"
SRC=$WORK/linux-source-6.1 OBJ=$WORK/obj
[[ -f "$SRC/Makefile" ]] || die "no kernel source in the linux-source-6.1 package"
# The PVH entry runs xen_prepare_pvh() on a stack at a physical address, before
# KASAN's shadow exists: gcc's stack instrumentation writes the shadow of that
# stack, and its Xen check calls memcmp() (lib/string.c, instrumented); either
# resets the guest at once (seen 2026-12-01). That early file goes uninstrumented,
# and without CONFIG_XEN the Xen check (always false here) is compiled out.
pvh=$SRC/arch/x86/platform/pvh
echo 'KASAN_SANITIZE_enlighten.o := n' >>"$pvh/Makefile"
sed -i 's/u32 msr = xen_cpuid_base();/u32 msr = IS_ENABLED(CONFIG_XEN) ? xen_cpuid_base() : 0;/' "$pvh/enlighten.c"
grep -q 'IS_ENABLED(CONFIG_XEN) ? xen_cpuid_base()' "$pvh/enlighten.c" ||
	die "cannot patch $pvh/enlighten.c (the PVH entry changed?)"

# allnoconfig plus the fragment; then every line of the fragment must have stuck (an
# option whose dependencies are missing is silently dropped by Kconfig).
log "configuring"
mkdir -p "$OBJ"
(cd "$SRC" && scripts/kconfig/merge_config.sh -n -O "$OBJ" "$FRAGMENT") >"$WORK/kconfig.log" 2>&1 ||
	die "merge_config.sh failed: $(tail -n 20 "$WORK/kconfig.log")"
missing=""
while read -r line; do
	case "$line" in
	CONFIG_*) grep -q -x -F "$line" "$OBJ/.config" || missing+=$'\n'"  $line" ;;
	'# CONFIG_'*' is not set')
		opt=${line#\# } opt=${opt%% *}
		! grep -q "^$opt=" "$OBJ/.config" || missing+=$'\n'"  $line"
		;;
	esac
done <"$FRAGMENT"
[[ -z "$missing" ]] ||
	die "options of $FRAGMENT not in the final .config (a dependency is missing):$missing"

log "compiling with $JOBS jobs"
TIMEFORMAT='compiled in %0R s (CPU: %0U s user, %0S s system)'
{ time make -C "$OBJ" -j "$JOBS" vmlinux modules >"$WORK/make.log" 2>&1; } 2>"$WORK/time" ||
	die "the kernel build failed: $(tail -n 30 "$WORK/make.log")"
log "$(cat "$WORK/time")"
KVER=$(make -C "$OBJ" -s kernelrelease)

OUT=$WORK/out/$KVER
mkdir -p "$OUT/lib/modules/$KVER"
cp "$OBJ/vmlinux" "$OUT/vmlinux"
cp "$OBJ/.config" "$OUT/config"
for f in modules.builtin modules.builtin.modinfo; do
	cp "$OBJ/$f" "$OUT/lib/modules/$KVER/"
done
# No in-tree module: modules.order may be empty or absent.
touch "$OUT/lib/modules/$KVER/modules.order"
depmod -b "$OUT" "$KVER"

# What out-of-tree modules need, as Debian's linux-headers package (the kernel's
# scripts/package/builddeb): the source tree's makefiles, include/, scripts/ and
# arch/x86's headers, then the generated headers, scripts, objtool and Module.symvers.
B=$OUT/build
mkdir -p "$B"
(
	cd "$SRC"
	find . arch/x86 -maxdepth 1 -name 'Makefile*'
	find include scripts -type f -o -type l
	find arch/x86 -name Kbuild.platforms -o -name Platform
	# shellcheck disable=SC2046 # folder names without spaces
	find $(find arch/x86 -name include -o -name scripts -type d) -type f
) | tar -c -f - -C "$SRC" -T - | tar -x -f - -C "$B"
(
	cd "$OBJ"
	# objtool only where the config asks for it (the ORC unwinder).
	if [ -x tools/objtool/objtool ]; then echo tools/objtool/objtool; fi
	find arch/x86/include Module.symvers include scripts -type f
) | tar -c -f - -C "$OBJ" -T - | tar -x -f - -C "$B"
cp "$OBJ/.config" "$B/.config"
ln -s ../../../build "$OUT/lib/modules/$KVER/build"
echo "$KVER" >"$WORK/out/kver"

rm -rf "$DEST"
mv "$WORK/out" "$DEST"
log "kernel $KVER ready in $DEST ($(($(date +%s) - start)) s)"
print
