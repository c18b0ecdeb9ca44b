#!/bin/sh
# format -> attach -> write -> detach -> attach -> read, for a 512-byte-sector
# disk (vda) and a 4096-byte-sector one (vdb); the table mirrors the LUKS2
# segment; the raw device holds exactly dm-crypt's ciphertext for the same
# header; stock cryptsetup, given the secret the test unwraps itself through
# the test HSM, reads the same data; repeated attach is idempotent.
. /tests/attach/common.sh
/sbin/modprobe dm-diskcrypt || { fail lifecycle-setup "cannot load dm-diskcrypt"; exit 1; }
check lifecycle-hsm hsm_setup || exit 1
check lifecycle-agent agent_running || exit 1

head -c 4194304 /dev/urandom >/tmp/pattern

# The guest has no udev: record the kernel's uevents (busybox's netlink
# listener) to see the udev flags the agent puts on its mappings (DM_COOKIE).
mkdir -p /run/uevents
# shellcheck disable=SC2016 # expanded by the helper, per event
printf '#!/bin/sh\nenv >"/run/uevents/$SEQNUM"\n' >/run/uevent-helper
chmod +x /run/uevent-helper
uevent /run/uevent-helper &
uevent_pid=$!

# name device disk-id type sector-size
for c in "a /dev/vda disk-a network-ssd 512" "b /dev/vdb disk-b network-ssd-io-m3 4096"; do
	# shellcheck disable=SC2086
	set -- $c
	n=$1 dev=$2 id=$3 type=$4 ss=$5
	map=/dev/mapper/diskcrypt-$id
	check "format-$n" format_disk "$dev" "$id" "$type" || continue

	rm -f /run/uevents/*
	t0=$(now_ms)
	check "attach-$n" dc attach "$dev" --disk-id "$id" --type "$type" --key "$KEY" --service-account "$SA" || continue
	info "attach of $id ($type) took $(($(now_ms) - t0)) ms in the guest, CLI included"
	check "attach-prints-path-$n" [ "$(head -n 1 "$DC_OUT")" = "$map" ]
	check "mapped-$n" mapped "$id"
	table=$(dmsetup table "diskcrypt-$id")
	info "table: $table"
	uuid=$(cryptsetup luksUUID "$dev")
	want="diskcrypt aes-xts-plain64 :64:logon:diskcrypt:$uuid:"
	check "table-key-reference-$n" sh -c "echo '$table' | grep -qF '$want'"
	opts=" 1 zero_unwritten"
	[ "$ss" = 4096 ] && opts=" 2 sector_size:4096 zero_unwritten"
	devno=$(cat "/sys/block/${dev#/dev/}/dev")
	check "table-segment-$n" sh -c "echo '$table' | grep -qE ' 0 $devno 2048$opts\$'"
	check "table-length-$n" [ "$(echo "$table" | cut -d' ' -f2)" = $((63 * 2048)) ]
	check "dm-uuid-$n" [ "$(dmsetup info -c --noheadings -o uuid "diskcrypt-$id")" = "DISKCRYPT-$id" ]
	check "logical-block-$n" [ "$(blockdev --getss "$map")" = "$ss" ]
	# The resume's change event carries the flags in the cookie's upper half:
	# SUBSYSTEM (0x2), DISK (0x4) and OTHER (0x8) rules off. (Without udev,
	# libdevmapper also sets 0x1, DM rules off, as it makes the node itself.)
	sleep 0.3
	cookie=$(cat /run/uevents/* 2>/dev/null | sed -n 's/^DM_COOKIE=//p' | tail -n 1)
	flags=$(((${cookie:-0} >> 16) & 0xffff))
	info "udev flags of diskcrypt-$id: $(printf 0x%04x "$flags") (DM_COOKIE=$cookie)"
	check "udev-flags-no-probing-$n" [ $((flags & 0xe)) = 14 ]

	check "write-$n" dd if=/tmp/pattern of="$map" bs=64k oflag=direct conv=notrunc 2>/dev/null
	check "detach-$n" dc detach "$id"
	check "unmapped-$n" sh -c "! test -e $map"
	check "reattach-$n" dc attach "$dev" --disk-id "$id" --type "$type" --key "$KEY" --service-account "$SA"
	dd if="$map" of=/tmp/back bs=64k count=64 iflag=direct 2>/dev/null
	check "data-survives-$n" cmp -s /tmp/back /tmp/pattern

	# Idempotent: the same request again returns the same mapping.
	check "attach-again-$n" dc --json attach "$dev" --disk-id "$id" --type "$type" --key "$KEY" --service-account "$SA"
	check "attach-again-idempotent-$n" [ "$(json_field already_attached)" = true ]
	check "attach-again-same-path-$n" [ "$(json_field path)" = "$map" ]

	# Ciphertext: what diskcrypt wrote, then dm-crypt (cryptsetup's own LUKS2
	# open, same header) writing the same plaintext over it: identical bytes.
	dd if="$dev" of=/tmp/raw-diskcrypt bs=1M skip=1 count=4 iflag=direct 2>/dev/null
	expect_fail "raw-is-not-plaintext-$n" cmp -s /tmp/raw-diskcrypt /tmp/pattern
	check "detach-for-stock-$n" dc detach "$id"
	secret_of "$dev" "$id" >/tmp/secret || fail "unwrap-by-test-$n" "diskcrypt-test-unwrap failed"
	check "stock-cryptsetup-open-$n" cryptsetup open --key-file /tmp/secret "$dev" "stock-$id"
	info "cryptsetup's dm-crypt table: $(dmsetup table "stock-$id" | sed 's/:64:logon:[^ ]*/:64:logon:.../')"
	dd if="/dev/mapper/stock-$id" of=/tmp/back bs=64k count=64 iflag=direct 2>/dev/null
	check "stock-cryptsetup-reads-$n" cmp -s /tmp/back /tmp/pattern
	dd if=/tmp/pattern of="/dev/mapper/stock-$id" bs=64k oflag=direct conv=notrunc 2>/dev/null
	dd if="$dev" of=/tmp/raw-dmcrypt bs=1M skip=1 count=4 iflag=direct 2>/dev/null
	check "ciphertext-equals-dm-crypt-$n" cmp -s /tmp/raw-diskcrypt /tmp/raw-dmcrypt
	check "stock-close-$n" cryptsetup close "stock-$id"
	shred -u /tmp/secret 2>/dev/null || rm -f /tmp/secret
	check "attach-after-stock-$n" dc attach "$dev" --disk-id "$id" --type "$type" --key "$KEY" --service-account "$SA"
done

check list-json dc --json list
check list-shows-both sh -c "grep -q '\"disk_id\": \"disk-a\"' $DC_OUT && grep -q '\"disk_id\": \"disk-b\"' $DC_OUT"
check list-human dc list
info "$(cat "$DC_OUT")"
check status-disk dc status disk-a
check status-disk-names-key grep -q "hsm:$KEY_ID version 1" "$DC_OUT"
check status-agent dc status
check status-agent-counts grep -qE 'attached disks +2' "$DC_OUT"

# The audit trail so far: format, wrap, unwrap, attach and detach events
# with disk, service account, key and version, and the caller.
for ev in format wrap unwrap attach detach; do
	sa="\"service_account\":\"$SA\""
	[ "$ev" = detach ] && sa='"service_account":null'
	check "audit-$ev" audit_has "\"event\":\"$ev\"" '"result":"ok"' '"disk_id":"disk-a"' "$sa" \
		"\"key\":{\"provider\":\"hsm\",\"id\":\"$KEY_ID\",\"version\":\"1\"}" '"caller":{"uid":0,"pid":'
done
# Each operation's access decision, under the policy's revision; format's
# names the user.
check audit-access-attach audit_has '"event":"access"' '"result":"ok"' '"op":"attach"' '"disk_id":"disk-a"' \
	"\"service_account\":\"$SA\"" '"policy_revision":"sha256:'
check audit-access-format audit_has '"event":"access"' '"result":"ok"' '"op":"format"' '"disk_id":"disk-a"' \
	"\"user\":\"$USER_ID\"" '"policy_revision":"sha256:'
check audit-attach-revision audit_has '"event":"attach"' '"result":"ok"' '"disk_id":"disk-a"' '"policy_revision":"sha256:'
check detach-all sh -c "diskcrypt detach disk-a >/dev/null && diskcrypt detach disk-b >/dev/null"
kill "$uevent_pid"
die_on_kernel_warning lifecycle-kernel-log
