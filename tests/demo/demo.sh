#!/bin/sh
# The guest half of `make demo`: the diskcrypt target at work, narrated.
# Each step is a check, so the demo fails loudly if any step does.
. /tests/kmod/common.sh

say() { info "$*"; }

say "== diskcrypt demo: the dm-diskcrypt kernel target in Debian's kernel =="
say "1. Load the module; device-mapper now knows the 'diskcrypt' target."
check demo-load /sbin/modprobe dm-diskcrypt
say "   $(dmsetup targets | grep diskcrypt)"

say "2. Put the disk's 64-byte AES-256-XTS key in the kernel keyring as a 'logon'"
say "   key (user space cannot read a logon key back). The table names the key;"
say "   it never contains key bytes."
check demo-key sh -c "keyctl padd logon $KEYDESC @s <$DATA/key.bin >/dev/null"

say "3. Map /dev/vda through diskcrypt: 4096-byte crypto sectors, like an io-m3 disk."
check demo-create dm_create demo "0 $((16 * MiB)) diskcrypt aes-xts-plain64 $KEYREF 0 /dev/vda 0 2 sector_size:4096 iv_large_sectors"
say "   dmsetup table:  $(dmsetup table demo)"
say "   dmsetup status: $(dmsetup status demo)"

say "4. Write a message through the mapping, then look at the raw device."
printf 'Hello from diskcrypt: this line is plaintext only above the target.\n' >/tmp/msg
dd if=/dev/zero bs=4096 count=1 2>/dev/null | cat /tmp/msg - | head -c 4096 >/tmp/block
check demo-write dd if=/tmp/block of=/dev/mapper/demo bs=4096 count=1 oflag=direct
say "   through the mapping: $(dd if=/dev/mapper/demo bs=4096 count=1 iflag=direct 2>/dev/null | head -n 1)"
say "   on the raw device:   $(dd if=/dev/vda bs=4096 count=1 iflag=direct 2>/dev/null | od -An -tx1 -N 16 | tr -s " ")..."
expect_fail demo-raw-is-ciphertext sh -c "dd if=/dev/vda bs=4096 count=1 iflag=direct 2>/dev/null | grep -q 'Hello from diskcrypt'"

say "5. Recovery with stock tools: dm-crypt with the same key reads the same data."
check demo-dmcrypt-create dm_create stock "0 $((16 * MiB)) crypt aes-xts-plain64 $KEYREF 0 /dev/vda 0 2 sector_size:4096 iv_large_sectors"
say "   through dm-crypt:    $(dd if=/dev/mapper/stock bs=4096 count=1 iflag=direct 2>/dev/null | head -n 1)"
check demo-dmcrypt-reads sh -c "dd if=/dev/mapper/stock bs=4096 count=1 iflag=direct 2>/dev/null | cmp -s - /tmp/block"
dm_remove stock

say "6. Revocation on the host: suspend, wipe the key; the device cannot resume."
dmsetup suspend demo
check demo-wipe dmsetup message demo 0 key wipe
say "   dmsetup status: $(dmsetup status demo)"
expect_fail demo-resume-refused dmsetup resume demo
say "   resume refused: $(dmesg | grep 'resume refused' | tail -n 1 | sed 's/^\[[^]]*\] //')"

say "7. Set the key again from the keyring and resume: the data is back."
check demo-set dmsetup message demo 0 key set "$KEYREF"
check demo-resume dmsetup resume demo
check demo-read-again sh -c "dd if=/dev/mapper/demo bs=4096 count=1 iflag=direct 2>/dev/null | cmp -s - /tmp/block"
say "   dmsetup status: $(dmsetup status demo)"

say "8. Tear down: remove the mapping and unload the module."
check demo-remove dmsetup remove demo
check demo-unload /sbin/rmmod dm_diskcrypt
say "== demo complete =="
