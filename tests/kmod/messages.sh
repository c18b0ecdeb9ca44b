#!/bin/sh
# Key messages: refused while live; after suspend + wipe, resume is refused
# until a key is set; the right key serves the same data again, a wrong one
# does not.
. /tests/kmod/common.sh
kmod_setup || { fail messages-setup "cannot load dm-diskcrypt or add the key"; exit 1; }

dd if=/dev/urandom bs=64 count=1 2>/dev/null | keyctl padd logon diskcrypt:other @s >/dev/null
dm_create msg "0 $MiB diskcrypt aes-xts-plain64 $KEYREF 0 /dev/vda $((48 * MiB))" ||
	{ fail messages-create "cannot create the mapping"; exit 1; }
write_file "$DATA/pattern.bin" /dev/mapper/msg

dmesg -c >/dev/null
expect_fail msg-wipe-refused-live dmsetup message msg 0 key wipe
check msg-wipe-refused-live-reason kernel_says "key messages need a suspended device"
expect_fail msg-set-refused-live dmsetup message msg 0 key set "$KEYREF"
read_dev /dev/mapper/msg /tmp/r
check msg-live-data-intact cmp -s /tmp/r "$DATA/pattern.bin"

dmsetup suspend msg
check msg-wipe-suspended dmsetup message msg 0 key wipe
check msg-status-wiped sh -c "dmsetup status msg | grep -q ' key:wiped '"
dmesg -c >/dev/null
expect_fail msg-resume-refused-after-wipe dmsetup resume msg
check msg-resume-refused-reason kernel_says "resume refused: the key was wiped"

dmesg -c >/dev/null
expect_fail msg-set-missing-key-refused dmsetup message msg 0 key set :64:logon:diskcrypt:absent
check msg-set-missing-key-reason kernel_says "key set refused: Key not found in the caller's keyrings"
expect_fail msg-set-hex-refused dmsetup message msg 0 key set "$(od -An -tx1 "$DATA/key.bin" | tr -d ' \n')"
expect_fail msg-unknown-refused dmsetup message msg 0 frobnicate now
# A description that the table could not print back is refused, even when
# such a key exists ("\ " is an escaped space to dm's argument splitter).
keyctl padd logon "diskcrypt: spaced" @s <"$DATA/key.bin" >/dev/null
dmesg -c >/dev/null
expect_fail msg-set-whitespace-refused dmsetup message msg 0 key set ':64:logon:diskcrypt:\ spaced'
check msg-set-whitespace-reason kernel_says "key set refused: Key description must be printable, without whitespace"
expect_fail msg-resume-still-refused dmsetup resume msg

# A wrong key: the device resumes but the data is not readable.
check msg-set-other-key dmsetup message msg 0 key set :64:logon:diskcrypt:other
check msg-resume-other-key dmsetup resume msg
check msg-table-names-other-key sh -c "dmsetup table msg | grep -q ':64:logon:diskcrypt:other '"
read_dev /dev/mapper/msg /tmp/r
expect_fail msg-wrong-key-garbles cmp -s /tmp/r "$DATA/pattern.bin"

# The right key: the same data again.
dmsetup suspend msg
check msg-set-key dmsetup message msg 0 key set "$KEYREF"
check msg-resume-after-set dmsetup resume msg
echo 3 >/proc/sys/vm/drop_caches
read_dev /dev/mapper/msg /tmp/r
check msg-same-data-after-set cmp -s /tmp/r "$DATA/pattern.bin"
check msg-status-valid sh -c "dmsetup status msg | grep -q ' key:valid '"

# UTF-8 descriptions are not refused (bytes 0x80-0x9f included) and the
# table prints them back.
keyctl padd logon "diskcrypt:ключ" @s <"$DATA/key.bin" >/dev/null
dmsetup suspend msg
check msg-set-utf8-key dmsetup message msg 0 key set ":64:logon:diskcrypt:ключ"
dmsetup resume msg
check msg-table-names-utf8-key sh -c "dmsetup table msg | grep -q ':64:logon:diskcrypt:ключ '"
dm_remove msg

# Concurrent messages and status on one suspended mapping: two loops send
# "key set", alternating between two keys, while a third reads the table and
# status. Every message succeeds, every table names one of the two keys, the
# kernel logs no fault, and the data reads back with whichever key the table
# names afterwards (a torn key schedule would garble it), then with key A.
# The kernel must not log a fault (KASAN in the debug-full guest catches a
# double free or a use after free of the key description).
RACE_SECS=20
OTHER=:64:logon:diskcrypt:other
race_table() {
	echo "0 $((2 * MiB)) diskcrypt aes-xts-plain64 $1 0 /dev/vda $((50 * MiB))"
}
# MiB 1 holds the pattern under key B, MiB 0 under key A.
race_setup() {
	dm_create race "$(race_table "$OTHER")" &&
		write_file "$DATA/pattern.bin" /dev/mapper/race 1 &&
		dmsetup suspend race &&
		dmsetup message race 0 key set "$KEYREF" &&
		dmsetup resume race &&
		write_file "$DATA/pattern.bin" /dev/mapper/race 0
}
race_setup || { fail msg-race-setup "cannot prepare the race mapping"; exit 1; }
dmsetup suspend race
dmesg_mark
# dmrace sends the messages and reads the status through the dm ioctls, in a
# tight loop: dmsetup is far too slow under TCG to make requests meet.
race() {
	_tag=$1
	shift
	/usr/local/bin/dmrace "$@" >"/tmp/race.$_tag.out" 2>"/tmp/race.$_tag.err"
}
race set1 msg race "$RACE_SECS" "key set $KEYREF" "key set $OTHER" &
p1=$!
race set2 msg race "$RACE_SECS" "key set $OTHER" "key set $KEYREF" &
p2=$!
race status status race "$RACE_SECS" "$KEYREF" "$OTHER" &
p3=$!
wait "$p1" "$p2" "$p3"
read -r n1 bad1 </tmp/race.set1.out || n1=0 bad1=1
read -r n2 bad2 </tmp/race.set2.out || n2=0 bad2=1
read -r n3 bad3 </tmp/race.status.out || n3=0 bad3=1
cat /tmp/race.*.err
info "msg-race: $RACE_SECS s, $((n1 + n2)) key set messages, $n3 table and status reads"
check msg-race-messages-succeed test "$((bad1 + bad2))" = 0
check msg-race-status-names-a-key test "$bad3" = 0
race_no_fault() {
	! dmesg_since_mark | grep -E '(^|\] )(BUG|Oops|WARNING:|Call Trace|general protection)|Object already free|Poison overwritten'
}
check msg-race-no-kernel-fault race_no_fault

# Whatever key the last concurrent messages left, it decrypts its own half.
got=$(dmsetup table race)
half=1
case "$got" in
*" $KEYREF 0 "*) half=0 ;;
esac
check msg-race-resume dmsetup resume race
drop_caches
read_dev /dev/mapper/race /tmp/r 1 "$half"
check msg-race-key-matches-table cmp -s /tmp/r "$DATA/pattern.bin"
dmsetup suspend race
check msg-race-set-final-key dmsetup message race 0 key set "$KEYREF"
dmsetup resume race
drop_caches
read_dev /dev/mapper/race /tmp/r 1 0
check msg-race-data-after-final-key cmp -s /tmp/r "$DATA/pattern.bin"
dm_remove race
