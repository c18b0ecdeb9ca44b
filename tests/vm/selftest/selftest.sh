#!/bin/sh
# shellcheck source-path=SCRIPTDIR
# Harness self-test: dm-crypt in the guest with a logon key from the session keyring.
# Needs a scratch disk as /dev/vda (its first MiB is overwritten with ciphertext).
# shellcheck source=../guest/lib.sh
. "${DCTEST_LIB:-/lib/dctest/lib.sh}"

dev=/dev/vda
map=selftest
key=diskcrypt:selftest
mib=1048576

dmesg_mark
check vda-present test -b "$dev" || exit 1
sectors=$(blockdev --getsz "$dev")

check logon-key sh -c "head -c 64 /dev/urandom | keyctl padd logon $key @s >/dev/null"
expect_fail missing-key-refused dmsetup create selftest-nokey \
	--table "0 $sectors crypt aes-xts-plain64 :64:logon:diskcrypt:nokey 0 $dev 0"
check dm-create dmsetup create "$map" \
	--table "0 $sectors crypt aes-xts-plain64 :64:logon:$key 0 $dev 0" || exit 1
# The xts(aes) implementations the crypto API holds now (AES-NI or generic).
info "xts(aes) drivers: $(awk '/^name/ { n = $3 }
	/^driver/ && n == "xts(aes)" { printf "%s ", $3 }' /proc/crypto)"
check table-shows-key-reference sh -c \
	"dmsetup table $map | grep -q ' :64:logon:$key 0 '"

# Write 1 MiB through dm-crypt, read it back, and compare with what the disk holds.
head -c "$mib" /dev/urandom >/tmp/plain
t0=$(now_ms)
check write-direct dd if=/tmp/plain of="/dev/mapper/$map" bs=1M count=1 oflag=direct
t1=$(now_ms)
check read-direct dd if="/dev/mapper/$map" of=/tmp/back bs=1M count=1 iflag=direct
t2=$(now_ms)
info "dm-crypt 1 MiB O_DIRECT: write $((t1 - t0)) ms, read $((t2 - t1)) ms"
check readback-matches cmp /tmp/plain /tmp/back
dd if="$dev" of=/tmp/raw bs=1M count=1 iflag=direct 2>/dev/null
expect_fail disk-holds-ciphertext cmp -s /tmp/plain /tmp/raw
hostcheck vda-sha256 0 "$mib" "$(sha256sum /tmp/raw | cut -d' ' -f1)"

check dm-remove dmsetup remove "$map"
check key-unlink keyctl unlink "$(keyctl search @s logon "$key")" @s
die_on_kernel_warning selftest-kernel-log
