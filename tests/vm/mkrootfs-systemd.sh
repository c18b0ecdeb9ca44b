#!/usr/bin/env bash
# Build the systemd guest: a Debian 12 root file system with systemd as PID 1,
# udevd and journald, SoftHSM2 and the project's packages installed with dpkg,
# packed as an initramfs (uncompressed newc cpio) that QEMU loads and the
# kernel unpacks as the root file system (/init is systemd).
#
# Usage: tests/vm/mkrootfs-systemd.sh --deb FILE... --module KO --tests DIR --out FILE [--kver KVER]
#   --deb FILE        a package to install with dpkg (repeatable)
#   --module KO       dm-diskcrypt.ko as DKMS built it, put where `dkms install`
#                     puts it (/lib/modules/KVER/updates/dkms): the guest has no
#                     compiler, so DKMS itself runs on the host (tests/packaging)
#   --tests DIR       guest test scripts, copied to /tests/<basename>/ (repeatable)
#   --out FILE        the cpio
#   --kver KVER       guest kernel release (default: what tests/vm/kernel.sh prints)
#
# The base system (mmdebstrap from Debian's archive, ~180 MB, ~3 min) is cached
# in $DISKCRYPT_CACHE (default ~/.cache/diskcrypt)/systemd-guest, keyed by a hash
# of its package list and options; each run unpacks it, adds the kernel's
# modules, the packages and the tests (~15 s). Building the base needs root
# (mmdebstrap --mode=root) or unprivileged user namespaces (--mode=unshare).
set -euo pipefail
umask 022

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD=${DISKCRYPT_BUILD:-$ROOT/build}
CACHE=${DISKCRYPT_CACHE:-$HOME/.cache/diskcrypt}/systemd-guest
GUEST=$ROOT/tests/vm/guest
# shellcheck source=kernel-lib.sh
. "$ROOT/tests/vm/kernel-lib.sh"

# What the guest runs: systemd and udev, the agent's libraries (dpkg checks
# the packages' dependencies), SoftHSM2 and pkcs11-tool for the KMS, stock
# cryptsetup for recovery, LVM for the "no probing on the host" test.
BASE_PACKAGES=(
	systemd systemd-sysv udev dbus kmod util-linux procps
	libcryptsetup12 libdevmapper1.02.1 libkeyutils1 libp11-kit0 libtomlplusplus3 libssl3 libsystemd0 libblkid1
	softhsm2 opensc xxd man-db
	cryptsetup-bin dmsetup lvm2 keyutils e2fsprogs
)
BASE_OPTIONS=(
	--variant=minbase
	--dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*'
	--dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*'
	--dpkgopt='path-include=/usr/share/doc/diskcrypt/*'
	--dpkgopt='path-include=/usr/share/man/man5/diskcrypt*' --dpkgopt='path-include=/usr/share/man/man8/diskcrypt*'
)
# In-tree modules (with their dependencies) the guest loads.
MODULES=(virtio_pci virtio_blk dm-mod dm-crypt xts ecb aesni-intel cryptd crypto_simd loop brd)

log() { echo "mkrootfs-systemd.sh: $*" >&2; }
die() {
	log "error: $*"
	exit 2
}

kver="" out="" module="" debs=() test_dirs=()
opts=$(getopt -n mkrootfs-systemd.sh -o h -l kver:,deb:,module:,tests:,out:,help -- "$@") || exit 2
eval set -- "$opts"
while true; do
	case "$1" in
	--kver) kver=$2 ;;
	--deb) debs+=("$2") ;;
	--module) module=$2 ;;
	--tests) test_dirs+=("$2") ;;
	--out) out=$2 ;;
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
[[ -n "$out" && -n "$module" && ${#debs[@]} -gt 0 ]] || die "--out, --module and --deb are required"
[[ -n "$kver" ]] || kver=$("$ROOT/tests/vm/kernel.sh")
ktree=$BUILD/vm/kernel/$kver
[[ -f "$ktree/lib/modules/$kver/modules.dep" ]] || die "no module tree in $ktree (run tests/vm/kernel.sh)"

# The base system, cached.
key=$(printf '%s\n' bookworm "${BASE_PACKAGES[@]}" "${BASE_OPTIONS[@]}" | sha256sum | cut -c1-16)
base=$CACHE/base-$key.tar
if [[ ! -f "$base" ]]; then
	command -v mmdebstrap >/dev/null || die "mmdebstrap is missing (run packaging/install-deps.sh)"
	mkdir -p "$CACHE"
	mode=unshare
	((EUID == 0)) && mode=root
	log "building the base system (mmdebstrap, once; cached as $base)"
	start=$(date +%s)
	includes=$(
		IFS=,
		echo "${BASE_PACKAGES[*]}"
	)
	mmdebstrap --mode="$mode" "${BASE_OPTIONS[@]}" --include="$includes" \
		bookworm "$CACHE/.base-$key.tmp.tar" \
		"deb http://deb.debian.org/debian bookworm main" \
		"deb http://deb.debian.org/debian bookworm-updates main" \
		"deb http://deb.debian.org/debian-security bookworm-security main" \
		>"$CACHE/base-$key.log" 2>&1 || {
		tail -20 "$CACHE/base-$key.log" >&2
		rm -f "$CACHE/.base-$key.tmp.tar"
		die "mmdebstrap failed (log: $CACHE/base-$key.log)"
	}
	mv "$CACHE/.base-$key.tmp.tar" "$base"
	log "base system built in $(($(date +%s) - start)) s"
fi

mkdir -p "$(dirname "$out")"
STAGE=$(mktemp -d "$(dirname "$out")/.rootfs.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT
tar -xf "$base" -C "$STAGE"

# Kernel modules: the in-tree ones with their dependencies, and ours where
# dkms install puts it.
mroot=lib/modules/$kver
install_modules "$STAGE" "$ktree" "$kver" "${MODULES[@]}"
magic=$(modinfo -F vermagic "$module") || die "--module $module: not a kernel module"
[[ "${magic%% *}" == "$kver" ]] || die "--module $module was built for '${magic%% *}', the guest runs $kver"
install -D -m 0644 "$module" "$STAGE/$mroot/updates/dkms/$(basename "$module")"
depmod -b "$STAGE" "$kver"

# The packages, as an operator installs them (their maintainer scripts run in
# a chroot: units enabled, tmpfiles created).
# The base excludes man pages but ours (path-include): their folders must exist.
mkdir -p "$STAGE/tmp/debs" "$STAGE/usr/share/man/man5" "$STAGE/usr/share/man/man8"
cp "${debs[@]}" "$STAGE/tmp/debs/"
mount -t proc proc "$STAGE/proc"
trap 'umount "$STAGE/proc" 2>/dev/null; rm -rf "$STAGE"' EXIT
chroot "$STAGE" sh -c 'dpkg -i /tmp/debs/*.deb' >"$out.dpkg.log" 2>&1 || {
	cat "$out.dpkg.log" >&2
	die "dpkg -i failed in the guest's root"
}
umount "$STAGE/proc"
trap 'rm -rf "$STAGE"' EXIT
rm -rf "$STAGE/tmp/debs"

# The guest: systemd as /init, a serial console, no login prompts, the test
# unit that runs the tests named on the kernel command line.
ln -sf /lib/systemd/systemd "$STAGE/init"
echo diskcrypt-guest >"$STAGE/etc/hostname"
: >"$STAGE/etc/machine-id"
for unit in getty@tty1.service serial-getty@ttyS0.service serial-getty@ttyS1.service \
	apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service \
	fstrim.timer systemd-timesyncd.service lvm2-monitor.service; do
	ln -sf /dev/null "$STAGE/etc/systemd/system/$unit"
done
install -D -m 0644 "$GUEST/lib.sh" "$STAGE/lib/dctest/lib.sh"
mkdir -p "$STAGE/etc/dctest"
: >"$STAGE/etc/dctest/real-tools"
install -m 0644 "$ROOT/tests/vm/systemd-guest/dctest.service" "$STAGE/etc/systemd/system/dctest.service"
install -m 0755 "$ROOT/tests/vm/systemd-guest/dctest-run" "$STAGE/usr/local/sbin/dctest-run"
ln -sf ../dctest.service "$STAGE/etc/systemd/system/multi-user.target.wants/dctest.service"
for dir in "${test_dirs[@]}"; do
	[[ -d "$dir" ]] || die "--tests $dir: not a directory"
	dst=$STAGE/tests/$(basename "$(cd "$dir" && pwd)")
	mkdir -p "$dst"
	cp -R "$dir/." "$dst/"
done

(cd "$STAGE" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc) >"$out.tmp"
mv "$out.tmp" "$out"
log "wrote $out ($(du -h "$out" | cut -f1), kernel $kver)"
