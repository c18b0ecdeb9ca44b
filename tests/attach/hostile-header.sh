#!/bin/sh
# Hostile storage and the attach path (issue 9), in the guest:
#   - bytes that are not text in a header (subsystem, token 'created') are a
#     header error that shows them escaped, and the agent keeps serving;
#   - a process holding a mapping names itself "\377": the refused detach
#     quotes it escaped and the agent keeps serving;
#   - the header's persistent allow-discards flag does not reach the table;
#     discards only when the caller asks and the disk type allows them;
#   - a FIFO as device answers at once;
#   - an empty device left by an interrupted attach is listed as such and
#     removed (audited) by the next attach of that disk id;
#   - one unreadable header does not make 'list' fail.
. /tests/attach/common.sh
check hostile-header-setup setup_disks || exit 1
detach_all

alive() { diskcrypt status >/dev/null 2>&1; }
FF=$(printf '\377')

# err_has TEXT: the last CLI stderr holds TEXT.
err_has() { grep -qF -- "$1" "$DC_ERR"; }
# unwrap_count ID: unwrap events of disk ID in the audit file (format makes one).
unwrap_count() { grep -F '"event":"unwrap"' "$AUDIT" | grep -cF "\"disk_id\":\"$1\""; }
# no_raw_ff: the last CLI output has no raw 0xff byte (it was escaped).
no_raw_ff() { ! cat "$DC_OUT" "$DC_ERR" | grep -q "$FF"; }

# --- Bytes that are not text, written with stock cryptsetup ---------------
h1=$(loop_file "$W/h1.img" 8)
check h1-format format_disk "$h1" disk-h1 network-ssd
check h1-subsystem-ff cryptsetup config --subsystem "$FF" "$h1"
expect_exit subsystem-ff 7 "is not a diskcrypt disk (subsystem '" attach "$h1" --disk-id disk-h1 --type network-ssd --key "$KEY" --service-account "$SA"
check subsystem-ff-escaped err_has 'xff'
check subsystem-ff-no-raw-byte no_raw_ff
check alive-after-subsystem alive
check subsystem-nothing-mapped sh -c '! test -e /dev/mapper/diskcrypt-disk-h1'

h2=$(loop_file "$W/h2.img" 8)
check h2-format format_disk "$h2" disk-h2 network-ssd
cryptsetup token export --token-id 0 "$h2" |
	sed "s/\"created\":\"[^\"]*\"/\"created\":\"$FF\"/" >"$W/h2-token.json"
check h2-token-edited grep -q "$FF" "$W/h2-token.json"
# The token plugin installed in this guest validates diskcrypt tokens and
# refuses this one at import; an attacker's cryptsetup has no plugin.
expect_fail h2-token-plugin-refuses cryptsetup token import --token-id 0 --token-replace \
	--json-file "$W/h2-token.json" "$h2"
check h2-token-import cryptsetup token import --disable-external-tokens --token-id 0 --token-replace \
	--json-file "$W/h2-token.json" "$h2"
unwraps_h2=$(unwrap_count disk-h2)
expect_exit token-created-ff 7 "field 'created'" attach "$h2" --disk-id disk-h2 --type network-ssd --key "$KEY" --service-account "$SA"
check token-created-ff-escaped err_has 'xff'
check token-created-no-raw-byte no_raw_ff
check alive-after-token alive
check token-no-unwrap test "$(unwrap_count disk-h2)" = "$unwraps_h2"

# --- A FIFO as the device: an answer at once, not a hung thread -----------
mkfifo "$W/fifo"
t0=$(now_ms)
expect_exit fifo-device 5 "is not a block device (it is a FIFO)" attach "$W/fifo" --disk-id disk-q --type network-ssd --key "$KEY" --service-account "$SA"
check fifo-fast test $(($(now_ms) - t0)) -lt 5000
expect_exit fifo-verify 5 "neither a block device nor a regular file (it is a FIFO)" verify "$W/fifo" --disk-id disk-q --type network-ssd --key "$KEY" --service-account "$SA"
check alive-after-fifo alive

# --- Discards: the caller's and the disk type's decision, never the header's
# disk-b (network-ssd-io-m3) gets the persistent allow-discards flag through
# a stock cryptsetup activation.
secret_of /dev/vdb disk-b >"$W/b.secret"
check discards-persistent-flag cryptsetup open --persistent --allow-discards --key-file "$W/b.secret" /dev/vdb hx-b
cryptsetup close hx-b
rm -f "$W/b.secret"
check discards-flag-in-header sh -c 'cryptsetup luksDump /dev/vdb | grep -q allow-discards'
check discards-attach attach_ok disk-b /dev/vdb
check discards-not-from-header sh -c '! dmsetup table diskcrypt-disk-b | grep -q allow_discards'
check discards-detach dc detach disk-b
check discards-on-request dc attach /dev/vdb --disk-id disk-b --type network-ssd-io-m3 --key "$KEY" --service-account "$SA" --allow-discards
check discards-in-table sh -c 'dmsetup table diskcrypt-disk-b | grep -q allow_discards'
check discards-detach-2 dc detach disk-b
h3=$(loop_file "$W/h3.img" 8)
check h3-format format_disk "$h3" disk-h3 network-hdd
expect_exit discards-hdd-refused 2 "does not allow discards" attach "$h3" --disk-id disk-h3 --type network-hdd --key "$KEY" --service-account "$SA" --allow-discards
check discards-hdd-nothing-mapped sh -c '! test -e /dev/mapper/diskcrypt-disk-h3'

# --- A holder that names itself "\377" ---------------------------------------
check comm-attach attach_ok disk-a /dev/vda
# The shell keeps the mapping open on fd 3 and renames itself (no exec).
# (printf is a builtin of the guest's shell: /proc/self is the shell itself.)
# Its sleeps do not inherit the descriptor.
sh -c 'exec 3</dev/mapper/diskcrypt-disk-a; printf "\377" >/proc/self/comm; while :; do sleep 1 3<&-; done' &
holder=$!
sleep 0.5
check comm-renamed grep -q "$FF" "/proc/$holder/comm"
dc detach disk-a
rc=$?
check comm-detach-refused test "$rc" -ne 0
check comm-detach-escaped err_has "open by pid $holder (\\"
check comm-no-raw-byte no_raw_ff
check alive-after-comm alive
check comm-list-ok dc --json list
kill "$holder" 2>/dev/null
wait "$holder" 2>/dev/null
check comm-detach wait_until 5 dc detach disk-a

# --- One odd header does not fail 'list' -------------------------------------
h4=$(loop_file "$W/h4.img" 8)
check h4-format format_disk "$h4" disk-h4 network-ssd
check h4-attach attach_ok disk-h4 "$h4"
check h4-subsystem-ff cryptsetup config --subsystem "$FF" "$h4"
check odd-header-list dc --json list
check odd-header-list-has-disk grep -q '"disk_id": *"disk-h4"' "$DC_OUT"
check odd-header-list-error grep -q '"header_error": *"device .*subsystem' "$DC_OUT"
check odd-header-list-no-raw-byte no_raw_ff
check odd-header-list-text dc list
check h4-subsystem-back cryptsetup config --subsystem diskcrypt "$h4"
check h4-detach dc detach disk-h4

# --- An empty device left by an interrupted attach ---------------------------
h5=$(loop_file "$W/h5.img" 8)
check h5-format format_disk "$h5" disk-z network-ssd
check empty-create dmsetup create diskcrypt-disk-z --uuid DISKCRYPT-disk-z --notable
check empty-listed dc --json list
check empty-listed-state grep -q '"state": *"empty: left by an interrupted attach"' "$DC_OUT"
check empty-listed-target grep -q '"target": *"none"' "$DC_OUT"
check empty-attach attach_ok disk-z "$h5"
check empty-attached mapped disk-z
check empty-table sh -c 'dmsetup table diskcrypt-disk-z | grep -q " diskcrypt "'
check empty-audited audit_has '"event":"remove-empty"' '"result":"ok"' '"disk_id":"disk-z"'
check empty-detach dc detach disk-z

detach_all
for l in "$h1" "$h2" "$h3" "$h4" "$h5"; do /usr/sbin/losetup --detach "$l" 2>/dev/null; done
check alive-at-end alive
