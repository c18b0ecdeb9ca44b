#!/bin/sh
# The KMIP provider against a real KMIP server: PyKMIP on the host, reached
# through QEMU's user-mode network (tests/attach/run.sh starts it,
# tests/attach/kmip-host.sh makes its keys and answers the control port):
#   - format, verify, attach, write, detach, attach (from a new agent: a
#     new connection), read under kms:disk-key;
#     the audit and status name provider kms and the key's UID as version;
#     the attach time beside a PKCS#11 (SoftHSM2) attach in the same guest;
#   - a provider whose server is unreachable (kms-down, a closed port):
#     attach fails within its request_timeout with exit 8 naming the
#     endpoint, nothing mapped, while an attached disk serves I/O;
#   - a key revoked on the server mid-run (the guest asks the host) while its
#     disk is attached, with [revocation] revoke for it (interval 1 s): the
#     mapping is suspended and its kernel key wiped within the interval,
#     status says "deactivated", verify refused with exit 10; the revoked
#     disk detaches, and attach is refused with exit 10;
#   - the server killed mid-run (the guest asks the host): attach fails
#     within request_timeout with exit 8 naming the endpoint (through QEMU's
#     forward the connection is accepted and then closed: unreachable and
#     retried, not a TLS refusal), nothing mapped, the attached disk serves
#     I/O; its key is in revoke mode, and a KMS that does not answer revokes
#     nothing (check-keys reports the error); the server started again, the
#     same agent attaches (it recovers without a restart);
#   - each fault of a KMS, one provider per fault, while disk-k serves I/O:
#     a KMIP server that accepts and never answers (slow: a forward that
#     waits 10 s before it connects), one whose certificate the CA file does
#     not vouch for (TLS refused), a PKCS#11 module that is missing, a token
#     label no token carries (the token removed), a wrong PIN: each attach
#     fails within its deadline with its exit code and reason, nothing
#     mapped and no kernel key left.
# The agent runs with $KCFG (the suite's configuration plus two KMIP
# providers) on the usual socket, and the policy grants the KMIP keys; both
# go back to the suite's at the end, and vdb's header is wiped.
. /tests/attach/common.sh
KT=/etc/kmip-test
ENDPOINT=10.0.2.100:5696
KCFG=$W/kmip.toml
FSOCK=/run/diskcrypt/kmip-fmt.sock
DOWN_TIMEOUT=2
# uid_of NAME: the key's Unique Identifier on the server (from the host).
uid_of() { awk -v n="$1" '$1 == n { print $2 }' "$KT/keys"; }
DISK_UID=$(uid_of disk-key)

# kmip_provider NAME ENDPOINT TIMEOUT: one [providers.NAME] table, on stdout.
kmip_provider() {
	cat <<EOC

[providers.$1]
type = "kmip"
endpoints = ["$2"]
server_name = "kmip.test"
ca_file = "$KT/ca.pem"
client_certificate = "$KT/client.pem"
client_key_file = "$KT/client.key"
request_timeout = $3
connect_timeout = $(($3 < 3 ? $3 : 3))
read_timeout = $(($3 < 5 ? $3 : 5))
EOC
}

# control REQUEST...: ask the host (kmip-host.sh control); its answer must
# start with "ok".
control() {
	_answer=$(echo "$*" | timeout 90 nc 10.0.2.100 5697)
	echo "kmip control: $* -> $_answer" >&2
	case $_answer in
	ok*) return 0 ;;
	*) return 1 ;;
	esac
}

# io_ok ID: 4 MiB written to the mapping and read back (O_DIRECT).
io_ok() {
	dd if=/tmp/kpattern of="/dev/mapper/diskcrypt-$1" bs=64k oflag=direct conv=notrunc 2>/dev/null &&
		dd if="/dev/mapper/diskcrypt-$1" of=/tmp/kback bs=64k count=64 iflag=direct 2>/dev/null &&
		cmp -s /tmp/kback /tmp/kpattern
}

# not_mapped ID: no device-mapper device of disk ID.
not_mapped() { ! dmsetup ls | grep -q "^diskcrypt-$1[[:space:]]"; }

# attach_kms DEVICE ID KEY: attach as $SA, JSON answer in $DC_OUT.
attach_kms() { dc --json attach "$1" --disk-id "$2" --type network-ssd --key "$3" --service-account "$SA"; }

/sbin/modprobe dm-diskcrypt || { fail kmip-setup "cannot load dm-diskcrypt"; exit 1; }
check kmip-keys-from-host [ -n "$DISK_UID" ] || exit 1
check kmip-network sh -c "/sbin/modprobe virtio_net && ip link set lo up && ip link set eth0 up &&
	ip addr add 10.0.2.15/24 dev eth0" || exit 1
check kmip-hsm hsm_setup || exit 1
# After other tests: nothing of theirs attached, their agent stopped.
if diskcrypt list >/dev/null 2>&1; then
	detach_all
	agent_stop
fi

# The policy: the standard one, and the KMIP keys for $SA and $USER_ID.
{
	standard_policy
	for k in kms:disk-key kms:revoked-key kms-down:disk-key; do
		policy_binding "serviceAccount:$SA" kms.keys.encrypterDecrypter "key:$k"
		policy_binding "userAccount:$USER_ID" kms.viewer "key:$k"
	done
} | install_policy
write_config "$KCFG" "$MODULE" diskcrypt
{
	kmip_provider kms "$ENDPOINT" 6
	kmip_provider kms-down 127.0.0.1:1 "$DOWN_TIMEOUT"
	printf '\n[revocation]\ninterval = 1\nrevoke = ["kms:disk-key", "kms:revoked-key"]\n'
} >>"$KCFG"
check kmip-agent agent_start "$KCFG" || exit 1
head -c 4194304 /dev/urandom >/tmp/kpattern

# 1. PKCS#11 first, for the figure to compare with.
check kmip-pkcs11-format format_disk /dev/vda disk-a network-ssd
check kmip-pkcs11-attach attach_kms /dev/vda disk-a "$KEY"
p11_ms="$(json_field elapsed_ms) ms (KMS $(json_field kms_ms) ms)"
check kmip-pkcs11-detach dc detach disk-a

# 2. The round trip under a KMIP key.
t0=$(now_ms)
check kmip-format format_disk /dev/vdb disk-k network-ssd --key kms:disk-key
info "kmip: format under kms:disk-key took $(($(now_ms) - t0)) ms in the guest, CLI included"
check kmip-verify dc verify /dev/vdb --disk-id disk-k --type network-ssd --key kms:disk-key --service-account "$SA"
check kmip-attach attach_kms /dev/vdb disk-k kms:disk-key
kms_ms="$(json_field elapsed_ms) ms (KMS $(json_field kms_ms) ms)"
check kmip-mapped mapped disk-k
check kmip-write dd if=/tmp/kpattern of=/dev/mapper/diskcrypt-disk-k bs=64k oflag=direct conv=notrunc 2>/dev/null
check kmip-detach dc detach disk-k
# Again from a new agent: a new TCP connection and TLS handshake.
agent_stop
check kmip-agent-again agent_start "$KCFG"
check kmip-reattach attach_kms /dev/vdb disk-k kms:disk-key
kms2_ms="$(json_field elapsed_ms) ms (KMS $(json_field kms_ms) ms)"
dd if=/dev/mapper/diskcrypt-disk-k of=/tmp/kback bs=64k count=64 iflag=direct 2>/dev/null
check kmip-data-survives cmp -s /tmp/kback /tmp/kpattern
info "attach elapsed_ms, of it kms_ms (agent): pkcs11 (SoftHSM2) $p11_ms; kmip (PyKMIP on the host) $kms_ms on a pooled connection, $kms2_ms with a new connection (TLS handshake)"
kms_key="\"key\":{\"provider\":\"kms\",\"id\":\"disk-key\",\"version\":\"$DISK_UID\"}"
check kmip-audit-wrap audit_has '"event":"wrap"' '"result":"ok"' '"disk_id":"disk-k"' "$kms_key"
check kmip-audit-unwrap audit_has '"event":"unwrap"' '"result":"ok"' '"disk_id":"disk-k"' "$kms_key"
check kmip-audit-attach audit_has '"event":"attach"' '"result":"ok"' '"disk_id":"disk-k"' "$kms_key"
check kmip-status dc status disk-k
check kmip-status-names-key grep -q "kms:disk-key version $DISK_UID" "$DC_OUT"

# 3. A server that cannot be reached: a disk formatted under kms-down by an
# agent whose kms-down is the real server, attached by ours (a closed port).
write_config "$W/kmip-fmt.toml" "$MODULE" diskcrypt "$FSOCK"
kmip_provider kms-down "$ENDPOINT" 10 >>"$W/kmip-fmt.toml"
check kmip-down-fmt-agent agent_start "$W/kmip-fmt.toml" "$FSOCK" "$W/agent-kmip-fmt.log"
kd=$(loop_file "$W/kd.img" 8)
check kmip-down-format dc --socket "$FSOCK" format "$kd" --disk-id disk-kd --type network-ssd \
	--service-account "$SA" --user "$USER_ID" --force --key kms-down:disk-key
agent_stop "$FSOCK"
io_ok disk-k >/tmp/kio.log 2>&1 &
io=$!
t0=$(now_ms)
expect_exit kmip-down-attach 8 "127.0.0.1:1" attach "$kd" --disk-id disk-kd --type network-ssd \
	--key kms-down:disk-key --service-account "$SA"
took=$(($(now_ms) - t0))
info "kmip: attach with the server unreachable failed after $took ms (request_timeout $DOWN_TIMEOUT s): $(head -c 400 "$DC_ERR")"
check kmip-down-within-timeout [ "$took" -lt $(((DOWN_TIMEOUT + 3) * 1000)) ]
check kmip-down-nothing-mapped not_mapped disk-kd
check kmip-down-audit audit_has '"event":"unwrap"' '"result":"failed"' '"reason":"kms-unavailable"' '"disk_id":"disk-kd"'
check kmip-down-io-meanwhile wait "$io"
check kmip-down-still-attached mapped disk-k
check kmip-down-io-after io_ok disk-k

# 4. A key revoked on the server while its disk is attached.
# revoked ID: the mapping suspended, its key wiped.
revoked() { dmsetup info "diskcrypt-$1" | grep -q SUSPENDED && dmsetup status "diskcrypt-$1" | grep -q 'key:wiped'; }
kr=$(loop_file "$W/kr.img" 8)
check kmip-revoked-format format_disk "$kr" disk-kr network-ssd --key kms:revoked-key
check kmip-revoked-attach-before attach_kms "$kr" disk-kr kms:revoked-key
check kmip-revoke-on-host control revoke revoked-key
check kmip-revoked-suspended wait_until 5 revoked disk-kr
check kmip-revoked-status dc status disk-kr
check kmip-revoked-status-why grep -q "revoked .*key kms:revoked-key version .* is deactivated" "$DC_OUT"
check kmip-revoked-audit-revoke audit_has '"event":"revoke","result":"ok"' '"disk_id":"disk-kr"' 'is deactivated'
expect_exit kmip-revoked-verify 10 "is deactivated, not active" verify "$kr" --disk-id disk-kr --type network-ssd \
	--key kms:revoked-key --service-account "$SA"
check kmip-revoked-detach dc detach disk-kr
expect_exit kmip-revoked-attach 10 "is deactivated, not active" attach "$kr" --disk-id disk-kr --type network-ssd \
	--key kms:revoked-key --service-account "$SA"
check kmip-revoked-nothing-mapped not_mapped disk-kr
check kmip-revoked-audit audit_has '"event":"unwrap"' '"result":"failed"' '"reason":"kms-key"' '"disk_id":"disk-kr"'
check kmip-still-live-after-revoke sh -c "! dmsetup info diskcrypt-disk-k | grep -q SUSPENDED"

# 5. The server killed while a disk is attached (its key in revoke mode).
k2=$(loop_file "$W/k2.img" 8)
check kmip-stop-format format_disk "$k2" disk-k2 network-ssd --key kms:disk-key
t0=$(now_ms)
check kmip-stop-on-host control kill
info "kmip: the host killed PyKMIP in $(($(now_ms) - t0)) ms"
t0=$(now_ms)
dc attach "$k2" --disk-id disk-k2 --type network-ssd --key kms:disk-key --service-account "$SA"
rc=$?
took=$(($(now_ms) - t0))
info "kmip: attach with the server stopped: exit $rc after $took ms: $(head -c 400 "$DC_ERR")"
check kmip-stopped-attach-exit-8 [ "$rc" -eq 8 ]
check kmip-stopped-names-endpoint grep -qF "$ENDPOINT" "$DC_ERR"
check kmip-stopped-says-closed grep -qF "closed the connection" "$DC_ERR"
check kmip-stopped-within-timeout [ "$took" -lt 9000 ] # request_timeout 6 s
check kmip-stopped-nothing-mapped not_mapped disk-k2
check kmip-stopped-still-attached mapped disk-k
check kmip-stopped-io io_ok disk-k
# Unreachable is never a revocation: over several intervals disk-k stays live.
sleep 3
check kmip-stopped-not-revoked sh -c "! dmsetup info diskcrypt-disk-k | grep -q SUSPENDED"
check kmip-stopped-check-keys dc --json check-keys
check kmip-stopped-check-keys-key grep -q '"id": "disk-key"' "$DC_OUT"
check kmip-stopped-check-keys-error grep -q '"error": "provider' "$DC_OUT"
check kmip-stopped-check-keys-none sh -c "tr -d '\n ' <'$DC_OUT' | grep -q '\"revoked\":\[\]'"
check kmip-stopped-io-after io_ok disk-k
# The server back: the same agent attaches without a restart.
check kmip-start-on-host control start
check kmip-recovered-attach attach_kms "$k2" disk-k2 kms:disk-key
check kmip-recovered-mapped mapped disk-k2
check kmip-recovered-io io_ok disk-k2
check kmip-recovered-detach dc detach disk-k2

# 6. The faults, one provider each. The disks are formatted by an agent whose
# providers of those names all work; ours has them broken.
FCFG=$W/faults-fmt.toml
hsm_provider() { printf '\n[providers.%s]\ntype = "pkcs11"\nmodule = "%s"\ntoken_label = "%s"\npin_file = "%s"\n' "$@"; }
write_config "$FCFG" "$MODULE" diskcrypt "$FSOCK"
{
	kmip_provider kms-slow "$ENDPOINT" 6
	kmip_provider kms-tls "$ENDPOINT" 6
	for p in hsm-nolib hsm-notoken hsm-badpin; do hsm_provider "$p" "$MODULE" diskcrypt "$W/hsm.pin"; done
} >>"$FCFG"
{
	standard_policy
	for k in kms:disk-key kms:revoked-key kms-down:disk-key kms-slow:disk-key kms-tls:disk-key \
		hsm-nolib:$KEY_ID hsm-notoken:$KEY_ID hsm-badpin:$KEY_ID; do
		policy_binding "serviceAccount:$SA" kms.keys.encrypterDecrypter "key:$k"
		policy_binding "userAccount:$USER_ID" kms.viewer "key:$k"
	done
} | install_policy
check faults-fmt-agent agent_start "$FCFG" "$FSOCK" "$W/agent-faults-fmt.log"
n=0
for p in kms-slow kms-tls hsm-nolib hsm-notoken hsm-badpin; do
	n=$((n + 1))
	key=$p:disk-key
	case $p in hsm-*) key=$p:$KEY_ID ;; esac
	dev=$(loop_file "$W/f$n.img" 8)
	echo "$dev" >"$W/f$n.dev"
	check "faults-format-$p" dc --socket "$FSOCK" format "$dev" --disk-id "disk-f$n" --type network-ssd \
		--service-account "$SA" --user "$USER_ID" --force --key "$key"
done
agent_stop "$FSOCK"
(umask 077 && printf 'not-the-pin' >"$W/bad.pin")
FAULTY=$W/faults.toml
cp "$KCFG" "$FAULTY"
{
	kmip_provider kms-slow 10.0.2.100:5698 4
	kmip_provider kms-tls "$ENDPOINT" 4 | sed "s|$KT/ca.pem|$KT/client.pem|"
	hsm_provider hsm-nolib /usr/lib/softhsm/libsofthsm2-missing.so diskcrypt "$W/hsm.pin"
	hsm_provider hsm-notoken "$MODULE" removed-token "$W/hsm.pin"
	hsm_provider hsm-badpin "$MODULE" diskcrypt "$W/bad.pin"
} >>"$FAULTY"
agent_stop
check faults-agent agent_start "$FAULTY"
n=0
for f in "kms-slow 8 10.0.2.100:5698 6" "kms-tls 9 certificate 6" "hsm-nolib 8 libsofthsm2-missing.so 2" \
	"hsm-notoken 8 removed-token 2" "hsm-badpin 9 rejected the PIN 2"; do
	n=$((n + 1))
	p=${f%% *} rest=${f#* }
	code=${rest%% *} rest=${rest#* }
	limit=${rest##* } text=${rest% *}
	key=$p:disk-key
	case $p in hsm-*) key=$p:$KEY_ID ;; esac
	io_ok disk-k >/tmp/kio.log 2>&1 &
	io=$!
	t0=$(now_ms)
	expect_exit "faults-$p-attach" "$code" "$text" attach "$(cat "$W/f$n.dev")" --disk-id "disk-f$n" --type network-ssd \
		--key "$key" --service-account "$SA"
	took=$(($(now_ms) - t0))
	info "faults: $p: exit $code after $took ms: $(head -c 300 "$DC_ERR")"
	check "faults-$p-within-deadline" [ "$took" -lt $((limit * 1000)) ]
	check "faults-$p-nothing-mapped" not_mapped "disk-f$n"
	check "faults-$p-io-meanwhile" wait "$io"
done
check faults-no-kernel-key sh -c "! grep -q 'diskcrypt:' /proc/keys"
check faults-io-after io_ok disk-k
agent_stop
check faults-agent-back agent_start "$KCFG"

# Back to the suite's state: no mapping, the standard policy and agent
# configuration, vdb without a header.
check kmip-detach-final dc detach disk-k
detach_all
/usr/sbin/losetup -D
agent_stop
standard_policy | install_policy
dd if=/dev/zero of=/dev/vdb bs=1M count=16 oflag=direct 2>/dev/null
rm -f "$W"/kd.img "$W"/kr.img "$W"/k2.img "$W"/f?.img "$W"/f?.dev /tmp/kpattern /tmp/kback
die_on_kernel_warning kmip-kernel-log
