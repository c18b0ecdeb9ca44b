#!/bin/sh
# The access policy, in the guest, with a second service account that holds
# nothing:
#   - its attach (and verify) is refused with exit 18 before the device is
#     opened or the KMS asked: no mapping, no kernel key, no unwrap audited;
#   - a grant (the policy file replaced) lets the same attach through without
#     restarting the agent; a revocation refuses it again;
#   - a broken policy is refused (audited with its line) and the last good
#     one stays in force; SIGHUP reloads the file, status shows its revision;
#   - a header wrapped under another key, or binding another disk type, than
#     the caller names is refused with exit 11 before the KMS is asked;
#   - format for a user without iam.serviceAccounts.use is refused and leaves
#     the device untouched.
# It ends with the standard policy back in force.
. /tests/attach/common.sh
check access-setup setup_disks || exit 1
detach_all

OTHER=sa-other
# not_mapped ID: no device-mapper device of disk ID, under any test.
not_mapped() { ! mapped "$1" && ! dmsetup info "diskcrypt-$1" >/dev/null 2>&1; }
# no_kernel_key: no diskcrypt key left in the kernel's keyrings.
no_kernel_key() { ! grep -q 'diskcrypt:' /proc/keys; }
# unwraps: unwrap events in the audit file so far.
unwraps() { grep -cF '"event":"unwrap"' "$AUDIT"; }
# revision_of FILE: the policy revision of FILE's bytes.
revision_of() { echo "sha256:$(sha256sum "$1" | cut -d' ' -f1)"; }
# standard: the standard policy in place of whatever is there.
standard() { standard_policy | install_policy; }
# in_force REVISION: status answers (in $DC_OUT) with REVISION in force.
in_force() { dc --json status && [ "$(json_field revision)" = "$1" ]; }

check access-standard-policy standard
check access-status dc --json status
pid0=$(json_field pid)
check access-agent-pid [ -n "$pid0" ]
check access-status-policy-source grep -qF "\"source\": \"file $POLICY\"" "$DC_OUT"

# --- a. No binding: refused before anything is opened or asked --------------
mark=$(audit_lines)
unwraps0=$(unwraps)
expect_exit deny-attach 18 "serviceAccount:$OTHER lacks kms.keys.decrypt on key:$KEY" \
	attach /dev/vda --disk-id disk-a --type network-ssd --key "$KEY" --service-account "$OTHER"
check deny-attach-names-revision grep -qF "(access policy revision sha256:" "$DC_ERR"
check deny-no-mapping not_mapped disk-a
check deny-no-kernel-key no_kernel_key
check deny-audit-access audit_has_since "$mark" '"event":"access","result":"refused"' '"reason":"access-denied"' \
	"\"service_account\":\"$OTHER\"" '"disk_id":"disk-a"' '"policy_revision":"sha256:'
check deny-audit-attach audit_has_since "$mark" '"event":"attach","result":"refused"' '"reason":"access-denied"' \
	"\"service_account\":\"$OTHER\"" '"policy_revision":"sha256:'
expect_fail deny-no-unwrap audit_has_since "$mark" '"event":"unwrap"' "\"service_account\":\"$OTHER\""
check deny-no-unwrap-at-all [ "$(unwraps)" = "$unwraps0" ]
expect_exit deny-verify 18 "serviceAccount:$OTHER lacks kms.keys.decrypt on key:$KEY" \
	verify /dev/vda --disk-id disk-a --type network-ssd --key "$KEY" --service-account "$OTHER"

# --- b. Grant: the file replaced, the agent reads it at its next decision ---
mark=$(audit_lines)
{
	standard_policy
	policy_binding "serviceAccount:$OTHER" kms.keys.decrypter "key:$KEY"
} | install_policy
check grant-attach dc attach /dev/vda --disk-id disk-a --type network-ssd --key "$KEY" --service-account "$OTHER"
check grant-mapped mapped disk-a
check grant-audit-policy-loaded audit_has_since "$mark" '"event":"policy","result":"ok"' "access policy $POLICY loaded"
check grant-audit-unwrap audit_has_since "$mark" '"event":"unwrap","result":"ok"' "\"service_account\":\"$OTHER\""
check grant-status-revision in_force "$(revision_of "$POLICY")"
check grant-same-agent [ "$(json_field pid)" = "$pid0" ]
check grant-detach dc detach disk-a

# --- c. Revoke ---------------------------------------------------------------
check revoke-policy standard
good=$(revision_of "$POLICY")
expect_exit revoke-attach 18 "serviceAccount:$OTHER lacks kms.keys.decrypt on key:$KEY" \
	attach /dev/vda --disk-id disk-a --type network-ssd --key "$KEY" --service-account "$OTHER"
check revoke-no-mapping not_mapped disk-a

# --- d. A broken policy is refused; the last good one stays; SIGHUP ----------
mark=$(audit_lines)
{
	standard_policy
	policy_binding "serviceAccount:$OTHER" kms.keys.nosuch "key:$KEY"
} | install_policy
bad_line=$(grep -n '^role = "kms.keys.nosuch"' "$POLICY" | cut -d: -f1)
check broken-attach-sa attach_ok disk-a /dev/vda
check broken-mapped mapped disk-a
check broken-audit-refused audit_has_since "$mark" '"event":"policy","result":"refused"' \
	"$POLICY:$bad_line:" "unknown role 'kms.keys.nosuch'"
check broken-last-good-stays in_force "$good"
expect_exit broken-grants-nothing 18 "serviceAccount:$OTHER lacks kms.keys.decrypt" \
	verify /dev/vda --disk-id disk-a --type network-ssd --key "$KEY" --service-account "$OTHER"
check broken-detach dc detach disk-a

# A good file again (not byte-equal to the last good one: a new revision),
# and no request before the SIGHUP: the reload is the signal's.
{
	standard_policy
	printf '# restored after a broken edit\n'
} | install_policy
mark=$(audit_lines)
check sighup-sent kill -HUP "$pid0"
check sighup-audit-loaded wait_until 10 audit_has_since "$mark" '"event":"policy","result":"ok"'
check sighup-logged grep -qF "SIGHUP: reloading the access policy" "$AGENT_LOG"
check sighup-status-revision in_force "$(revision_of "$POLICY")"
check sighup-same-agent [ "$(json_field pid)" = "$pid0" ]

# --- e. A header under another key: refused before the KMS is asked ---------
# (The standard policy lets $SA decrypt with hsm:$KEY2_ID: the refusal is the
# header's, not the policy's.)
mark=$(audit_lines)
unwraps0=$(unwraps)
expect_exit key-mismatch 11 "is wrapped under key $KEY, not under the disk's key hsm:$KEY2_ID; the KMS was not asked" \
	attach /dev/vda --disk-id disk-a --type network-ssd --key "hsm:$KEY2_ID" --service-account "$SA"
check key-mismatch-access-ok audit_has_since "$mark" '"event":"access","result":"ok"' \
	"serviceAccount:$SA holds kms.keys.decrypt on key:hsm:$KEY2_ID"
check key-mismatch-audit-binding audit_has_since "$mark" '"event":"attach","result":"refused"' '"reason":"binding"'
check key-mismatch-no-unwrap [ "$(unwraps)" = "$unwraps0" ]
check key-mismatch-no-mapping not_mapped disk-a

# --- f. A header that binds another disk type --------------------------------
unwraps0=$(unwraps)
expect_exit type-mismatch 11 "binds disk type network-ssd, not network-hdd; the KMS was not asked" \
	attach /dev/vda --disk-id disk-a --type network-hdd --key "$KEY" --service-account "$SA"
check type-mismatch-no-unwrap [ "$(unwraps)" = "$unwraps0" ]
check type-mismatch-no-mapping not_mapped disk-a
expect_exit verify-type-mismatch 11 "binds disk type network-ssd-io-m3, not network-ssd" \
	verify /dev/vdb --disk-id disk-b --type network-ssd --key "$KEY" --service-account "$SA"

# --- g. format for a user without the role: the device untouched -------------
scratch=$(loop_file "$W/access-scratch.img" 8)
# all_zero DEVICE: the first MiB of DEVICE holds only zero bytes.
all_zero() { [ "$(dd if="$1" bs=1M count=1 2>/dev/null | tr -d '\000' | wc -c)" -eq 0 ]; }
check format-scratch-zero all_zero "$scratch"
mark=$(audit_lines)
expect_exit format-deny-user 18 "userAccount:nobody-user lacks iam.serviceAccounts.use on serviceAccount:$SA" \
	format "$scratch" --disk-id disk-s --type network-ssd --service-account "$SA" --user nobody-user
check format-deny-user-no-key-get grep -qF "userAccount:nobody-user lacks kms.keys.get on key:$KEY" "$DC_ERR"
expect_fail format-deny-not-luks cryptsetup isLuks "$scratch"
check format-deny-untouched all_zero "$scratch"
check format-deny-audit audit_has_since "$mark" '"event":"access","result":"refused"' '"reason":"access-denied"' \
	'"user":"nobody-user"' '"disk_id":"disk-s"'
expect_fail format-deny-no-wrap audit_has_since "$mark" '"event":"wrap"'
expect_exit format-deny-sa 18 "serviceAccount:$OTHER lacks kms.keys.encrypt on key:$KEY" \
	format "$scratch" --disk-id disk-s --type network-ssd --service-account "$OTHER" --user "$USER_ID"
expect_fail format-deny-sa-not-luks cryptsetup isLuks "$scratch"
/usr/sbin/losetup --detach "$scratch" 2>/dev/null
rm -f "$W/access-scratch.img"

# --- The standard policy again, for whatever runs next -----------------------
check access-standard-again standard
check access-standard-in-force in_force "$(revision_of "$POLICY")"
check access-same-agent-at-end [ "$(json_field pid)" = "$pid0" ]
check access-attach-after attach_ok disk-a /dev/vda
check access-detach-after dc detach disk-a
die_on_kernel_warning access-kernel-log
