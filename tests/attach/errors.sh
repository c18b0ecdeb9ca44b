#!/bin/sh
# Every refusal a user can hit, with its exit code and a message that names
# the object: bad or missing arguments (disk type and key included), a file
# instead of a block device, no diskcrypt header, a header of another disk
# (binding), a disk id or device already in
# use, the KMS key gone, the HSM down (module missing, token gone), the agent
# not running, detach of a busy mapping (open, mounted), detach --force,
# detach and status of unknown disks, a foreign mapping with our name.
. /tests/attach/common.sh
check errors-setup setup_disks || exit 1
detach_all

# Arguments (checked by the CLI before anything is sent).
expect_exit bad-disk-id 2 "invalid disk id 'a b'" attach /dev/vda --disk-id "a b" --type network-ssd --key "$KEY" --service-account "$SA"
expect_exit bad-service-account 2 "invalid service account 'x y'" attach /dev/vda --disk-id disk-a --type network-ssd --key "$KEY" --service-account "x y"
expect_exit missing-service-account 2 "--service-account is required" attach /dev/vda --disk-id disk-a --type network-ssd --key "$KEY"
expect_exit missing-type 2 "--type is required" attach /dev/vda --disk-id disk-a --key "$KEY" --service-account "$SA"
expect_exit missing-key 2 "--key is required" attach /dev/vda --disk-id disk-a --type network-ssd --service-account "$SA"
expect_exit verify-missing-key 2 "--key is required" verify /dev/vda --disk-id disk-a --type network-ssd --service-account "$SA"
expect_exit format-missing-user 2 "--user is required" format /dev/nope --disk-id disk-a --type network-ssd --service-account "$SA"
expect_exit unknown-type 2 "unknown disk type" attach /dev/vda --disk-id disk-a --type floppy --key "$KEY" --service-account "$SA"
expect_exit local-type 2 "is a local disk, and local disks cannot be encrypted" attach /dev/vda --disk-id disk-a --type local-ssd --key "$KEY" --service-account "$SA"
expect_exit missing-disk-id 2 "disk-id is required" detach
expect_exit agent-not-running 3 "cannot reach diskcrypt-agent at /run/none.sock" --socket /run/none.sock list

# Devices.
: >"$W/plain-file.img"
expect_exit file-not-block-device 5 "is not a block device" attach "$W/plain-file.img" --disk-id disk-f --type network-ssd --key "$KEY" --service-account "$SA"
expect_exit missing-device 5 "cannot open device /dev/nope" attach /dev/nope --disk-id disk-f --type network-ssd --key "$KEY" --service-account "$SA"
empty=$(loop_file "$W/empty.img" 8)
expect_exit no-header 7 "holds no valid LUKS2 header" attach "$empty" --disk-id disk-e --type network-ssd --key "$KEY" --service-account "$SA"

# Binding: disk-a's header on another device, attached as disk-b (with
# disk-a's type and key: the disk id is what differs).
dd if=/dev/vda of="$W/copy-of-a.img" bs=1M count=8 2>/dev/null
copy=$(/usr/sbin/losetup --find --show "$W/copy-of-a.img")
expect_exit binding-refused 11 "this header belongs to disk disk-a, not disk-b" attach "$copy" --disk-id disk-b --type network-ssd --key "$KEY" --service-account "$SA"
check binding-no-mapping sh -c "! test -e /dev/mapper/diskcrypt-disk-b"
check audit-binding-refusal audit_has '"event":"attach"' '"result":"refused"' '"reason":"binding"' '"disk_id":"disk-b"' "\"service_account\":\"$SA\"" "\"device\":\"$copy\""

# One disk, one device.
check errors-attach-b attach_ok disk-b /dev/vdb
expect_exit same-id-other-device 16 "disk disk-b is already attached from device /dev/vdb" attach /dev/vda --disk-id disk-b --type network-ssd-io-m3 --key "$KEY" --service-account "$SA"
expect_exit same-device-other-id 16 "device /dev/vdb (254:16) is already attached as disk disk-b" attach /dev/vdb --disk-id disk-x --type network-ssd-io-m3 --key "$KEY" --service-account "$SA"

# The KMS key gone: a disk under a second key, then the key deleted (the
# policy still lets $SA decrypt with it: the refusal is the KMS's).
check second-key hsm_key "$KEY2_ID"
third=$(loop_file "$W/third.img" 8)
check format-under-second-key format_disk "$third" disk-c network-ssd --key "hsm:$KEY2_ID"
pkcs11-tool --module "$MODULE" --token-label diskcrypt --login --pin "$PIN" --delete-object --type secrkey \
	--id "$(hex_of "$KEY2_ID")" >/dev/null 2>&1
expect_exit kms-key-missing 10 "no secret key with CKA_ID '$KEY2_ID'" attach "$third" --disk-id disk-c --type network-ssd --key "hsm:$KEY2_ID" --service-account "$SA"
check audit-unwrap-failed audit_has '"event":"unwrap"' '"result":"failed"' '"reason":"kms-key"' '"disk_id":"disk-c"'

# The HSM down: agents whose module is missing, or whose token is gone.
write_config "$W/no-module.toml" /usr/lib/softhsm/missing.so diskcrypt /run/diskcrypt/no-module.sock
write_config "$W/no-token.toml" "$MODULE" gone-token /run/diskcrypt/no-token.sock
check start-agent-no-module agent_start "$W/no-module.toml" /run/diskcrypt/no-module.sock "$W/agent-no-module.log"
check start-agent-no-token agent_start "$W/no-token.toml" /run/diskcrypt/no-token.sock "$W/agent-no-token.log"
expect_exit hsm-module-missing 8 "/usr/lib/softhsm/missing.so" --socket /run/diskcrypt/no-module.sock attach /dev/vda --disk-id disk-a --type network-ssd --key "$KEY" --service-account "$SA"
expect_exit hsm-token-gone 8 "gone-token" --socket /run/diskcrypt/no-token.sock attach /dev/vda --disk-id disk-a --type network-ssd --key "$KEY" --service-account "$SA"
agent_stop /run/diskcrypt/no-module.sock
agent_stop /run/diskcrypt/no-token.sock
check nothing-mapped-by-failures sh -c "! test -e /dev/mapper/diskcrypt-disk-a && ! test -e /dev/mapper/diskcrypt-disk-c"

# Busy detach: held open by a process, then mounted.
check errors-attach-a attach_ok disk-a /dev/vda
# shellcheck disable=SC2217 # the redirect is the point: it holds the mapping open
sleep 600 </dev/mapper/diskcrypt-disk-a &
holder=$!
sleep 0.2
expect_exit detach-open-refused 15 "open by pid $holder (sleep)" detach disk-a
check still-mapped-after-refusal mapped disk-a
kill "$holder"
wait "$holder" 2>/dev/null
mke2fs -q /dev/mapper/diskcrypt-disk-a >/dev/null 2>&1
mkdir -p /mnt/a
/sbin/modprobe ext4
check mount-a mount -t ext2 /dev/mapper/diskcrypt-disk-a /mnt/a
expect_exit detach-mounted-refused 15 "mounted on /mnt/a" detach disk-a
check audit-busy-refusal audit_has '"event":"detach"' '"result":"refused"' '"reason":"busy"' '"disk_id":"disk-a"'
check umount-a umount /mnt/a
check detach-after-umount dc detach disk-a

# detach --force while open: I/O fails at once, the mapping goes when closed.
check errors-reattach-a attach_ok disk-a /dev/vda
# shellcheck disable=SC2217 # the redirect is the point: it holds the mapping open
sleep 600 </dev/mapper/diskcrypt-disk-a &
holder=$!
sleep 0.2
check detach-force dc --json detach --force disk-a
check detach-force-deferred [ "$(json_field deferred)" = true ]
check detach-force-dm-error sh -c "dmsetup table diskcrypt-disk-a | grep -q ' error'"
expect_fail io-fails-after-force dd if=/dev/mapper/diskcrypt-disk-a of=/dev/null bs=4k count=1 iflag=direct
kill "$holder"
wait "$holder" 2>/dev/null
gone() { ! dmsetup info diskcrypt-disk-a >/dev/null 2>&1; }
check force-removed-when-closed wait_until 5 gone

# Unknown disks and foreign mappings.
expect_exit detach-unknown 14 "disk nosuch is not attached on this host" detach nosuch
expect_exit status-unknown 14 "disk nosuch is not attached on this host" status nosuch
check foreign-mapping dmsetup create diskcrypt-foreign --table "0 8 zero"
expect_exit detach-foreign 16 "was not made by diskcrypt" detach foreign
expect_exit attach-over-foreign 16 "was not made by diskcrypt" attach /dev/vda --disk-id foreign --type network-ssd --key "$KEY" --service-account "$SA"
check list-ignores-foreign sh -c "! diskcrypt list | grep -q foreign"
dmsetup remove diskcrypt-foreign
detach_all
/usr/sbin/losetup -D
die_on_kernel_warning errors-kernel-log
