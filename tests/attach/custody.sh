#!/bin/sh
# No key left behind: after an attach, root's key count in /proc/key-users is
# back where it was (the logon key was invalidated and the thread keyring died
# with its thread), and the DEK -- hex, upper-case hex, base64 -- and the
# keyslot secret are in no dm table, agent log, audit line, CLI output, argv
# or environment of any process.
. /tests/attach/common.sh
check custody-setup setup_disks || exit 1
detach_all

# nkeys/nikeys qnkeys/maxkeys qnbytes/maxbytes of uid 0.
keys_of_root() { awk '$1 == "0:" { print $3, $4, $5 }' /proc/key-users; }
before=$(keys_of_root)
check custody-attach attach_ok disk-a /dev/vda
keys_back() { [ "$(keys_of_root)" = "$before" ]; }
if wait_until 10 keys_back; then
	pass key-users-back
else
	fail key-users-back "root's keys: before '$before', after '$(keys_of_root)'"
fi
info "root in /proc/key-users (nkeys/nikeys qnkeys qnbytes): before attach '$before', after '$(keys_of_root)'"
check no-diskcrypt-key-in-proc-keys sh -c "! grep -q 'logon.*diskcrypt:' /proc/keys"
check mapping-key-valid sh -c "dmsetup status diskcrypt-disk-a | grep -q key:valid"

# The secrets, from the test's own unwrap through the test HSM.
dek=$(diskcrypt-test-unwrap --config "$CFG" /dev/vda disk-a --dek)
check dek-is-64-bytes [ "${#dek}" = 128 ]
dek_upper=$(echo "$dek" | tr a-f A-F)
dek_b64=$(echo "$dek" | xxd -r -p | base64 | tr -d '\n')
secret_hex=$(secret_of /dev/vda disk-a | xxd -p | tr -d '\n')
secret_b64=$(secret_of /dev/vda disk-a | base64 | tr -d '\n')

# Everything to scan, collected first.
S=/tmp/scan
rm -rf "$S" && mkdir -p "$S"
dmsetup table >"$S/dmsetup-table"
dmsetup table --showkeys >"$S/dmsetup-table-showkeys"
dmsetup status >"$S/dmsetup-status"
cp "$AGENT_LOG" "$AUDIT" "$S/"
cp -R "$OUT" "$S/cli"
for p in /proc/[0-9]*; do
	[ "$p" = "/proc/$$" ] && continue
	cat "$p/cmdline" "$p/environ" 2>/dev/null | tr '\0' '\n'
done >"$S/argv-environ"
info "scanning $(find "$S" -type f | wc -l) files, $(cat "$S"/* "$S"/cli/* 2>/dev/null | wc -c) bytes; $(grep -c . "$S/argv-environ") argv/environ lines"
for what in "dek-hex:$dek" "dek-upper-hex:$dek_upper" "dek-base64:$dek_b64" "secret-hex:$secret_hex" "secret-base64:$secret_b64"; do
	name=${what%%:*} value=${what#*:}
	if [ -z "$value" ]; then
		fail "no-$name-anywhere" "the test could not compute it"
	elif grep -rqF -- "$value" "$S"; then
		fail "no-$name-anywhere" "found in $(grep -rlF -- "$value" "$S" | tr '\n' ' ')"
	else
		pass "no-$name-anywhere"
	fi
done
check table-names-key-by-description grep -q ':64:logon:diskcrypt:' "$S/dmsetup-table-showkeys"
check custody-detach dc detach disk-a
die_on_kernel_warning custody-kernel-log
