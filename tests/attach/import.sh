#!/bin/sh
# Encrypted disks from unencrypted images (diskcrypt import), in the guest:
# the image reads back the same through the new disk's mapping, all-zero runs
# are zeroed on the backing device instead of encrypted (network types:
# zero_unwritten) and read as zeros, the rest of the disk reads as zeros; an
# unencrypted block device imported the same way; an
# image larger than the disk, or not whole sectors, refused before anything
# is written; an import whose client is killed refuses to attach (19) until
# run again; decrypting in place refused (21).
. /tests/attach/common.sh
check import-agent agent_running || exit 1
detach_all

# import_into DEVICE ID IMAGE [ARGS...]: import as $USER_ID for $SA.
import_into() {
	_d=$1 _i=$2 _m=$3
	shift 3
	dc import "$_d" --image "$_m" --disk-id "$_i" --type network-ssd --service-account "$SA" --user "$USER_ID" "$@"
}
# sum_of ID MIB [SKIP]: SHA-256 of MIB MiB read through the mapping.
sum_of() {
	dd if="/dev/mapper/diskcrypt-$1" bs=1M count="$2" skip="${3:-0}" iflag=direct 2>/dev/null | sha256sum | cut -c1-64
}

# An image with a 16 MiB hole of zeros between random data.
img=$W/import-image.raw
dd if=/dev/urandom of="$img" bs=1M count=8 2>/dev/null
dd if=/dev/zero bs=1M count=16 2>/dev/null >>"$img"
dd if=/dev/urandom bs=1M count=8 2>/dev/null >>"$img"
want=$(sha256sum <"$img" | cut -c1-64)
disk=$(loop_file "$W/import-disk.img" 48) || { fail import-loop; exit 1; }
dd if=/dev/urandom of="$disk" bs=1M seek=1 count=47 oflag=direct 2>/dev/null # old data on the disk

check import-ok import_into "$disk" imp-a "$img" --json
check import-zeroed [ "$(json_field zeroed_bytes)" -ge $((16 * 1048576)) ]
check import-attach attach_ok imp-a "$disk"
check import-same [ "$(sum_of imp-a 32)" = "$want" ]
dd if=/dev/zero of="$W/zeros15" bs=1M count=15 2>/dev/null
check import-rest-zeros sh -c "dd if=/dev/mapper/diskcrypt-imp-a bs=1M skip=32 count=15 iflag=direct 2>/dev/null |
	cmp -s - $W/zeros15"
check import-audit audit_has '"event":"import","result":"ok"' '"disk_id":"imp-a"'
expect_exit import-attached-conflict 16 "is attached on this host" import "$disk" --image "$img" --disk-id imp-a \
	--type network-ssd --service-account "$SA" --user "$USER_ID"
expect_exit decrypt-refused 21 "encryption cannot be disabled" decrypt imp-a --device "$disk"
check import-detach dc detach imp-a

# An unencrypted disk (a block device, as a snapshot of one would be) is
# encrypted the same way: into a new disk, read back the same.
plain=$(loop_file "$W/import-plain.img" 24)
dd if=/dev/urandom of="$plain" bs=1M count=24 oflag=direct 2>/dev/null
disk2=$(loop_file "$W/import-disk2.img" 32)
check import-block-device import_into "$disk2" imp-d "$plain" --json
check import-block-source grep -qF "\"path\": \"$plain\"" "$DC_OUT"
check import-block-attach attach_ok imp-d "$disk2"
check import-block-same [ "$(sum_of imp-d 24)" = "$(dd if="$plain" bs=1M 2>/dev/null | sha256sum | cut -c1-64)" ]
check import-block-detach dc detach imp-d
losetup -d "$plain" "$disk2" 2>/dev/null
rm -f "$W/import-plain.img" "$W/import-disk2.img"

# Refused before anything is written: too large, not whole sectors.
small=$(loop_file "$W/import-small.img" 16)
expect_exit import-too-large 5 "more than the usable size of disk imp-b" import "$small" --image "$img" \
	--disk-id imp-b --type network-ssd --service-account "$SA" --user "$USER_ID"
check import-too-large-untouched sh -c "! cryptsetup isLuks $small"
head -c 1000 /dev/urandom >"$W/import-odd.raw"
expect_exit import-odd-size 5 "not a whole number of 512-byte sectors" import "$small" --image "$W/import-odd.raw" \
	--disk-id imp-b --type network-ssd --service-account "$SA" --user "$USER_ID"

# Interrupted: a 64 MiB image, the client killed after its first progress line.
rm -f "$W/import-image.raw" "$W/import-odd.raw"
big=$W/import-big.raw
dd if=/dev/urandom of="$big" bs=1M count=64 2>/dev/null
target=$(loop_file "$W/import-target.img" 68)
mark=$(audit_lines)
diskcrypt --json import "$target" --image "$big" --disk-id imp-c --type network-ssd --service-account "$SA" \
	--user "$USER_ID" >"$W/import-progress" 2>&1 &
check import-interrupted interrupt_client $! "$W/import-progress"
check import-cancelled wait_until 60 audit_has_since "$mark" '"event":"import","result":"failed"' '"reason":"cancelled"'
check import-no-mapping-left wait_until 10 sh -c '! [ -e /dev/mapper/diskcrypt-imp-c ]'
expect_exit import-incomplete-attach 19 "is an interrupted import" attach "$target" --disk-id imp-c \
	--type network-ssd --key "$KEY" --service-account "$SA"
check import-rerun import_into "$target" imp-c "$big"
check import-rerun-attach attach_ok imp-c "$target"
check import-rerun-same [ "$(sum_of imp-c 64)" = "$(sha256sum <"$big" | cut -c1-64)" ]
check import-rerun-detach dc detach imp-c

losetup -d "$disk" "$small" "$target" 2>/dev/null
rm -f "$W"/import-*
exit 0
