#!/bin/sh
# Encrypted snapshots, images and disks made from them (diskcrypt copy), in
# the guest: data written through the kernel target reads back the same
# through each copy's own mapping (checksums of the whole data), a snapshot
# is never attached, a larger disk's tail reads as zeros, an attached source
# is refused, and a copy interrupted for real (its client killed) leaves a
# target that refuses to attach until the copy is run again. Then rewrap
# under the second key while the disk is attached; access refusals (a
# snapshot under a key the user may not use, a user without kms.viewer).
. /tests/attach/common.sh
check copy-agent agent_running || exit 1
detach_all
# The key rewrap moves a disk to (made once per guest).
pkcs11-tool --module "$MODULE" --token-label diskcrypt --login --pin "$PIN" --list-objects --type secrkey 2>/dev/null |
	grep -q "disk key $KEY3_ID" || check copy-third-key hsm_key "$KEY3_ID"

# copy_of SRC ID DST TO_ID KIND [ARGS...]: the copy as $USER_ID for $SA.
copy_of() {
	_s=$1 _i=$2 _d=$3 _t=$4 _k=$5
	shift 5
	dc copy "$_s" --disk-id "$_i" --key "$KEY" --service-account "$SA" --user "$USER_ID" \
		--to "$_d" --to-id "$_t" --to-kind "$_k" "$@"
}
# sum_of ID MIB: SHA-256 of the first MIB MiB read through the mapping.
sum_of() { dd if="/dev/mapper/diskcrypt-$1" bs=1M count="$2" iflag=direct 2>/dev/null | sha256sum | cut -c1-64; }

src=$(loop_file "$W/copy-src.img" 48) || { fail copy-loops; exit 1; }
snap=$(loop_file "$W/copy-snap.img" 48)
big=$(loop_file "$W/copy-big.img" 64)
img=$(loop_file "$W/copy-image.img" 48)
fromimg=$(loop_file "$W/copy-fromimg.img" 48)

# The source: 47 MiB of data written through the target.
check copy-format format_disk "$src" copy-a network-ssd
check copy-attach-src attach_ok copy-a "$src"
dd if=/dev/urandom of="$W/copy-data" bs=1M count=47 2>/dev/null
check copy-write dd if="$W/copy-data" of=/dev/mapper/diskcrypt-copy-a bs=1M oflag=direct 2>/dev/null
want=$(sha256sum <"$W/copy-data" | cut -c1-64)
check copy-src-sum [ "$(sum_of copy-a 47)" = "$want" ]

# Attached: refused, the source held by its mapping.
expect_exit copy-attached-refused 15 "is in use" copy "$src" --disk-id copy-a --key "$KEY" \
	--service-account "$SA" --user "$USER_ID" --to "$snap" --to-id copy-snap --to-kind snapshot
check copy-detach-src dc detach copy-a

# disk -> snapshot: same key, own id; a snapshot does not attach.
check copy-snapshot copy_of "$src" copy-a "$snap" copy-snap snapshot
expect_exit copy-snapshot-no-attach 2 "only disks are attached" attach "$snap" --disk-id copy-snap \
	--type network-ssd --key "$KEY" --service-account "$SA"
expect_exit copy-snapshot-not-source-id 11 "belongs to disk copy-snap" verify "$snap" --disk-id copy-a \
	--key "$KEY" --service-account "$SA"

# A local disk type is never an encrypted copy's target (usage, 2).
expect_exit copy-local-target 2 "local disks cannot be encrypted" copy "$snap" --disk-id copy-snap --key "$KEY" \
	--service-account "$SA" --user "$USER_ID" --to "$big" --to-id copy-b --to-kind disk --type local-ssd

# snapshot -> disk (a larger network-hdd disk): the data, and zeros after it.
check copy-from-snapshot copy_of "$snap" copy-snap "$big" copy-b disk --type network-hdd
check copy-attach-b attach_ok copy-b "$big" network-hdd
check copy-b-sum [ "$(sum_of copy-b 47)" = "$want" ]
dd if=/dev/zero of="$W/zeros16" bs=1M count=16 2>/dev/null
check copy-b-tail-zeros sh -c "dd if=/dev/mapper/diskcrypt-copy-b bs=1M skip=47 count=16 iflag=direct 2>/dev/null |
	cmp -s - $W/zeros16"
check copy-audit audit_has '"event":"copy","result":"ok"' '"disk_id":"copy-snap"'

# Rewrap while attached: under the second key; I/O goes on, the next attach
# needs the new key.
check copy-rewrap dc rewrap "$big" --disk-id copy-b --key "$KEY" --service-account "$SA" --user "$USER_ID" \
	--to-key "hsm:$KEY3_ID"
check copy-rewrap-io [ "$(sum_of copy-b 47)" = "$want" ]
check copy-detach-b dc detach copy-b
expect_exit copy-rewrap-old-key 11 "not under the disk's key $KEY" attach "$big" --disk-id copy-b \
	--type network-hdd --key "$KEY" --service-account "$SA"
check copy-rewrap-new-key dc attach "$big" --disk-id copy-b --type network-hdd --key "hsm:$KEY3_ID" \
	--service-account "$SA"
check copy-rewrap-sum [ "$(sum_of copy-b 47)" = "$want" ]
check copy-detach-b2 dc detach copy-b

# Access, refused before the target is touched: a snapshot under a key the
# user may not use (kms.viewer on $KEY3_ID withdrawn), and a user without
# kms.viewer on any key (it may act as $SA); the standard policy back after.
snap3=$(loop_file "$W/copy-snap3.img" 64)
check copy-snapshot-key3 dc copy "$big" --disk-id copy-b --key "hsm:$KEY3_ID" --service-account "$SA" \
	--user "$USER_ID" --to "$snap3" --to-id copy-b-snap --to-kind snapshot
losetup -d "$big" && rm -f "$W/copy-big.img"
{
	printf '# copy.sh: %s may not use %s; %s may use no key\n\n' "$USER_ID" "$KEY3_ID" viewerless
	for _k in "$KEY_ID" "$KEY2_ID" "$KEY3_ID"; do
		policy_binding "serviceAccount:$SA" kms.keys.encrypterDecrypter "key:hsm:$_k"
	done
	for _k in "$KEY_ID" "$KEY2_ID"; do
		policy_binding "userAccount:$USER_ID" kms.viewer "key:hsm:$_k"
	done
	policy_binding "userAccount:$USER_ID" iam.serviceAccounts.user "serviceAccount:$SA"
	policy_binding "userAccount:viewerless" iam.serviceAccounts.user "serviceAccount:$SA"
} | install_policy
fresh=$(loop_file "$W/copy-fresh.img" 64)
mark=$(audit_lines)
expect_exit copy-denied-snapshot-key 18 "userAccount:$USER_ID lacks kms.keys.get on key:hsm:$KEY3_ID" \
	copy "$snap3" --disk-id copy-b-snap --key "hsm:$KEY3_ID" --service-account "$SA" --user "$USER_ID" \
	--to "$fresh" --to-id copy-d --to-kind disk --type network-ssd
check copy-denied-audit audit_has_since "$mark" '"event":"copy","result":"refused"' '"reason":"access-denied"' \
	'"disk_id":"copy-b-snap"'
expect_exit copy-denied-no-viewer 18 "userAccount:viewerless lacks kms.keys.get on key:$KEY" \
	copy "$src" --disk-id copy-a --key "$KEY" --service-account "$SA" --user viewerless \
	--to "$fresh" --to-id copy-d --to-kind snapshot
check copy-denied-untouched sh -c "! cryptsetup isLuks $fresh"
standard() { standard_policy | install_policy; }
check copy-policy-back standard
check copy-allowed-again copy_of "$src" copy-a "$fresh" copy-d snapshot
losetup -d "$snap3" "$fresh" && rm -f "$W/copy-snap3.img" "$W/copy-fresh.img"

# disk -> image -> disk.
check copy-image copy_of "$src" copy-a "$img" copy-img image
check copy-from-image copy_of "$img" copy-img "$fromimg" copy-c disk --type network-ssd
check copy-attach-c attach_ok copy-c "$fromimg"
check copy-c-sum [ "$(sum_of copy-c 47)" = "$want" ]
check copy-detach-c dc detach copy-c

# Interrupted for real: a 64 MiB snapshot whose client is killed after its
# first progress line; the agent sees the hang-up and stops.
losetup -d "$img" "$fromimg" 2>/dev/null
rm -f "$W/copy-image.img" "$W/copy-fromimg.img" "$W/copy-data"
large=$(loop_file "$W/copy-large.img" 64)
large_snap=$(loop_file "$W/copy-large-snap.img" 64)
check copy-large-format format_disk "$large" copy-l network-ssd
dd if=/dev/urandom of="$large" bs=1M seek=1 count=63 oflag=direct 2>/dev/null
mark=$(audit_lines)
diskcrypt --json copy "$large" --disk-id copy-l --key "$KEY" --service-account "$SA" --user "$USER_ID" \
	--to "$large_snap" --to-id copy-ls --to-kind snapshot >"$W/copy-progress" 2>&1 &
check copy-interrupted interrupt_client $! "$W/copy-progress"
check copy-cancelled wait_until 30 audit_has_since "$mark" '"event":"copy","result":"failed"' '"reason":"cancelled"'
expect_exit copy-incomplete-verify 19 "is an interrupted copy" verify "$large_snap" --disk-id copy-ls \
	--key "$KEY" --service-account "$SA"
expect_exit copy-incomplete-attach 19 "is an interrupted copy" attach "$large_snap" --disk-id copy-ls \
	--type network-ssd --key "$KEY" --service-account "$SA"
check copy-rerun copy_of "$large" copy-l "$large_snap" copy-ls snapshot --json
check copy-rerun-restarted [ "$(json_field resumed_from)" = 0 ]
check copy-large-verify dc verify "$large_snap" --disk-id copy-ls --key "$KEY" --service-account "$SA"
data_sum() { dd if="$1" bs=1M skip=1 2>/dev/null | sha256sum | cut -c1-64; }
check copy-large-same [ "$(data_sum "$large")" = "$(data_sum "$large_snap")" ]

losetup -d "$large" "$large_snap" "$src" "$snap" 2>/dev/null
rm -f "$W"/copy-*.img "$W/copy-data"
exit 0
