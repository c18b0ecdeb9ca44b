#!/usr/bin/env bash
# The systemd suite: the project's Debian packages installed with dpkg in a
# Debian 12 guest that boots systemd (udevd, journald), the module as DKMS
# built it (tests/vm/mkrootfs-systemd.sh), under QEMU (TCG).
#   units      the socket enabled by the package, the agent started by the
#              first request with its PIN as a credential, systemd-analyze
#              verify and security (exposure printed, at most 2.0), the
#              process's capabilities, seccomp and no_new_privs, a disk
#              attached through it, journal fields, restart, crash (SIGKILL)
#              and watchdog (SIGSTOP) with the disk attached, stop
#   autoattach disks hot-plugged through QEMU's monitor (QMP,
#              tests/vm/qmp-hotplug.py): udev attaches a diskcrypt disk with a
#              provisioning entry; no entry, a service account without the
#              role, an entry disagreeing with the header: refused and
#              audited; a plain LUKS2 disk starts nothing; removal detaches
#              (forced while open); a guest LVM VG inside is not activated
#   audit      `diskcrypt audit` of the agent keeping its audit events only
#              in the journal: the events of an attach, a detach and a
#              refusal; a forged entry logged by an unprivileged process
#              with the agent's identifier is not shown
#
# Usage: tests/systemd/run.sh [TEST,...]
# Needs tests/packaging/run.sh's outputs: $DISKCRYPT_BUILD/deb/*.deb and
# $DISKCRYPT_BUILD/deb/dm-diskcrypt.ko.
# Exit status: 0 all passed, 1 a check failed, 2 the harness failed.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD=${DISKCRYPT_BUILD:-$ROOT/build}
TESTS=${1:-units,autoattach,audit}
W=$BUILD/vm/systemd

version=$(dpkg-parsechangelog -l "$ROOT/packaging/debian/changelog" -S Version)
deb=$BUILD/deb/diskcrypt_${version}_$(dpkg --print-architecture).deb
ko=$BUILD/deb/dm-diskcrypt.ko
for f in "$deb" "$ko"; do
	[[ -f "$f" ]] || { echo "systemd/run.sh: $f is missing; run tests/packaging/run.sh first" >&2; exit 2; }
done

kver=$("$ROOT/tests/vm/kernel.sh")
mkdir -p "$W"
"$ROOT/tests/vm/mkrootfs-systemd.sh" --kver "$kver" --deb "$deb" --module "$ko" \
	--tests "$ROOT/tests/systemd" --out "$W/rootfs.cpio"
rm -rf "$W"/vd?.img "$W/hotplug"
truncate -s 64M "$W/vda.img" "$W/vdb.img"
# Disks the guest hot-plugs (HOTPLUG lines on its results port).
mkdir -p "$W/hotplug"
truncate -s 64M "$W/hotplug/hp1.img" "$W/hotplug/hp2.img" "$W/hotplug/hp3.img"
# The driver follows the results file from its start: none from an earlier run.
mkdir -p "$W/run"
rm -f "$W/qmp.sock" "$W/hotplug.log" "$W/run/results.txt"
"$ROOT/tests/vm/qmp-hotplug.py" "$W/qmp.sock" "$W/run/results.txt" "$W/hotplug" "$W/hotplug.log" &
driver=$!
trap 'kill "$driver" 2>/dev/null || true' EXIT
rc=0
"$ROOT/tests/vm/run.sh" --kver "$kver" --initramfs "$W/rootfs.cpio" \
	--disk "$W/vda.img" --disk "$W/vdb.img" --cpu max --smp 2 --mem 2048 \
	--append "systemd.show_status=0 systemd.log_level=notice" \
	--qemu-arg -qmp --qemu-arg "unix:$W/qmp.sock,server=on,wait=off" \
	--run "$TESTS" --timeout 600 --out "$W/run" --label systemd || rc=$?
wait "$driver" 2>/dev/null || true
trap - EXIT
if ((rc != 0)); then
	echo "systemd/run.sh: hot-plug requests and QEMU's answers:" >&2
	sed 's/^/    /' "$W/hotplug.log" >&2 || true
fi
rm -rf "$W"/vd?.img "$W/hotplug"
exit "$rc"
