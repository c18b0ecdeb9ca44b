#!/bin/sh
# The guest half of `make demo`: the daily life of an encrypted cloud disk on
# a host, narrated. Each step is a check, so the demo fails loudly if any does.
. /tests/attach/common.sh

say() { info "$*"; }
# show CMD...: run it, narrate its output indented.
show() {
	"$@" >/tmp/show.out 2>&1
	_rc=$?
	while IFS= read -r _l; do info "     $_l"; done </tmp/show.out
	return "$_rc"
}
DISK=fhm4c2b8r1d9q0x7
MAP=/dev/mapper/diskcrypt-$DISK

say "== diskcrypt demo: a customer-keyed cloud disk on a host, in Debian's kernel under QEMU =="
say "1. The kernel side: dm-diskcrypt, a device-mapper target that takes its key only from the kernel keyring."
check demo-module /sbin/modprobe dm-diskcrypt || exit 1

say "2. The KMS: SoftHSM2 as the embedded default HSM. A token, and an AES-256 key that can never leave it:"
check demo-hsm hsm_setup || exit 1
say "   $(pkcs11-tool --module "$MODULE" --token-label diskcrypt --login --pin "$PIN" --list-objects --type secrkey 2>/dev/null | grep -E 'label|ID|Usage' | tr -s ' \n' ' ')"

say "3. The agent: the only holder of KMS credentials, on a root-only socket ($SOCK)."
check demo-agent agent_running || exit 1
show diskcrypt status

say "4. Provisioning formats the VM's new disk: LUKS2 (stock format), its key wrapped by the HSM key and bound to the disk id."
check demo-format show diskcrypt format /dev/vda --disk-id "$DISK" --type network-ssd --service-account "$SA" || exit 1

say "5. The VM starts on this host: attach. The agent unwraps the key for this disk id and service account,"
say "   hands it to the kernel through a keyring key that dies right after the table is loaded, and maps the disk."
check demo-attach show diskcrypt attach /dev/vda --disk-id "$DISK" --service-account "$SA" || exit 1
say "   dmsetup table names the key, never shows it:"
show dmsetup table "diskcrypt-$DISK"

say "6. The VM writes to its disk."
printf 'Hello from the VM: only the mapped device ever shows this line in clear.\n' >/tmp/msg
dd if=/dev/zero bs=4096 count=1 2>/dev/null | cat /tmp/msg - | head -c 4096 >/tmp/block
check demo-write dd if=/tmp/block of="$MAP" bs=4096 count=1 oflag=direct 2>/dev/null
say "   through $MAP: $(dd if="$MAP" bs=4096 count=1 iflag=direct 2>/dev/null | head -n 1)"
say "   on the raw disk /dev/vda:  $(dd if=/dev/vda bs=1M skip=1 count=1 iflag=direct 2>/dev/null | od -An -tx1 -N 16 | tr -s ' ')..."
expect_fail demo-raw-is-ciphertext sh -c "dd if=/dev/vda bs=1M count=2 iflag=direct 2>/dev/null | grep -q 'Hello from the VM'"

say "7. The VM stops: detach. The mapping and the kernel's copy of the key are gone."
check demo-detach show diskcrypt detach "$DISK" || exit 1
check demo-unmapped sh -c "! test -e $MAP"

say "8. The VM starts again (after a host reboot, on another host): attach, and the data is back."
check demo-reattach diskcrypt attach /dev/vda --disk-id "$DISK" --service-account "$SA" || exit 1
say "   read back: $(dd if="$MAP" bs=4096 count=1 iflag=direct 2>/dev/null | head -n 1)"
check demo-read-back sh -c "dd if=$MAP bs=4096 count=1 iflag=direct 2>/dev/null | cmp -s - /tmp/block"

say "9. What the host operator sees:"
show diskcrypt list
show diskcrypt status "$DISK"

say "10. Storage cannot swap disks: disk $DISK's header presented as another disk is refused."
dd if=/dev/vda of="$W/copy.img" bs=1M count=4 2>/dev/null
copy=$(/usr/sbin/losetup --find --show "$W/copy.img")
show diskcrypt attach "$copy" --disk-id other-disk-2 --service-account "$SA"
rc=$?
check demo-binding-refused [ "$rc" = 11 ]
/usr/sbin/losetup -d "$copy"

say "11. The audit trail (JSON lines here; journal fields under systemd): every format, wrap, unwrap, attach,"
say "    detach and refusal, with disk, service account, key and version, and the caller."
while IFS= read -r line; do
	say "     $(echo "$line" | sed -n 's/.*"time":"\([^"]*\)","event":"\([^"]*\)","result":"\([^"]*\)".*"disk_id":"\([^"]*\)","service_account":\("[^"]*"\|null\).*"caller":{"uid":\([0-9]*\).*"key":\({[^}]*}\|null\).*/\1 \2 \3 disk=\4 sa=\5 uid=\6 key=\7/p' | tr -d '"')"
done <"$AUDIT"
check demo-audit-refusal audit_has '"event":"attach"' '"result":"refused"' '"reason":"binding"'

say "12. Done with the disk: detach."
check demo-final-detach diskcrypt detach "$DISK"
say "== demo complete: every step above passed =="
die_on_kernel_warning demo-kernel-log
