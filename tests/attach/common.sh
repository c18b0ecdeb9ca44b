# shellcheck shell=sh
# Guest-side helpers of the attach suite (sourced after the harness's lib.sh).
# Everything the tests make lives on tmpfs under $W: the SoftHSM2 token, its
# PIN, the agent's configuration and access policy, log and audit file,
# every CLI output.
# Disks: /dev/vda and /dev/vdb (64 MiB each) carry disk-a (network-ssd) and
# disk-b (network-ssd-io-m3), both under the key hsm:$KEY_ID.
# The access policy ($POLICY, standard_policy): $SA may wrap and unwrap with
# hsm:$KEY_ID, hsm:$KEY2_ID and hsm:$KEY3_ID; the provisioning user $USER_ID acts as $SA
# and sees both keys. Nobody else holds anything.

# shellcheck source=../vm/guest/lib.sh
. "${DCTEST_LIB:-/lib/dctest/lib.sh}"

W=/run/attach
HSM=$W/hsm
CFG=$W/agent.toml
SOCK=/run/diskcrypt/agent.sock
AUDIT=$W/audit.jsonl
AGENT_LOG=$W/agent.log
OUT=$W/outputs
MODULE=/usr/lib/softhsm/libsofthsm2.so
PIN=4711-user-pin
KEY_ID=disk-key-01
KEY=hsm:$KEY_ID
# The second key: errors.sh formats a disk under it (then deletes it from the
# token); access.sh names it as a wrong --key.
KEY2_ID=disk-key-02
# The third key: copy.sh rewraps a disk to it.
KEY3_ID=disk-key-03
SA=sa-vm-1234
# The user who formats disks (format --user); not $USER, which the shell owns.
USER_ID=provisioner
POLICY=$W/policy.toml
export SOFTHSM2_CONF=$HSM/softhsm2.conf
mkdir -p "$W" "$OUT"

# hex_of TEXT: the bytes of TEXT in hex (a PKCS#11 CKA_ID).
hex_of() { printf %s "$1" | xxd -p | tr -d '\n'; }

# hsm_key ID: an AES-256 key, sensitive, on the token, as an operator makes it.
hsm_key() {
	pkcs11-tool --module "$MODULE" --token-label diskcrypt --login --pin "$PIN" \
		--keygen --key-type AES:32 --sensitive --label "disk key $1" --id "$(hex_of "$1")" >/dev/null 2>&1
}

# hsm_setup: token, key, PIN file and agent configuration (once).
hsm_setup() {
	[ -f "$CFG" ] && return 0
	mkdir -p "$HSM/tokens"
	printf 'directories.tokendir = %s/tokens\nobjectstore.backend = file\nlog.level = ERROR\n' "$HSM" >"$SOFTHSM2_CONF"
	softhsm2-util --init-token --free --label diskcrypt --so-pin 0000-so-pin --pin "$PIN" >/dev/null || return 1
	hsm_key "$KEY_ID" || return 1
	(umask 077 && printf %s "$PIN" >"$W/hsm.pin")
	write_config "$CFG" "$MODULE" diskcrypt
}

# policy_binding SUBJECT ROLE RESOURCE: one [[bindings]] table, on stdout.
policy_binding() {
	printf '[[bindings]]\nsubject = "%s"\nrole = "%s"\nresource = "%s"\n\n' "$1" "$2" "$3"
}

# standard_policy: the access policy every test runs under, on stdout.
standard_policy() {
	printf '# diskcrypt attach suite: the standard access policy (tests/attach/common.sh).\n\n'
	for _k in "$KEY_ID" "$KEY2_ID" "$KEY3_ID"; do
		policy_binding "serviceAccount:$SA" kms.keys.encrypterDecrypter "key:hsm:$_k"
		policy_binding "userAccount:$USER_ID" kms.viewer "key:hsm:$_k"
	done
	policy_binding "userAccount:$USER_ID" iam.serviceAccounts.user "serviceAccount:$SA"
}

# install_policy: stdin becomes $POLICY (0644, root's), written beside it and
# renamed over it: a new inode, which the agent reads at its next decision.
install_policy() {
	(umask 022 && cat >"$POLICY.new") && mv -f "$POLICY.new" "$POLICY"
}

# write_config FILE MODULE TOKEN_LABEL [SOCKET]: every agent configuration
# names $POLICY (written with standard_policy unless it exists: an agent does
# not start without its policy file).
write_config() {
	if [ ! -f "$POLICY" ]; then
		standard_policy | install_policy || return 1
	fi
	cat >"$1" <<EOC
[agent]
socket = "${4:-$SOCK}"
default_key = "$KEY"
log_level = "debug"
policy = "$POLICY"

[audit]
file = "$AUDIT"

[providers.hsm]
type = "pkcs11"
module = "$2"
token_label = "$3"
pin_file = "$W/hsm.pin"
EOC
}

# agent_start [CONFIG [SOCKET [LOG]]]: start an agent, wait until it answers.
# shellcheck disable=SC2120 # the defaults serve the main agent
agent_start() {
	_sock=${2:-$SOCK}
	diskcrypt-agent --config "${1:-$CFG}" >>"${3:-$AGENT_LOG}" 2>&1 &
	echo $! >"$W/agent-$(basename "$_sock").pid"
	# Until it answers (a killed agent's socket file may still be there).
	_i=0
	while ! diskcrypt --socket "$_sock" status >/dev/null 2>&1 && [ "$_i" -lt 100 ]; do
		sleep 0.1
		_i=$((_i + 1))
	done
	diskcrypt --socket "$_sock" status >/dev/null 2>&1
}

# agent_stop [SOCKET] [SIGNAL]
agent_stop() {
	_pidf=$W/agent-$(basename "${1:-$SOCK}").pid
	[ -f "$_pidf" ] || return 0
	kill "-${2:-TERM}" "$(cat "$_pidf")" 2>/dev/null
	wait "$(cat "$_pidf")" 2>/dev/null
	rm -f "$_pidf"
	return 0
}

# interrupt_client PID OUTPUT: once the client PID has written a progress
# line to OUTPUT, freeze the agent (SIGSTOP), kill the client and let the
# agent go on: it meets the hang-up before its next chunk, however fast the
# copy runs. Fails if no progress line came within 30 s.
interrupt_client() {
	_apid=$(cat "$W/agent-$(basename "$SOCK").pid")
	_n=600
	while ! grep -q '"progress"' "$2" 2>/dev/null; do
		_n=$((_n - 1))
		[ "$_n" -gt 0 ] || break
		sleep 0.05
	done
	kill -STOP "$_apid"
	kill -9 "$1" 2>/dev/null
	wait "$1" 2>/dev/null
	kill -CONT "$_apid"
	[ "$_n" -gt 0 ]
}

# agent_running: start the default agent unless it answers.
agent_running() {
	hsm_setup || return 1
	# shellcheck disable=SC2119 # the main agent, defaults
	diskcrypt list >/dev/null 2>&1 || agent_start
}

# dc ARGS...: the CLI; stdout in $DC_OUT, stderr in $DC_ERR (also kept in
# $OUT for the secret scan); returns its exit status.
_dc_n=0
dc() {
	_dc_n=$((_dc_n + 1))
	DC_OUT=$OUT/${DCTEST_TEST##*/}-$_dc_n.out DC_ERR=$OUT/${DCTEST_TEST##*/}-$_dc_n.err
	diskcrypt "$@" >"$DC_OUT" 2>"$DC_ERR"
	_dc_rc=$?
	echo "diskcrypt $* -> $_dc_rc" >&2
	cat "$DC_OUT" "$DC_ERR" >&2
	return "$_dc_rc"
}

# expect_exit NAME CODE TEXT ARGS...: the CLI exits CODE and its stderr holds TEXT.
expect_exit() {
	_n=$1 _code=$2 _text=$3
	shift 3
	dc "$@"
	_rc=$?
	if [ "$_rc" != "$_code" ]; then
		fail "$_n" "exit $_rc, expected $_code: diskcrypt $*: $(head -c 300 "$DC_ERR")"
	elif ! grep -qF -- "$_text" "$DC_ERR"; then
		fail "$_n" "stderr lacks '$_text': $(head -c 300 "$DC_ERR")"
	else
		pass "$_n"
	fi
}

# json_field FIELD: a top-level string/number/bool field of $DC_OUT (one-level JSON).
json_field() {
	tr -d '\n' <"$DC_OUT" | sed -n "s/.*\"$1\": *\"\{0,1\}\([^\",}]*\)\"\{0,1\}[,}].*/\1/p" | head -n 1
}

# format_disk DEVICE ID TYPE [ARGS...]: format as $USER_ID, for $SA, under the
# agent's default key unless ARGS has --key.
format_disk() {
	_d=$1 _id=$2 _t=$3
	shift 3
	dc format "$_d" --disk-id "$_id" --type "$_t" --service-account "$SA" --user "$USER_ID" --force "$@"
}

# mapped ID: the mapping's path exists and is a block device.
mapped() { [ -b "/dev/mapper/diskcrypt-$1" ]; }

# secret_of DEVICE ID: the keyslot secret, through the test HSM, on stdout.
secret_of() { diskcrypt-test-unwrap --config "$CFG" "$1" "$2"; }

# audit_has TEXT...: some line of the audit file holds every TEXT.
audit_has() { audit_has_since 0 "$@"; }

# audit_lines: the number of lines in the audit file (a mark for audit_has_since).
audit_lines() { wc -l <"$AUDIT" | tr -d ' '; }

# audit_has_since N TEXT...: some line after line N of the audit file holds every TEXT.
audit_has_since() {
	tail -n "+$(($1 + 1))" "$AUDIT" >/tmp/audit.sel
	shift
	for _t in "$@"; do
		grep -F -- "$_t" /tmp/audit.sel >/tmp/audit.sel2
		mv /tmp/audit.sel2 /tmp/audit.sel
	done
	[ -s /tmp/audit.sel ]
}

# setup_disks: module, token, agent, and disk-a on vda and disk-b on vdb
# formatted (when a test runs alone, lifecycle has not made them).
setup_disks() {
	/sbin/modprobe dm-diskcrypt || return 1
	hsm_setup || return 1
	agent_running || return 1
	if ! cryptsetup isLuks /dev/vda; then format_disk /dev/vda disk-a network-ssd || return 1; fi
	if ! cryptsetup isLuks /dev/vdb; then format_disk /dev/vdb disk-b network-ssd-io-m3 || return 1; fi
}

# type_of ID: the type the tests format disk ID with: disk-b is
# network-ssd-io-m3, disk-h3 (hostile-header.sh) network-hdd, every other
# disk network-ssd.
type_of() {
	case $1 in
	disk-b) echo network-ssd-io-m3 ;;
	disk-h3) echo network-hdd ;;
	*) echo network-ssd ;;
	esac
}

# attach_ok ID DEVICE [TYPE]: attach quietly, as $SA, under $KEY; TYPE
# defaults to type_of ID.
attach_ok() { dc attach "$2" --disk-id "$1" --type "${3:-$(type_of "$1")}" --key "$KEY" --service-account "$SA"; }

# detach_all: detach every disk the agent lists (ignoring failures).
detach_all() {
	for _id in $(diskcrypt --json list | sed -n 's/.*"disk_id": "\([^"]*\)".*/\1/p'); do
		diskcrypt detach "$_id" >/dev/null 2>&1 || diskcrypt detach --force "$_id" >/dev/null 2>&1
	done
	return 0
}

# loop_file FILE SIZE_MIB: a loop device over a new file on tmpfs; prints it.
loop_file() {
	rm -f "$1"
	dd if=/dev/zero of="$1" bs=1M count="$2" 2>/dev/null
	/usr/sbin/losetup --find --show "$1"
}

# wait_until SECONDS CMD...: retry CMD every 0.1 s.
wait_until() {
	_n=$(($1 * 10))
	shift
	while ! "$@"; do
		_n=$((_n - 1))
		[ "$_n" -gt 0 ] || return 1
		sleep 0.1
	done
}
