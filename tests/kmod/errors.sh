#!/bin/sh
# Errors from below: with the device under diskcrypt failing (dm-error, then
# dm-flakey), reads and writes fail with EIO and nothing hangs; when the
# device recovers, so does the target, with the data intact.
. /tests/kmod/common.sh
kmod_setup || { fail errors-setup "cannot load dm-diskcrypt or add the key"; exit 1; }

len=$((16 * MiB)) off=$((220 * MiB))
dm_create lower "0 $len linear /dev/vda $off"
dm_create er "0 $len diskcrypt aes-xts-plain64 $KEYREF 0 /dev/mapper/lower 0"
write_file "$DATA/pattern.bin" /dev/mapper/er
dd if=/dev/urandom of=/tmp/piece bs=4k count=1 2>/dev/null

swap_lower() {
	dmsetup suspend lower && dmsetup load lower --table "$1" && dmsetup resume lower
}

check errors-lower-to-error swap_lower "0 $len error"
dd if=/dev/mapper/er of=/tmp/r bs=64k count=16 iflag=direct 2>/tmp/err
rc=$?
check errors-read-fails test "$rc" != 0
check errors-read-eio grep -q 'Input/output error' /tmp/err
dd if="$DATA/pattern.bin" of=/dev/mapper/er bs=64k count=16 seek=16 oflag=direct conv=notrunc 2>/tmp/err
rc=$?
check errors-write-fails test "$rc" != 0
check errors-write-eio grep -q 'Input/output error' /tmp/err
check errors-counted test "$(status_field er errors)" -gt 0

check errors-lower-recovers swap_lower "0 $len linear /dev/vda $off"
read_dev /dev/mapper/er /tmp/r
check errors-target-recovers cmp -s /tmp/r "$DATA/pattern.bin"

# Flaky: up 1 s, down 1 s. For 6 s, small direct reads and writes; some fail,
# none hangs (each one is bounded).
check errors-lower-to-flakey swap_lower "0 $len flakey /dev/vda $off 1 1"
ok=0 bad=0 end=$(($(now_ms) + 6000))
while [ "$(now_ms)" -lt "$end" ]; do
	if timeout 20 dd if=/dev/mapper/er of=/dev/null bs=4k count=1 skip=$((ok % 256)) iflag=direct 2>/dev/null &&
		timeout 20 dd if=/tmp/piece of=/dev/mapper/er bs=4k count=1 seek=$((1024 + ok % 256)) oflag=direct conv=notrunc 2>/dev/null; then
		ok=$((ok + 1))
	else
		bad=$((bad + 1))
	fi
done 2>/dev/null
info "errors: flakey device, $ok rounds succeeded, $bad failed"
check errors-flakey-some-succeed test "$ok" -gt 0
check errors-flakey-some-fail test "$bad" -gt 0
check errors-lower-back swap_lower "0 $len linear /dev/vda $off"
read_dev /dev/mapper/er /tmp/r
check errors-data-intact-after-flakey cmp -s /tmp/r "$DATA/pattern.bin"
check errors-remove dmsetup remove er
dm_remove lower
