#!/bin/sh
# One operation at a time per disk, different disks in parallel: two disks
# attached at the same moment both succeed; one disk attached twice at the
# same moment gives one attach and one idempotent answer; the same for
# detach racing attach on one disk (the lock orders them, nothing breaks).
. /tests/attach/common.sh
check parallel-setup setup_disks || exit 1
detach_all

diskcrypt --json attach /dev/vda --disk-id disk-a --type network-ssd --key "$KEY" --service-account "$SA" >/tmp/p1 2>&1 &
p1=$!
diskcrypt --json attach /dev/vdb --disk-id disk-b --type network-ssd-io-m3 --key "$KEY" --service-account "$SA" >/tmp/p2 2>&1 &
p2=$!
wait "$p1"
r1=$?
wait "$p2"
r2=$?
check two-disks-at-once [ "$r1$r2" = 00 ]
check two-disks-mapped sh -c "test -b /dev/mapper/diskcrypt-disk-a && test -b /dev/mapper/diskcrypt-disk-b"
check parallel-detach-b dc detach disk-b

for i in 1 2 3; do
	diskcrypt --json attach /dev/vdb --disk-id disk-b --type network-ssd-io-m3 --key "$KEY" --service-account "$SA" >/tmp/s1 2>&1 &
	p1=$!
	diskcrypt --json attach /dev/vdb --disk-id disk-b --type network-ssd-io-m3 --key "$KEY" --service-account "$SA" >/tmp/s2 2>&1 &
	p2=$!
	wait "$p1"
	r1=$?
	wait "$p2"
	r2=$?
	check "same-disk-twice-$i" [ "$r1$r2" = 00 ]
	fresh=$(cat /tmp/s1 /tmp/s2 | grep -c '"already_attached": false')
	again=$(cat /tmp/s1 /tmp/s2 | grep -c '"already_attached": true')
	check "same-disk-one-attach-one-idempotent-$i" [ "$fresh:$again" = 1:1 ]
	check "same-disk-detach-$i" dc detach disk-b
done
check parallel-detach-a dc detach disk-a
check audit-parallel-events audit_has '"event":"attach"' '"result":"ok"' '"disk_id":"disk-b"'
die_on_kernel_warning parallel-kernel-log
