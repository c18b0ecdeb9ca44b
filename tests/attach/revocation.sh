#!/bin/sh
# Key lifecycle through the CLI and revocation of attached disks (PKCS#11,
# SoftHSM2 in the guest). The agent runs with [revocation] interval = 1 and
# the key hsm:rev-key in `revoke` mode, hsm:keep-key in `keep` mode (the
# default):
#   - key create/list/rotate by a kms.admin user; refused without the role
#     (18) and for an existing key (16);
#   - revoke: the key disabled -> within the interval the mapping is
#     suspended and its kernel key wiped (dmsetup status key:wiped), a read
#     waits, `status` names the key, version and state, audit "revoke";
#     attach of another disk under the key refused (10); destroy refused
#     while the disk is attached (15); the key enabled -> the disk is re-keyed
#     from its header through the KMS (unwrap audited, "restore") and the
#     waiting read completes with the data written before;
#   - keep: the key disabled, I/O continues over several intervals;
#   - rotate: new wraps use version 2, rewrap moves a disk to it, an attach
#     after rotation works, version 1 disks still attach;
#   - the default key can be neither disabled nor destroyed (21);
#   - a revoked disk detaches; destroy then works; destroy --force of a key
#     an attached keep-mode disk uses, which keeps serving.
. /tests/attach/common.sh
check revocation-setup setup_disks || exit 1
detach_all

ADMIN=key-admin
REV=hsm:rev-key
KEEP=hsm:keep-key
# The policy: the standard one, and $ADMIN is kms.admin on both test keys;
# $SA may use them.
{
	standard_policy
	for _k in "$REV" "$KEEP"; do
		policy_binding "userAccount:$ADMIN" kms.admin "key:$_k"
		policy_binding "serviceAccount:$SA" kms.keys.encrypterDecrypter "key:$_k"
		policy_binding "userAccount:$USER_ID" kms.viewer "key:$_k"
	done
} | install_policy

# The agent again, with the revocation settings.
agent_stop
write_config "$CFG" "$MODULE" diskcrypt
printf '\n[revocation]\ninterval = 1\nrevoke = ["%s"]\n' "$REV" >>"$CFG"
check rev-agent agent_start

# --- key create, list, access ------------------------------------------------
expect_exit key-create-denied 18 "userAccount:$USER_ID lacks kms.keys.create on key:$REV" \
	key create "$REV" --user "$USER_ID"
check key-create dc key create "$REV" --user "$ADMIN"
check key-create-says grep -q "Created key $REV (pkcs11)" "$DC_OUT"
check key-create-keep dc key create "$KEEP" --user "$ADMIN"
expect_exit key-create-again 16 "key 'rev-key' exists" key create "$REV" --user "$ADMIN"
check key-list dc --json key list hsm --user "$ADMIN"
check key-list-has-rev grep -q '"id": "rev-key"' "$DC_OUT"
check key-list-hides-unbound sh -c "! grep -q '\"id\": \"$KEY2_ID\"' '$DC_OUT'"
check key-audit-create audit_has '"event":"key-create","result":"ok"' "\"user\":\"$ADMIN\"" '"id":"rev-key"'

# --- the default key is protected --------------------------------------------
{
	standard_policy
	for _k in "$REV" "$KEEP" "$KEY"; do
		policy_binding "userAccount:$ADMIN" kms.admin "key:$_k"
	done
	for _k in "$REV" "$KEEP"; do
		policy_binding "serviceAccount:$SA" kms.keys.encrypterDecrypter "key:$_k"
		policy_binding "userAccount:$USER_ID" kms.viewer "key:$_k"
	done
} | install_policy
expect_exit default-key-disable 21 "default key" key disable "$KEY" --user "$ADMIN"
expect_exit default-key-destroy 21 "default key" key destroy "$KEY" --user "$ADMIN"

# --- disks under the two keys ------------------------------------------------
REVDEV=$(loop_file /run/rev.img 16)
KEEPDEV=$(loop_file /run/keep.img 16)
check rev-format format_disk "$REVDEV" disk-r network-ssd --key "$REV"
check keep-format format_disk "$KEEPDEV" disk-k network-ssd --key "$KEEP"
check rev-attach dc attach "$REVDEV" --disk-id disk-r --type network-ssd --key "$REV" --service-account "$SA"
check keep-attach dc attach "$KEEPDEV" --disk-id disk-k --type network-ssd --key "$KEEP" --service-account "$SA"
head -c 1048576 /dev/urandom >/tmp/rev-data
check rev-write dd if=/tmp/rev-data of=/dev/mapper/diskcrypt-disk-r bs=64k oflag=direct conv=notrunc
check keep-write dd if=/tmp/rev-data of=/dev/mapper/diskcrypt-disk-k bs=64k oflag=direct conv=notrunc

# revoked ID: its mapping is suspended and its key wiped.
revoked() { dmsetup info "diskcrypt-$1" | grep -q SUSPENDED && dmsetup status "diskcrypt-$1" | grep -q 'key:wiped'; }
# live ID: not suspended, key valid.
live() { ! dmsetup info "diskcrypt-$1" | grep -q SUSPENDED && dmsetup status "diskcrypt-$1" | grep -q 'key:valid'; }
# reads_back ID: the first MiB reads back as written.
reads_back() {
	dd if="/dev/mapper/diskcrypt-$1" of=/tmp/rev-back bs=64k count=16 iflag=direct 2>/dev/null &&
		cmp -s /tmp/rev-back /tmp/rev-data
}

# --- revoke ------------------------------------------------------------------
mark=$(audit_lines)
t0=$(now_ms)
check rev-disable dc key disable "$REV" --user "$ADMIN"
check rev-disable-says grep -q "Disabled key $REV" "$DC_OUT"
check keep-disable dc key disable "$KEEP" --user "$ADMIN"
check rev-revoked-within-interval wait_until 5 revoked disk-r
info "revocation took $(($(now_ms) - t0)) ms after the disable (interval 1 s)"
check rev-audit-revoke audit_has_since "$mark" '"event":"revoke","result":"ok"' '"disk_id":"disk-r"' \
	'"id":"rev-key"' 'is disabled'
check rev-status dc status disk-r
check rev-status-why grep -q "revoked .*key $REV version 1 is disabled" "$DC_OUT"
check rev-status-json dc --json status disk-r
check rev-status-json-state grep -q '"state": "disabled"' "$DC_OUT"
check rev-list-wiped sh -c "diskcrypt list | grep disk-r | grep -q wiped"
# A read waits while the disk is revoked.
dd if=/dev/mapper/diskcrypt-disk-r of=/tmp/rev-wait bs=64k count=16 iflag=direct 2>/dev/null &
reader=$!
sleep 2
check rev-io-waits kill -0 "$reader"
expect_exit rev-attach-refused 10 "disabled" \
	verify "$REVDEV" --disk-id disk-r --type network-ssd --key "$REV" --service-account "$SA"
expect_exit rev-destroy-attached 15 "used by 1 disk(s) attached on this host: disk-r" key destroy "$REV" --user "$ADMIN"

# --- keep --------------------------------------------------------------------
sleep 2
check keep-not-revoked live disk-k
check keep-io reads_back disk-k
check keep-io-write dd if=/tmp/rev-data of=/dev/mapper/diskcrypt-disk-k bs=64k oflag=direct conv=notrunc

# --- restore -----------------------------------------------------------------
mark=$(audit_lines)
t0=$(now_ms)
check rev-enable dc key enable "$REV" --user "$ADMIN"
check rev-restored-within-interval wait_until 5 live disk-r
info "restoration took $(($(now_ms) - t0)) ms after the enable"
check rev-reader-done wait_until 5 sh -c "! kill -0 $reader 2>/dev/null"
wait "$reader"
check rev-reader-data cmp -s /tmp/rev-wait /tmp/rev-data
check rev-io-after reads_back disk-r
check rev-audit-restore audit_has_since "$mark" '"event":"restore","result":"ok"' '"disk_id":"disk-r"'
check rev-audit-unwrap audit_has_since "$mark" '"event":"unwrap","result":"ok"' '"disk_id":"disk-r"'
check rev-status-clear sh -c "diskcrypt --json status disk-r | grep -q '\"revoked\": null'"
check keep-enable dc key enable "$KEEP" --user "$ADMIN"

# --- on demand ---------------------------------------------------------------
check check-keys dc --json check-keys
check check-keys-rev grep -q '"id": "rev-key"' "$DC_OUT"
check check-keys-active grep -q '"1": "active"' "$DC_OUT"
check check-keys-no-keep sh -c "! grep -q '\"id\": \"keep-key\"' '$DC_OUT'"

# --- rotate ------------------------------------------------------------------
check rev-rotate dc --json key rotate "$REV" --user "$ADMIN"
check rev-rotate-primary [ "$(tr -d '\n ' <"$DC_OUT" | sed -n 's/.*"primary":"\([^"]*\)".*/\1/p')" = 2 ]
check rev-rewrap dc --json rewrap "$REVDEV" --disk-id disk-r --key "$REV" --service-account "$SA" --user "$USER_ID"
check rev-rewrap-version2 sh -c "tr -d '\n ' <'$DC_OUT' | grep -q '\"to\":{\"ad_version\":2,\"id\":\"rev-key\",\"provider\":\"hsm\",\"version\":\"2\"}'"
check keep-v1-verify dc verify "$KEEPDEV" --disk-id disk-k --type network-ssd --key "$KEEP" --service-account "$SA"
check rev-v2-verify dc verify "$REVDEV" --disk-id disk-r --type network-ssd --key "$REV" --service-account "$SA"

# --- a revoked disk detaches; destroy ----------------------------------------
check rev-disable-2 dc key disable "$REV" --user "$ADMIN"
check rev-revoked-2 wait_until 5 revoked disk-r
check rev-detach-revoked dc detach disk-r
check rev-detached sh -c "! dmsetup info diskcrypt-disk-r >/dev/null 2>&1"
check rev-destroy dc key destroy "$REV" --user "$ADMIN"
check rev-destroy-audit audit_has '"event":"key-destroy","result":"ok"' '"id":"rev-key"'
expect_exit rev-attach-destroyed 10 "rev-key" \
	attach "$REVDEV" --disk-id disk-r --type network-ssd --key "$REV" --service-account "$SA"
check rev-not-mapped sh -c "! dmsetup info diskcrypt-disk-r >/dev/null 2>&1"

# A key destroyed while a disk uses it needs --force; in keep mode the disk
# keeps serving (the kernel holds its key) until it is detached.
check keep-destroy-forced dc key destroy "$KEEP" --user "$ADMIN" --force
check keep-destroy-forced-says grep -q "disks attached on this host used it: disk-k" "$DC_OUT"
check keep-destroy-audit audit_has '"event":"key-destroy","result":"ok"' '"id":"keep-key"' 'forced while attached disks use it'
sleep 2
check keep-after-destroy-live live disk-k
check keep-after-destroy-io reads_back disk-k

# Cleanup: the standard agent and policy, loop devices gone.
dc detach disk-k
/usr/sbin/losetup -d "$REVDEV" "$KEEPDEV" 2>/dev/null
rm -f /run/rev.img /run/keep.img
standard_policy | install_policy
agent_stop
write_config "$CFG" "$MODULE" diskcrypt
check rev-agent-back agent_start
die_on_kernel_warning revocation-kernel-log
