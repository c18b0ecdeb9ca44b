#!/bin/sh
# The table grammar: every malformed table in bad-tables.txt is refused with
# its own errno and reason; the table and status round-trip without key bytes;
# the target still works after all the refusals.
. /tests/kmod/common.sh
kmod_setup || { fail tables-setup "cannot load dm-diskcrypt or add the key"; exit 1; }

# Keys the bad tables refer to.
dd if=/dev/urandom bs=32 count=1 2>/dev/null | keyctl padd logon diskcrypt:short @s >/dev/null
keyctl padd user diskcrypt:user @s <"$DATA/key.bin" >/dev/null
keyctl revoke "$(keyctl padd logon diskcrypt:revoked @s <"$DATA/key.bin")"
dd if=/dev/urandom of=/tmp/half bs=32 count=1 2>/dev/null
cat /tmp/half /tmp/half | keyctl padd logon diskcrypt:weak @s >/dev/null

hex=$(od -An -tx1 "$DATA/key.bin" | tr -d ' \n')
long=$(printf 'a%.0s' $(seq 200))
size=$(blockdev --getsz /dev/vda)

trim() {
	printf '%s' "$1" | sed -e 's/^[[:space:]]*//' -e 's/[[:space:]]*$//'
}

n=0
grep -v '^#' /tests/kmod/bad-tables.txt | while IFS='|' read -r errno reason table; do
	[ -n "$table" ] || continue
	n=$((n + 1))
	errno=$(trim "$errno") reason=$(trim "$reason")
	table=$(trim "$table" | sed -e "s|@KEY@|$KEYREF|g" -e "s|@DEV@|/dev/vda|g" \
		-e "s|@SZ@|$size|g" -e "s|@HEX@|$hex|g" -e "s|@LONG@|$long|g")
	name=$(printf 'bad-table-%02d' "$n")
	dmesg -c >/dev/null
	if dm_create bad "$table" 2>/dev/null; then
		fail "$name" "accepted: $table"
		dm_remove bad
		continue
	fi
	dm_remove bad
	if kernel_says "diskcrypt: $reason ($errno)"; then
		pass "$name"
	else
		fail "$name" "want '$reason ($errno)', kernel said: $(dmesg | grep -F 'diskcrypt' | tail -n 1)"
	fi
done

# A key description with whitespace would not print back: refused even when
# such a key exists. dmsetup escapes backslashes, so dmrace loads the table
# through the ioctl with dm's escaped space ("\ ") intact.
keyctl padd logon "diskcrypt: spaced" @s <"$DATA/key.bin" >/dev/null
dmesg -c >/dev/null
expect_fail table-desc-space-refused /usr/local/bin/dmrace table badws 2048 diskcrypt \
	"aes-xts-plain64 :64:logon:diskcrypt:\\ spaced 0 /dev/vda 0"
check table-desc-space-reason kernel_says \
	"diskcrypt: Key description must be printable, without whitespace or backslashes (-EINVAL)"
dm_remove badws

# Round trip: the table re-prints in canonical form, and reloading what it
# prints gives the same table again.
devno=$(cat /sys/block/vda/dev)
dm_create rt "0 8192 diskcrypt aes-xts-plain64 $KEYREF 8 /dev/vda 131072 4 zero_unwritten allow_discards iv_large_sectors sector_size:4096"
want="0 8192 diskcrypt aes-xts-plain64 $KEYREF 8 $devno 131072 4 sector_size:4096 iv_large_sectors allow_discards zero_unwritten"
got=$(dmsetup table rt)
if [ "$got" = "$want" ]; then pass table-roundtrip-print; else fail table-roundtrip-print "got: $got"; fi
dmsetup reload rt --table "$got" && dmsetup resume rt
check table-roundtrip-reload test "$(dmsetup table rt)" = "$want"
check table-status-key-valid sh -c "dmsetup status rt | grep -q ' key:valid reads:'"
all="$(dmsetup table rt) $(dmsetup table --showkeys rt) $(dmsetup status rt)"
case "$all" in
*"$hex"*) fail table-no-key-bytes "key hex appears in table or status" ;;
*) pass table-no-key-bytes ;;
esac
dm_remove rt

# Alternative implementations named through capi: are accepted.
for alg in "cryptd(xts(ecb(aes-generic)))" "xts(ecb(aes-generic))"; do
	check "table-capi-$alg" dm_create capi "0 $MiB diskcrypt capi:$alg-plain64 $KEYREF 0 /dev/vda $((64 * MiB))"
	dm_remove capi
done

# After all of that the target still works.
dm_create after "0 $MiB diskcrypt aes-xts-plain64 $KEYREF 0 /dev/vda $((64 * MiB))" &&
	write_file "$DATA/pattern.bin" /dev/mapper/after &&
	read_dev /dev/mapper/after /tmp/r
check tables-target-works-after cmp -s /tmp/r "$DATA/pattern.bin"
dm_remove after
