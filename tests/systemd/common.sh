# shellcheck shell=sh
# Guest-side helpers of the systemd suite (sourced after the harness's lib.sh).
# The guest is set up as an operator sets up a host from the packages: the
# SoftHSM2 token in its default folder (/var/lib/softhsm/tokens), the HSM PIN
# in /etc/diskcrypt/hsm.pin handed over by LoadCredential=, the configuration
# and access policy in /etc/diskcrypt, the agent started by its socket.

# shellcheck source=../vm/guest/lib.sh
. "${DCTEST_LIB:-/lib/dctest/lib.sh}"

W=/run/systemd-suite
OUT=$W/outputs
MODULE=/usr/lib/softhsm/libsofthsm2.so
PIN=4711-user-pin
KEY_ID=disk-key-01
KEY=hsm:$KEY_ID
SA=sa-vm-1234
USER_ID=provisioner
CFG=/etc/diskcrypt/agent.toml
POLICY=/etc/diskcrypt/policy.toml
AUDIT=/var/log/diskcrypt/audit.jsonl
mkdir -p "$W" "$OUT"

hex_of() { printf %s "$1" | xxd -p | tr -d '\n'; }

# setup_host: token, key, PIN, configuration, policy (once per boot).
setup_host() {
	[ -f "$CFG" ] && return 0
	softhsm2-util --init-token --free --label diskcrypt --so-pin 0000-so-pin --pin "$PIN" >/dev/null || return 1
	pkcs11-tool --module "$MODULE" --token-label diskcrypt --login --pin "$PIN" \
		--keygen --key-type AES:32 --sensitive --label "disk key $KEY_ID" --id "$(hex_of "$KEY_ID")" \
		>/dev/null 2>&1 || return 1
	(umask 077 && printf %s "$PIN" >/etc/diskcrypt/hsm.pin)
	cat >"$POLICY" <<EOP
[[bindings]]
subject = "serviceAccount:$SA"
role = "kms.keys.encrypterDecrypter"
resource = "key:$KEY"

[[bindings]]
subject = "userAccount:$USER_ID"
role = "kms.viewer"
resource = "key:$KEY"

[[bindings]]
subject = "userAccount:$USER_ID"
role = "iam.serviceAccounts.user"
resource = "serviceAccount:$SA"
EOP
	chmod 0644 "$POLICY"
	cat >"$CFG" <<EOC
[agent]
default_key = "$KEY"
policy = "$POLICY"

[audit]
file = "$AUDIT"

[providers.hsm]
type = "pkcs11"
module = "$MODULE"
token_label = "diskcrypt"
pin_credential = "hsm-pin"
EOC
}

# agent_pid: the service's main PID (0 when it is not running).
agent_pid() { systemctl show -P MainPID diskcrypt-agent.service; }

# wait_for COUNT CMD...: run CMD every 0.1 s until it succeeds, at most COUNT times.
wait_for() {
	_n=$1
	shift
	while ! "$@" >/dev/null 2>&1; do
		_n=$((_n - 1))
		[ "$_n" -gt 0 ] || return 1
		sleep 0.1
	done
}
