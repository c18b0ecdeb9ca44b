#!/bin/sh
# Break-glass recovery through stock cryptsetup, in the guest: the token
# plugin (libcryptsetup-token-diskcrypt-kms.so) asks the agent for the
# keyslot secret. Disabled (the default): `cryptsetup open --token-only`
# refused with the agent's reason, audited, nothing mapped. Enabled: it opens
# the disk with dm-crypt and reads what diskcrypt wrote through its own
# target; the agent warns and audits; a service account without
# kms.keys.decrypt refused (18); luksDump prints the token without the
# wrapped secret; with the agent stopped, a clear message.
. /tests/attach/common.sh
check recovery-agent agent_running || exit 1
detach_all
check recovery-plugin-installed [ -f /lib/x86_64-linux-gnu/cryptsetup/libcryptsetup-token-diskcrypt-kms.so ]

disk=$(loop_file "$W/recovery.img" 32) || { fail recovery-loop; exit 1; }
check recovery-format format_disk "$disk" rec-a network-ssd
check recovery-attach attach_ok rec-a "$disk"
dd if=/dev/urandom of="$W/recovery-data" bs=1M count=8 2>/dev/null
check recovery-write dd if="$W/recovery-data" of=/dev/mapper/diskcrypt-rec-a bs=1M oflag=direct 2>/dev/null
check recovery-detach dc detach rec-a

# stock_open: cryptsetup open --token-only, stderr in $W/recovery.err.
stock_open() { cryptsetup open --token-only "$disk" stock-rec 2>"$W/recovery.err"; }
not_open() { ! [ -e /dev/mapper/stock-rec ]; }

# Disabled, the default.
mark=$(audit_lines)
expect_fail recovery-disabled-refused stock_open
check recovery-disabled-says grep -qF "break-glass recovery of $disk is disabled on this host" "$W/recovery.err"
check recovery-disabled-hint grep -qF "[recovery] enabled = true" "$W/recovery.err"
check recovery-disabled-not-open not_open
check recovery-disabled-audit audit_has_since "$mark" '"event":"recover","result":"refused"' '"reason":"not-supported"'

# Enabled.
agent_stop
cp "$CFG" "$W/recovery-config.saved"
printf '\n[recovery]\nenabled = true\n' >>"$CFG"
check recovery-agent-enabled agent_start
mark=$(audit_lines)
check recovery-open stock_open
check recovery-dm-crypt sh -c "dmsetup table stock-rec | grep -q ' crypt aes-xts-plain64 '"
check recovery-same-data sh -c "dd if=/dev/mapper/stock-rec bs=1M count=8 iflag=direct 2>/dev/null |
	cmp -s - $W/recovery-data"
check recovery-close cryptsetup close stock-rec
check recovery-audit audit_has_since "$mark" '"event":"recover","result":"ok"' '"disk_id":"rec-a"' \
	'break-glass recovery: the keyslot secret of disk rec-a'
check recovery-log-warns grep -q "warning: recover done: break-glass recovery" "$AGENT_LOG"

# The disk's service account without kms.keys.decrypt on the key: refused.
{
	printf '# recovery.sh: %s may not decrypt with %s\n\n' "$SA" "$KEY"
	for _k in "$KEY2_ID" "$KEY3_ID"; do
		policy_binding "serviceAccount:$SA" kms.keys.encrypterDecrypter "key:hsm:$_k"
	done
} | install_policy
mark=$(audit_lines)
expect_fail recovery-no-role-refused stock_open
check recovery-no-role-says grep -qF "serviceAccount:$SA lacks kms.keys.decrypt on key:$KEY" "$W/recovery.err"
check recovery-no-role-not-open not_open
check recovery-no-role-audit audit_has_since "$mark" '"event":"recover","result":"refused"' '"reason":"access-denied"'
standard() { standard_policy | install_policy; }
check recovery-policy-back standard

# luksDump: the token's fields through the plugin, not the wrapped secret.
check recovery-dump sh -c "cryptsetup luksDump $disk >$W/recovery.dump"
check recovery-dump-disk grep -q "disk id: *rec-a" "$W/recovery.dump"
check recovery-dump-key grep -q "KMS key: *$KEY version" "$W/recovery.dump"
wrapped=$(cryptsetup token export --token-id 0 "$disk" | sed -n 's/.*"ciphertext": *"\([^"]*\)".*/\1/p')
check recovery-dump-has-blob [ -n "$wrapped" ]
check recovery-dump-no-blob sh -c "! grep -qF '$wrapped' $W/recovery.dump"

# The agent stopped: a clear message, nothing opened.
agent_stop
expect_fail recovery-agent-down-refused stock_open
check recovery-agent-down-says grep -qF "cannot reach diskcrypt-agent at $SOCK" "$W/recovery.err"
check recovery-agent-down-not-open not_open

# As found: recovery disabled, the agent running.
cp "$W/recovery-config.saved" "$CFG"
check recovery-agent-back agent_start
losetup -d "$disk" 2>/dev/null
rm -f "$W"/recovery*
exit 0
