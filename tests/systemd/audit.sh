#!/bin/sh
# The key-use trail read back from the journal: `diskcrypt audit` of the
# packaged agent keeping its audit events only in the journal ([audit]
# journal = "always", no file). Only the agent's own entries count
# (SYSLOG_IDENTIFIER=diskcrypt-agent sent by root): an unprivileged process
# that logs the agent's identifier and DISKCRYPT_* fields is not shown, and
# the agent's log lines are neither events nor "skipped".
# shellcheck source-path=SCRIPTDIR
. ./common.sh
T=audit

setup_host || fail "$T/setup" "token, key or configuration"
# The journal only, for this test; the configuration is restored at the end.
cp "$CFG" "$W/agent.toml.saved"
sed -e '/^file = /d' -e 's/^\[audit\]$/[audit]\njournal = "always"/' "$W/agent.toml.saved" >"$CFG"
check "$T/config-journal-only" sh -c "grep -q '^journal = \"always\"' '$CFG' && ! grep -q '^file = ' '$CFG'"
systemctl restart diskcrypt-agent.service
check "$T/agent-restarted" systemctl is-active --quiet diskcrypt-agent.service
start=$(date +%s)
sleep 1 # --since @$start: whole seconds

# Events to read back: an attach and a detach, and an attach refused (a
# service account without the role).
args="--disk-id disk-sd-1 --type network-ssd --key $KEY"
# shellcheck disable=SC2086 # $args is a list of words
check "$T/attach" diskcrypt attach /dev/vda $args --service-account "$SA"
check "$T/detach" diskcrypt detach disk-sd-1
# shellcheck disable=SC2086
diskcrypt attach /dev/vda $args --service-account sa-without-role >"$OUT/refused" 2>&1
rc=$?
check "$T/attach-refused" sh -c "[ $rc -ne 0 ] && [ ! -e /dev/mapper/diskcrypt-disk-sd-1 ]"

# A forged entry: the agent's identifier and an attach of disk-sd-1, logged
# by nobody (uid 65534) through journald's native protocol.
setpriv --reuid=65534 --regid=65534 --clear-groups logger --journald <<EOF
SYSLOG_IDENTIFIER=diskcrypt-agent
MESSAGE=attach ok: forged by an unprivileged process
PRIORITY=6
DISKCRYPT_EVENT=attach
DISKCRYPT_RESULT=ok
DISKCRYPT_OP=attach
DISKCRYPT_DISK_ID=disk-sd-1
DISKCRYPT_USER=forger
DISKCRYPT_CALLER_UID=0
DISKCRYPT_CALLER_PID=1
EOF
forged_in_journal() { journalctl --no-pager -o cat _UID=65534 DISKCRYPT_USER=forger | grep -q forged; }
check "$T/forged-entry-in-journal" wait_for 100 forged_in_journal
# The agent's own log lines are in the journal under its identifier too
# (entries without DISKCRYPT_EVENT), so "skipped": 0 below means something.
log_lines() {
	journalctl --no-pager -o export SYSLOG_IDENTIFIER=diskcrypt-agent _UID=0 |
		awk 'BEGIN { RS = "" } !/(^|\n)DISKCRYPT_EVENT=/ { n++ } END { exit !(n > 0) }'
}
check "$T/agent-log-lines-in-journal" log_lines

# events FILE: the events of `diskcrypt --json audit`, one per line.
events() {
	awk '/^    \{$/ { e = ""; on = 1; next }
	     /^    \},?$/ { if (on) print e; on = 0; next }
	     on { sub(/^ +/, ""); e = e $0 }' "$1"
}
if diskcrypt --json audit --disk disk-sd-1 --since "@$start" >"$OUT/audit.json" 2>"$OUT/audit.err"; then
	pass "$T/json-exit-0"
else
	fail "$T/json-exit-0" "$(head -c 400 "$OUT/audit.err")"
fi
events "$OUT/audit.json" >"$OUT/audit.events"
info "audit events of disk-sd-1 since @$start (from the journal):"
cut -c1-240 "$OUT/audit.events" | while IFS= read -r line; do info "  $line"; done
check "$T/source-journal" grep -qE '^  "source": "journal",?$' "$OUT/audit.json"
check "$T/log-lines-not-skipped" grep -qE '^  "skipped": 0,?$' "$OUT/audit.json"
has() { grep "\"event\": \"$1\"" "$OUT/audit.events" | grep "\"result\": \"$2\"" | grep -q "$3"; }
check "$T/attach-ok" has attach ok "\"service_account\": \"$SA\""
check "$T/unwrap-ok" has unwrap ok '"disk_id": "disk-sd-1"'
check "$T/detach-ok" has detach ok '"disk_id": "disk-sd-1"'
check "$T/attach-refused-audited" has attach refused '"service_account": "sa-without-role"'
check "$T/caller-from-journal" has attach ok '"caller": {"pid": [0-9]*,"uid": 0}'
check "$T/forged-not-shown" sh -c "! grep -q forge '$OUT/audit.json'"
check "$T/only-this-disk" sh -c "! grep -v '\"disk_id\": \"disk-sd-1\"' '$OUT/audit.events' | grep -q ."

# Text, by key; reading the trail is itself an event.
if diskcrypt audit --key "$KEY" --since "@$start" >"$OUT/audit.txt" 2>&1; then
	pass "$T/text-exit-0"
else
	fail "$T/text-exit-0" "$(head -c 400 "$OUT/audit.txt")"
fi
cut -c1-200 "$OUT/audit.txt" | while IFS= read -r line; do info "  $line"; done
check "$T/text-attach-line" grep -qE '^[0-9T:-]+Z  attach  ok  .*disk=disk-sd-1' "$OUT/audit.txt"
check "$T/text-no-forged" sh -c "! grep -q forge '$OUT/audit.txt'"
check "$T/reading-audited" sh -c \
	"diskcrypt --json audit --since '@$start' | grep -q '\"event\": \"audit\"'"
check "$T/other-disk-no-events" sh -c "diskcrypt audit --disk disk-none --since '@$start' | grep -qx 'No events in the journal match.'"
diskcrypt audit --since yesterday-ish >"$OUT/badsince" 2>&1
rc=$?
check "$T/bad-since-exit-2" sh -c "[ $rc = 2 ] && grep -q since '$OUT/badsince'"

# The configuration as it was.
cp "$W/agent.toml.saved" "$CFG"
systemctl restart diskcrypt-agent.service
check "$T/config-restored" systemctl is-active --quiet diskcrypt-agent.service
