#!/bin/sh
# The packages on a systemd host: installed by dpkg, the socket enabled, the
# agent started by its first request (socket activation) with the PIN as a
# credential, hardened (systemd-analyze security printed and held to 2.0),
# its watchdog, journal fields, restarts and crashes with a disk attached.
# shellcheck source-path=SCRIPTDIR
. ./common.sh
T=units

check "$T/package-installed" sh -c '[ "$(dpkg-query -W -f="\${Status}" diskcrypt)" = "install ok installed" ]'
check "$T/module-from-dkms" sh -c 'modinfo -F filename dm_diskcrypt | grep -q /updates/dkms/'
check "$T/socket-enabled" sh -c '[ "$(systemctl is-enabled diskcrypt-agent.socket)" = enabled ]'
check "$T/socket-listening" systemctl is-active --quiet diskcrypt-agent.socket
# Socket activation: the service does not run until a request comes.
check "$T/service-waits-for-a-request" sh -c '! systemctl is-active --quiet diskcrypt-agent.service'
check "$T/tmpfiles-log-folder" sh -c '[ "$(stat -c %a:%U /var/log/diskcrypt)" = 750:root ]'
for unit in diskcrypt-agent.service diskcrypt-agent.socket; do
	if out=$(systemd-analyze verify "/lib/systemd/system/$unit" 2>&1) && [ -z "$out" ]; then
		pass "$T/verify-$unit"
	else
		fail "$T/verify-$unit" "systemd-analyze verify: $(echo "$out" | tr '\n' ' ')"
	fi
done

# The template (an instance named MAJ:MIN is not accepted by verify's
# argument parsing: "Couldn't process aliases").
if out=$(systemd-analyze verify /lib/systemd/system/diskcrypt-attach@.service 2>&1) && [ -z "$out" ]; then
	pass "$T/verify-diskcrypt-attach@.service"
else
	fail "$T/verify-diskcrypt-attach@.service" "systemd-analyze verify: $(echo "$out" | tr '\n' ' ')"
fi

setup_host || fail "$T/setup" "token, key or configuration"
# The first request starts the agent.
if diskcrypt status >"$OUT/status" 2>&1 && systemctl is-active --quiet diskcrypt-agent.service; then
	pass "$T/started-by-first-request"
else
	fail "$T/started-by-first-request" "$(head -c 300 "$OUT/status"); $(journalctl -u diskcrypt-agent -n 20 --no-pager | tr '\n' ' ')"
fi
pid=$(agent_pid)

# Hardening: the exposure systemd computes, and what the process really has.
exposure=$(systemd-analyze security --no-pager diskcrypt-agent.service 2>/dev/null |
	sed -n 's/.*Overall exposure level for diskcrypt-agent.service: \([0-9.]*\).*/\1/p')
info "systemd-analyze security diskcrypt-agent.service: exposure $exposure"
systemd-analyze security --no-pager diskcrypt-agent.service 2>/dev/null | grep -E '^✗' | sed 's/^/    /' | head -n 40
check "$T/exposure-at-most-2.0" awk -v e="$exposure" 'BEGIN { exit !(e != "" && e <= 2.0) }'
status=/proc/$pid/status
check "$T/no-new-privileges" grep -qE '^NoNewPrivs:[[:space:]]+1$' "$status"
check "$T/seccomp-filter" grep -qE '^Seccomp:[[:space:]]+2$' "$status"
# CAP_IPC_LOCK (14) and CAP_SYS_ADMIN (21) only: 0x204000.
check "$T/capabilities" grep -qE '^CapBnd:[[:space:]]+0000000000204000$' "$status"

# A disk through the packaged agent: format, attach, write.
args="--disk-id disk-sd-1 --type network-ssd --key $KEY --service-account $SA"
# shellcheck disable=SC2086 # $args is a list of words
if diskcrypt format /dev/vda $args --user "$USER_ID" >"$OUT/format" 2>&1 &&
	diskcrypt attach /dev/vda $args >"$OUT/attach" 2>&1; then
	pass "$T/format-and-attach"
else
	fail "$T/format-and-attach" "$(cat "$OUT/format" "$OUT/attach" | head -c 400)"
fi
check "$T/module-loaded-by-unit" grep -q '^dm_diskcrypt ' /proc/modules
head -c 1048576 /dev/urandom >"$W/data"
dd if="$W/data" of=/dev/mapper/diskcrypt-disk-sd-1 bs=1M oflag=direct status=none
reads_back() { cmp -n 1048576 "$W/data" /dev/mapper/diskcrypt-disk-sd-1; }

# Audit events in the journal, with their fields.
check "$T/journal-audit-fields" sh -c \
	'journalctl --no-pager -o cat DISKCRYPT_EVENT=attach DISKCRYPT_DISK_ID=disk-sd-1 DISKCRYPT_RESULT=ok | grep -q .'

# A restart: the mapping stays and serves I/O; the new agent lists it.
systemctl restart diskcrypt-agent.service
check "$T/restart-new-process" sh -c "[ \"\$(systemctl show -P MainPID diskcrypt-agent.service)\" != $pid ]"
check "$T/restart-mapping-stays" reads_back
check "$T/restart-listed" sh -c 'diskcrypt list | grep -q disk-sd-1'

# A crash (SIGKILL): systemd restarts it (Restart=on-failure); the mapping stays.
pid=$(agent_pid)
systemctl kill -s KILL diskcrypt-agent.service
restarted() { [ "$(agent_pid)" != "$pid" ] && [ "$(agent_pid)" != 0 ] && systemctl is-active --quiet diskcrypt-agent.service; }
check "$T/crash-restarted" wait_for 100 restarted
check "$T/crash-mapping-stays" reads_back
check "$T/crash-listed" sh -c 'diskcrypt list | grep -q disk-sd-1'

# The watchdog: an agent that stops answering (SIGSTOP) is killed and
# restarted. WatchdogSec is shortened to 3 s for the test.
check "$T/watchdog-configured" sh -c '[ "$(systemctl show -P WatchdogUSec diskcrypt-agent.service)" = 30s ]'
mkdir -p /run/systemd/system/diskcrypt-agent.service.d
printf '[Service]\nWatchdogSec=3s\n' >/run/systemd/system/diskcrypt-agent.service.d/watchdog.conf
systemctl daemon-reload
systemctl restart diskcrypt-agent.service
pid=$(agent_pid)
sleep 4 # alive: it pings
check "$T/watchdog-pinged" sh -c "[ \"\$(systemctl show -P MainPID diskcrypt-agent.service)\" = $pid ]"
kill -STOP "$pid"
check "$T/watchdog-restarts-a-hung-agent" wait_for 150 restarted
check "$T/watchdog-in-journal" sh -c "journalctl --no-pager -u diskcrypt-agent.service | grep -q 'Watchdog timeout'"
rm -r /run/systemd/system/diskcrypt-agent.service.d
systemctl daemon-reload
systemctl restart diskcrypt-agent.service
check "$T/watchdog-mapping-stays" reads_back

# A stop leaves the mapping; detach through a new agent (socket activation again).
systemctl stop diskcrypt-agent.service
check "$T/stop-clean" sh -c '[ "$(systemctl show -P Result diskcrypt-agent.service)" = success ]'
check "$T/stop-mapping-stays" reads_back
check "$T/detach" diskcrypt detach disk-sd-1
check "$T/detached" sh -c '[ ! -e /dev/mapper/diskcrypt-disk-sd-1 ]'
