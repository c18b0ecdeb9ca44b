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
#   revocation key create/list/rotate/disable/enable/destroy through the CLI
#              (SoftHSM2); with [revocation] revoke for a key: disabled ->
#              the mapping suspended and its kernel key wiped within the
#              interval, reads wait, status says why; enabled -> re-keyed
#              from the header and resumed with the same data; a key in
#              keep mode keeps serving; destroy refused while attached; the
#              default key protected; a revoked disk detaches
#   kmip       a KMIP provider (PyKMIP on the host, tests/attach/kmip-host.sh;
#              the guest reaches it through QEMU's user-mode network, below):
#              format, verify, attach, write, detach, attach, read under a
#              KMIP key, audited with the key's UID as its version; attach
#              time against a PKCS#11 attach; a provider whose server is
#              unreachable (exit 8) and the server stopped mid-run while a
#              disk is attached: nothing mapped, the attached disk serves
#              I/O; a key revoked on the server mid-run refused (10)
#
# Only when kmip is selected: the PKI, the server and its keys are made in
# $BUILD/vm/attach/kmip before the guest boots (the CA, client certificate
# and key and the keys' UIDs go into the initramfs, with virtio_net), and
# the guest gets a virtio NIC on QEMU's user-mode network with restrict=on
# (no route anywhere) and two guest forwards: 10.0.2.100:5696 to the server
# (a busybox nc on the host per connection), 10.0.2.100:5697 to
# 'kmip-host.sh control' (the guest's requests: revoke a key, stop, kill or
# start the server) and 10.0.2.100:5698 to the server after a 10 s wait (a
# KMS that does not answer). The server is stopped when the guest is done, also on failure.
#
# Usage: tests/attach/run.sh [TEST,...]
# Environment: DISKCRYPT_BUILD (default <repo>/build), KMOD (default
# <repo>/kmod/dm-diskcrypt.ko), DISKCRYPT_VM_VERBOSE=1 streams the console.
# Exit status: 0 all passed, 1 a check failed, 2 the harness failed.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD=${DISKCRYPT_BUILD:-$ROOT/build}
KMOD=${KMOD:-$ROOT/kmod/dm-diskcrypt.ko}
TESTS=${1:-lifecycle,custody,errors,restart,parallel,hostile-peer,hostile-header,access,profiles,copy,import,recovery,revocation,kmip}
W=$BUILD/vm/attach
SOFTHSM=/usr/lib/softhsm/libsofthsm2.so

for f in "$KMOD" "$BUILD/cmake/diskcrypt-agent" "$BUILD/cmake/diskcrypt" \
	"$BUILD/cmake/tests/diskcrypt-test-unwrap" "$BUILD/cmake/libcryptsetup-token-diskcrypt-kms.so" "$SOFTHSM"; do
	[ -e "$f" ] || { echo "attach/run.sh: $f is missing; run 'make all' first" >&2; exit 2; }
done

kver=$("$ROOT/tests/vm/kernel.sh")
mkdir -p "$W"

# The kmip test: its server, files and network, only when it runs.
initramfs_args=() vm_args=() K=""
if [[ ",$TESTS," == *,kmip,* || ",$TESTS," == *,attach/kmip,* ]]; then
	K=$W/kmip
	kmip_host=$ROOT/tests/attach/kmip-host.sh
	# kmip_stop: the server stopped, no process of it left.
	# shellcheck disable=SC2317 # called by the traps
	kmip_stop() {
		local ok=0
		"$kmip_host" stop "$K" || ok=1
		if pgrep -a -f "pykmip-server -f $K/server.conf" >&2; then
			echo "attach/run.sh: pykmip-server processes are left (above)" >&2
			ok=1
		fi
		return "$ok"
	}
	trap 'kmip_stop || true' EXIT
	trap 'exit 2' INT TERM
	port=$("$kmip_host" start "$K") || { echo "attach/run.sh: the PyKMIP server did not start" >&2; exit 2; }
	for f in ca.pem client.pem client.key; do
		initramfs_args+=(--file "$K/pki/$f:/etc/kmip-test/$f")
	done
	initramfs_args+=(--file "$K/keys:/etc/kmip-test/keys" --kmod virtio_net)
	# QEMU runs a guest forward's command per connection, with the
	# connection as its stdin, stdout and stderr: nc's messages must not
	# reach the guest. QEMU's option syntax escapes a comma by doubling it.
	relay="/bin/sh -c 'exec /usr/bin/busybox nc 127.0.0.1 $port 2>/dev/null'"
	control="$kmip_host control '$K'"
	netdev="user,id=n0,restrict=on"
	netdev+=",guestfwd=tcp:10.0.2.100:5696-cmd:${relay//,/,,}"
	netdev+=",guestfwd=tcp:10.0.2.100:5697-cmd:${control//,/,,}"
	# A KMIP server that accepts and never answers (the faults of kmip.sh):
	# the connection is held 10 s before it reaches the server.
	slow="/bin/sh -c 'sleep 10; exec /usr/bin/busybox nc 127.0.0.1 $port 2>/dev/null'"
	netdev+=",guestfwd=tcp:10.0.2.100:5698-cmd:${slow//,/,,}"
	vm_args+=(--qemu-arg -netdev --qemu-arg "$netdev"
		--qemu-arg -device --qemu-arg "virtio-net-pci,netdev=n0,romfile=")
fi

"$ROOT/tests/vm/initramfs-agent.sh" --kver "$kver" --out "$W/initramfs.cpio" \
	--tests "$ROOT/tests/attach" --kmod ext4 "${initramfs_args[@]}"
rm -f "$W"/vd?.img
truncate -s 64M "$W/vda.img" "$W/vdb.img"
rc=0
"$ROOT/tests/vm/run.sh" --kver "$kver" --initramfs "$W/initramfs.cpio" \
	--disk "$W/vda.img" --disk "$W/vdb.img" --cpu max --smp 2 \
	--run "$TESTS" --timeout 600 --out "$W/run" --label attach "${vm_args[@]}" || rc=$?
rm -f "$W"/vd?.img
if [[ -n "$K" ]]; then
	trap - EXIT
	kmip_stop || rc=2
	if ((rc != 0)); then
		echo "attach/run.sh: the guest's requests to the KMIP host ($K/control.log):" >&2
		sed 's/^/    /' "$K/control.log" >&2 2>/dev/null || true
	fi
fi
exit "$rc"
