#!/bin/sh
# udev-triggered auto-attach with disks hot-plugged through QEMU's monitor
# (tests/vm/qmp-hotplug.py): a diskcrypt disk hot-added with a provisioning
# entry for its serial gets its mapping; one without an entry, or whose
# entry's service account lacks the role or whose entry disagrees with the
# header, is refused and audited; a plain LUKS2 disk starts nothing; removal
# detaches (forced while the mapping is open, nothing hangs); a guest LVM
# volume group inside the disk is not activated on the host.
# shellcheck source-path=SCRIPTDIR
. ./common.sh
T=autoattach
PROV=/etc/diskcrypt/disks.d
setup_host || fail "$T/setup" "token, key or configuration"
mkdir -p "$PROV"

# hot_add ID IMAGE SERIAL / hot_del ID SERIAL: ask the host, wait for udev.
by_id() { echo "/dev/disk/by-id/virtio-$1"; }
hot_add() {
	echo "HOTPLUG add $1 $2 $3" >>"$DCTEST_OUT"
	wait_for 600 test -e "$(by_id "$3")" && udevadm settle -t 60
}
hot_del() {
	echo "HOTPLUG del $1" >>"$DCTEST_OUT"
	wait_for 600 sh -c "! test -e $(by_id "$2")" && udevadm settle -t 60
}
devno_of() { cat "/sys/class/block/$(basename "$(readlink -f "$(by_id "$1")")")/dev"; }
unit_of() { echo "diskcrypt-attach@$(devno_of "$1").service"; }
# entry FILE SERIAL DISK_ID SA: a provisioning entry, as host provisioning writes it.
entry() {
	cat >"$PROV/$1.toml.new" <<EOE
serial = "$2"
disk_id = "$3"
type = "network-ssd"
key = "$KEY"
service_account = "$4"
EOE
	chmod 0644 "$PROV/$1.toml.new" && mv "$PROV/$1.toml.new" "$PROV/$1.toml"
}
audited() { grep "\"event\":\"auto-attach\"" "$AUDIT" | grep "\"result\":\"$1\"" | grep -q "$2"; }
mapped() { test -e "/dev/mapper/diskcrypt-$1"; }
unit_failed() { systemctl is-failed --quiet "$1"; }

# 1. An empty disk hot-added: nothing starts.
check "$T/hot-add-empty" hot_add hp1 hp1.img dc-auto-1
check "$T/empty-disk-starts-nothing" sh -c "! systemctl list-units --all --plain --no-legend 'diskcrypt-attach@*' | grep -q '$(devno_of dc-auto-1)'"

# 2. Formatted, without a provisioning entry, hot-added again: refused, audited.
check "$T/format" diskcrypt format "$(by_id dc-auto-1)" --disk-id disk-auto-1 --type network-ssd \
	--key "$KEY" --service-account "$SA" --user "$USER_ID"
check "$T/hot-remove" hot_del hp1 dc-auto-1
check "$T/hot-add-formatted" hot_add hp1 hp1.img dc-auto-1
unit=$(unit_of dc-auto-1)
check "$T/no-entry-unit-fails" wait_for 600 unit_failed "$unit"
check "$T/no-entry-not-mapped" sh -c '! test -e /dev/mapper/diskcrypt-disk-auto-1'
check "$T/no-entry-audited" audited refused "no provisioning entry"

# 3. With an entry: hot-added, attached by udev, I/O through the mapping.
entry disk-auto-1 dc-auto-1 disk-auto-1 "$SA"
check "$T/hot-remove-2" hot_del hp1 dc-auto-1
check "$T/hot-add-provisioned" hot_add hp1 hp1.img dc-auto-1
check "$T/attached-by-udev" wait_for 600 mapped disk-auto-1
unit=$(unit_of dc-auto-1)
check "$T/unit-active" systemctl is-active --quiet "$unit"
check "$T/audited-ok" audited ok disk-auto-1
head -c 1048576 /dev/urandom >"$W/data"
check "$T/write" dd if="$W/data" of=/dev/mapper/diskcrypt-disk-auto-1 bs=1M oflag=direct status=none
check "$T/read" cmp -n 1048576 "$W/data" /dev/mapper/diskcrypt-disk-auto-1
# The host does not probe the mapped device's contents.
dm=$(basename "$(readlink -f /dev/mapper/diskcrypt-disk-auto-1)")
check "$T/mapping-not-probed" sh -c "! udevadm info /dev/$dm | grep -q ID_FS_TYPE"

# 4. The guest's LVM inside the disk (written as the VM would) is not
# activated on the host when the disk comes back.
if pvcreate -q /dev/mapper/diskcrypt-disk-auto-1 >"$OUT/lvm" 2>&1 &&
	vgcreate -q guestvg /dev/mapper/diskcrypt-disk-auto-1 >>"$OUT/lvm" 2>&1 &&
	lvcreate -q -L 8M -n lv guestvg >>"$OUT/lvm" 2>&1 && vgchange -q -an guestvg >>"$OUT/lvm" 2>&1; then
	pass "$T/guest-lvm-written"
else
	fail "$T/guest-lvm-written" "$(head -c 300 "$OUT/lvm")"
fi

# 5. Removal of a closed mapping: detached.
check "$T/hot-remove-attached" hot_del hp1 dc-auto-1
check "$T/removal-detaches" wait_for 600 sh -c '! test -e /dev/mapper/diskcrypt-disk-auto-1'
check "$T/removal-audited" sh -c "grep '\"event\":\"auto-detach\"' '$AUDIT' | grep -q disk-auto-1"

# 6. Back again: attached, the guest's volume group left alone.
check "$T/hot-add-again" hot_add hp1 hp1.img dc-auto-1
check "$T/attached-again" wait_for 600 mapped disk-auto-1
udevadm settle -t 60
check "$T/guest-vg-not-activated" sh -c '! ls /dev/mapper | grep -q guestvg'
check "$T/guest-lv-not-linked" sh -c '! test -e /dev/guestvg'

# 7. Removal while the mapping is open: forced, nothing hangs; the mapping
# goes when its last user closes it.
sleep 600 </dev/mapper/diskcrypt-disk-auto-1 &
holder=$!
check "$T/hot-remove-open" hot_del hp1 dc-auto-1
check "$T/open-mapping-fails-io" wait_for 600 sh -c 'dmsetup table diskcrypt-disk-auto-1 | grep -q " error"'
kill "$holder"
wait "$holder" 2>/dev/null
check "$T/open-mapping-removed-when-closed" wait_for 600 sh -c '! test -e /dev/mapper/diskcrypt-disk-auto-1'

# 8. A plain LUKS2 disk (another subsystem) starts nothing, even with an entry.
check "$T/hot-add-plain" hot_add hp2 hp2.img dc-plain-1
printf 'plain-passphrase' >"$W/plain.key"
check "$T/plain-luks2" cryptsetup luksFormat -q --type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 \
	--key-file "$W/plain.key" "$(by_id dc-plain-1)"
entry plain-1 dc-plain-1 disk-plain-1 "$SA"
check "$T/hot-remove-plain" hot_del hp2 dc-plain-1
check "$T/hot-add-plain-again" hot_add hp2 hp2.img dc-plain-1
plain_devno=$(devno_of dc-plain-1)
sleep 2
check "$T/plain-luks2-starts-nothing" sh -c "! systemctl list-units --all --plain --no-legend 'diskcrypt-attach@*' | grep -q '$plain_devno'"
check "$T/plain-luks2-not-mapped" sh -c '! test -e /dev/mapper/diskcrypt-disk-plain-1'

# 9. An entry whose service account lacks the role, then one that disagrees
# with the header: refused (18, 11), audited, nothing mapped.
check "$T/hot-add-3" hot_add hp3 hp3.img dc-auto-3
check "$T/format-3" diskcrypt format "$(by_id dc-auto-3)" --disk-id disk-auto-3 --type network-ssd \
	--key "$KEY" --service-account "$SA" --user "$USER_ID"
entry disk-auto-3 dc-auto-3 disk-auto-3 sa-without-role
unit=$(unit_of dc-auto-3)
systemctl restart "$unit" 2>/dev/null
check "$T/role-missing-refused" unit_failed "$unit"
check "$T/role-missing-audited" audited refused "access-denied"
check "$T/role-missing-not-mapped" sh -c '! test -e /dev/mapper/diskcrypt-disk-auto-3'
entry disk-auto-3 dc-auto-3 disk-auto-9 "$SA"
systemctl restart "$unit" 2>/dev/null
check "$T/wrong-disk-id-refused" unit_failed "$unit"
check "$T/wrong-disk-id-audited" audited refused '"reason":"binding"'
check "$T/wrong-disk-id-not-mapped" sh -c '! ls /dev/mapper | grep -q diskcrypt-disk-auto-'
