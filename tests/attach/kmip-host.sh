#!/usr/bin/env bash
# The host side of the attach suite's kmip test: a PyKMIP server on
# 127.0.0.1 that the guest reaches through QEMU's user-mode network
# (tests/attach/run.sh), and the control port the guest asks for a change
# on the server mid-run.
#
# Usage: tests/attach/kmip-host.sh start DIR
#          the test PKI (tests/support/kmip-pki.sh) in DIR/pki, PyKMIP
#          listening on a free port of 127.0.0.1 (config, log, database in
#          DIR), the test's keys created and activated; writes DIR/env (the
#          port and the server's process group, for stop and control) and
#          DIR/keys ("NAME UID" lines, shipped to the guest); prints the port
#        tests/attach/kmip-host.sh control DIR
#          one request line on stdin, one answer line on stdout: QEMU runs it
#          for each guest connection to the control port (guestfwd cmd:)
#            revoke NAME   revoke the key NAME (reason CESSATION_OF_OPERATION:
#                          the key becomes Deactivated)  -> "ok revoke NAME UID"
#            stop          stop the server (SIGINT, wait)  -> "ok stop"
#            kill          kill the server (SIGKILL: it does not wait for
#                          open sessions as its stop does)  -> "ok kill"
#            start         start it again on the same port with the same
#                          database (keys and states kept)  -> "ok start"
#          anything else or a failure                      -> "error ..."
#        tests/attach/kmip-host.sh stop DIR
#          stops the server (SIGINT; after 30 s SIGTERM, then SIGKILL to what
#          is left of it); fails if a process of it is left
# Keys made by start: disk-key (active), revoked-key (active until the
# guest asks for its revocation).
# Exit status: 0 done, 1 failed, 2 bad arguments.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PYTHON=/usr/bin/python3 # Debian's: a pyenv python3 earlier in PATH cannot import kmip
KEYS=(disk-key revoked-key)

log() { echo "kmip-host.sh: $*" >&2; }

# admin DIR ARGS...: tests/support/pykmip_admin.py as the test client.
admin() {
	local dir=$1
	shift
	"$PYTHON" "$ROOT/tests/support/pykmip_admin.py" --host 127.0.0.1 --port "$PORT" \
		--cert "$dir/pki/client.pem" --key "$dir/pki/client.key" --ca "$dir/pki/ca.pem" "$@"
}

free_port() {
	"$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# members DIR: the processes left of the server: in its process group and
# running with its configuration (not a zombie: a zombie has no command
# line; not another process that got a recycled number).
members() {
	# shellcheck source=/dev/null
	. "$1/env"
	[[ -n "${PGID:-}" ]] || return 0
	pgrep -g "$PGID" -f -- "-f $1/server.conf" || true
}

# wait_gone DIR SECONDS
wait_gone() {
	local n=$(($2 * 10))
	while [[ -n "$(members "$1")" ]]; do
		((n-- > 0)) || return 1
		sleep 0.1
	done
}

# signal SIGNAL DIR [leader]: to the server (its group leader), or to every
# process left of it.
signal() {
	local p
	# shellcheck source=/dev/null
	. "$2/env"
	for p in $(members "$2"); do
		if [[ "${3:-}" != leader || "$p" == "$PGID" ]]; then
			kill "-$1" "$p" 2>/dev/null || true
		fi
	done
}

# stop_server DIR: SIGINT, then SIGTERM and SIGKILL to what is left.
# PyKMIP's stop() joins each open session for up to 10 s, so a client that
# keeps a connection open delays it.
stop_server() {
	[[ -f "$1/env" ]] || return 0
	signal INT "$1" leader
	wait_gone "$1" 30 && return 0
	log "pykmip-server did not stop on SIGINT within 30 s: SIGTERM, SIGKILL"
	signal TERM "$1"
	wait_gone "$1" 5 && return 0
	signal KILL "$1"
	wait_gone "$1" 5 && return 0
	log "processes of pykmip-server are left: $(members "$1" | tr '\n' ' ')"
	return 1
}

# launch DIR: pykmip-server on DIR/server.conf (PORT set), until it serves
# (status 0), or it died or 30 s passed (1). Its log is appended to.
launch() {
	local dir=$1 n=300 before
	before=$(grep -c 'Starting connection service' "$dir/server.log" || true)
	# Its own process group (setsid: this shell's child is no group
	# leader, so setsid execs in place and $! is the server).
	setsid "$PYTHON" /usr/bin/pykmip-server -f "$dir/server.conf" -l "$dir/server.log" \
		</dev/null >>"$dir/server.out" 2>&1 &
	printf 'PORT=%s\nPGID=%s\n' "$PORT" "$!" >"$dir/env"
	while (($(grep -c 'Starting connection service' "$dir/server.log" || true) <= before)); do
		if [[ -z "$(members "$dir")" ]] || ((n-- <= 0)); then
			return 1
		fi
		sleep 0.1
	done
}

start() {
	local dir=$1 attempt uid name
	rm -rf "$dir"
	mkdir -p "$dir/policies"
	bash "$ROOT/tests/support/kmip-pki.sh" "$dir/pki"
	for attempt in 1 2 3; do
		PORT=$(free_port)
		cat >"$dir/server.conf" <<EOF
[server]
hostname=127.0.0.1
port=$PORT
certificate_path=$dir/pki/server.pem
key_path=$dir/pki/server.key
ca_path=$dir/pki/ca.pem
auth_suite=TLS1.2
enable_tls_client_auth=True
policy_path=$dir/policies
database_path=$dir/pykmip.db
logging_level=INFO
EOF
		: >"$dir/server.log"
		launch "$dir" && break
		stop_server "$dir" || true
		if ((attempt == 3)) || ! grep -q 'Server failed to bind' "$dir/server.log"; then
			log "pykmip-server did not start:"
			tail -n 20 "$dir/server.log" "$dir/server.out" >&2 || true
			return 1
		fi
	done
	: >"$dir/keys"
	for name in "${KEYS[@]}"; do
		uid=$(admin "$dir" create "$name")
		admin "$dir" activate "$uid"
		echo "$name $uid" >>"$dir/keys"
	done
	echo "$PORT"
}

control() {
	local dir=$1 line uid
	# shellcheck source=/dev/null
	. "$dir/env"
	IFS= read -r line || true
	echo "$(date +%T.%N) request: $line" >>"$dir/control.log"
	set -f
	# shellcheck disable=SC2086 # words of the request
	set -- $line
	set +f
	case "${1:-} ${#}" in
	"revoke 2")
		uid=$(awk -v n="$2" '$1 == n { print $2 }' "$dir/keys")
		if [[ -z "$uid" ]]; then
			echo "error no key $2"
		elif err=$(admin "$dir" revoke "$uid" deactivated 2>&1); then
			echo "ok revoke $2 $uid"
		else
			echo "error $err"
		fi
		;;
	"start 1")
		if launch "$dir" 2>>"$dir/control.log"; then
			echo "ok start"
		else
			echo "error pykmip-server did not start again"
		fi
		;;
	"kill 1")
		signal KILL "$dir"
		if wait_gone "$dir" 10; then
			echo "ok kill"
		else
			echo "error pykmip-server processes are left"
		fi
		;;
	"stop 1")
		if stop_server "$dir" 2>>"$dir/control.log"; then
			echo "ok stop"
		else
			echo "error pykmip-server did not stop"
		fi
		;;
	*) echo "error unknown request" ;;
	esac | tee -a "$dir/control.log"
}

# DIR as an absolute path: members() finds the server by its command line.
[[ $# != 2 ]] || set -- "$1" "$(realpath -m -- "$2")"
case "${1:-} $#" in
"start 2") start "$2" ;;
"control 2") control "$2" ;;
"stop 2") stop_server "$2" ;;
*)
	awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" >&2
	exit 2
	;;
esac
