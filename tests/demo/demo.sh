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
# demo_policy ROLE: the demo's access policy becomes $POLICY: the provisioning
# user acts as the disk's service account and sees the key; the service
# account holds ROLE on the key.
demo_policy() {
	{
		printf '# diskcrypt demo: the access policy (tests/demo/demo.sh).\n\n'
		policy_binding "userAccount:$USER_ID" iam.serviceAccounts.user "serviceAccount:$SA"
		policy_binding "userAccount:$USER_ID" kms.viewer "key:$KEY"
		policy_binding "serviceAccount:$SA" "$1" "key:$KEY"
	} | install_policy
}
# show_policy: the bindings of $POLICY, one line each.
show_policy() {
	awk -F'"' '/^subject/ { s = $2 } /^role/ { r = $2 } /^resource/ { printf "%-28s %-29s on %s\n", s, r, $2 }' "$POLICY"
}
# audit_summary: the audit file, one short line per event (fields that are
# null left out; the policy revision on access and policy events only).
audit_summary() {
	awk '
	function f(name) {
		if (!match($0, "\"" name "\":(\"[^\"]*\"|null|[0-9]+)"))
			return "null"
		v = substr($0, RSTART + length(name) + 3, RLENGTH - length(name) - 3)
		gsub(/"/, "", v)
		return v
	}
	function kv(label, name) {
		v = f(name)
		return v == "null" ? "" : " " label "=" v
	}
	{
		line = f("time") " " f("event") " " f("result") kv("disk", "disk_id") kv("sa", "service_account") \
			kv("user", "user") kv("reason", "reason") kv("key", "id") kv("uid", "uid")
		if ($0 ~ /"event":"(access|policy)"/ && (r = f("policy_revision")) != "null")
			line = line " policy=" substr(r, 1, 19) "..."
		print line
	}' "$AUDIT"
}

say "== diskcrypt demo: a customer-keyed cloud disk on a host, in Debian's kernel under QEMU =="
say "1. The kernel side: dm-diskcrypt, a device-mapper target that takes its key only from the kernel keyring."
check demo-module /sbin/modprobe dm-diskcrypt || exit 1

say "2. The KMS: SoftHSM2 as the embedded default HSM. A token, and an AES-256 key that can never leave it:"
check demo-hsm hsm_setup || exit 1
say "   $(pkcs11-tool --module "$MODULE" --token-label diskcrypt --login --pin "$PIN" --list-objects --type secrkey 2>/dev/null | grep -E 'label|ID|Usage' | tr -s ' \n' ' ')"

say "3. The customer's access policy ($POLICY): bindings of a subject, a role and a resource."
say "   The provisioning user $USER_ID may act as the disk's service account $SA and see the key;"
say "   $SA may wrap with the key (kms.keys.encrypter) but not unwrap: nobody can open the disk yet."
check demo-policy demo_policy kms.keys.encrypter || exit 1
show show_policy

say "4. The agent: the only holder of KMS credentials, on a root-only socket ($SOCK). It checks the policy"
say "   before it opens a device or asks the KMS, and reads the file again when it changes."
check demo-agent agent_running || exit 1
show diskcrypt status

say "5. Provisioning ($USER_ID) formats the VM's new disk: LUKS2 (stock format), its key wrapped by the HSM key"
say "   and bound to the disk id."
check demo-format show diskcrypt format /dev/vda --disk-id "$DISK" --type network-ssd --service-account "$SA" \
	--user "$USER_ID" --key "$KEY" || exit 1

say "6. The VM starts on this host: attach. The policy does not let $SA unwrap yet: refused before the KMS is asked."
show diskcrypt attach /dev/vda --disk-id "$DISK" --type network-ssd --key "$KEY" --service-account "$SA"
rc=$?
check demo-attach-refused [ "$rc" = 18 ]
check demo-refused-unmapped sh -c "! test -e $MAP"

say "7. The customer grants kms.keys.encrypterDecrypter on the key to the disk's service account (the policy file"
say "   is replaced; the agent is not restarted):"
check demo-grant demo_policy kms.keys.encrypterDecrypter || exit 1
show show_policy
say "   attach again: the agent unwraps the key for this disk id and service account, hands it to the kernel"
say "   through a keyring key that dies right after the table is loaded, and maps the disk."
check demo-attach show diskcrypt attach /dev/vda --disk-id "$DISK" --type network-ssd --key "$KEY" \
	--service-account "$SA" || exit 1
say "   dmsetup table names the key, never shows it:"
show dmsetup table "diskcrypt-$DISK"

say "8. The VM writes to its disk."
printf 'Hello from the VM: only the mapped device ever shows this line in clear.\n' >/tmp/msg
dd if=/dev/zero bs=4096 count=1 2>/dev/null | cat /tmp/msg - | head -c 4096 >/tmp/block
check demo-write dd if=/tmp/block of="$MAP" bs=4096 count=1 oflag=direct 2>/dev/null
say "   through $MAP: $(dd if="$MAP" bs=4096 count=1 iflag=direct 2>/dev/null | head -n 1)"
say "   on the raw disk /dev/vda:  $(dd if=/dev/vda bs=1M skip=1 count=1 iflag=direct 2>/dev/null | od -An -tx1 -N 16 | tr -s ' ')..."
expect_fail demo-raw-is-ciphertext sh -c "dd if=/dev/vda bs=1M count=2 iflag=direct 2>/dev/null | grep -q 'Hello from the VM'"

say "9. The VM stops: detach. The mapping and the kernel's copy of the key are gone."
check demo-detach show diskcrypt detach "$DISK" || exit 1
check demo-unmapped sh -c "! test -e $MAP"

say "10. The VM starts again (after a host reboot, on another host): attach, and the data is back."
check demo-reattach diskcrypt attach /dev/vda --disk-id "$DISK" --type network-ssd --key "$KEY" \
	--service-account "$SA" || exit 1
say "   read back: $(dd if="$MAP" bs=4096 count=1 iflag=direct 2>/dev/null | head -n 1)"
check demo-read-back sh -c "dd if=$MAP bs=4096 count=1 iflag=direct 2>/dev/null | cmp -s - /tmp/block"

say "11. What the host operator sees:"
show diskcrypt list
show diskcrypt status "$DISK"

say "12. Storage cannot swap disks: disk $DISK's header presented as another disk is refused."
dd if=/dev/vda of="$W/copy.img" bs=1M count=4 2>/dev/null
copy=$(/usr/sbin/losetup --find --show "$W/copy.img")
show diskcrypt attach "$copy" --disk-id other-disk-2 --type network-ssd --key "$KEY" --service-account "$SA"
rc=$?
check demo-binding-refused [ "$rc" = 11 ]
/usr/sbin/losetup -d "$copy"

say "13. The audit trail (JSON lines here; journal fields under systemd): every access decision under the policy's"
say "    revision, policy change, format, wrap, unwrap, attach, detach and refusal, with disk, service account,"
say "    user, key and the caller."
audit_summary >/tmp/audit.summary
while IFS= read -r line; do say "     $line"; done </tmp/audit.summary
check demo-audit-access-refusal audit_has '"event":"access"' '"result":"refused"' '"reason":"access-denied"' \
	"\"service_account\":\"$SA\""
check demo-audit-policy-change audit_has '"event":"policy"' '"result":"ok"'
check demo-audit-refusal audit_has '"event":"attach"' '"result":"refused"' '"reason":"binding"'

say "14. Done with the disk: detach."
check demo-final-detach diskcrypt detach "$DISK"
say "== demo complete: every step above passed =="
die_on_kernel_warning demo-kernel-log
