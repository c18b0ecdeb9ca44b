#!/bin/sh
# The agent keeps no state: killed (SIGKILL) with two disks attached, the
# mappings keep serving I/O; a new agent lists both from device-mapper,
# with their backing devices, and detaches them.
. /tests/attach/common.sh
check restart-setup setup_disks || exit 1
detach_all
check restart-attach-a attach_ok disk-a /dev/vda
check restart-attach-b attach_ok disk-b /dev/vdb
head -c 1048576 /dev/urandom >/tmp/restart-a
check restart-write-a dd if=/tmp/restart-a of=/dev/mapper/diskcrypt-disk-a bs=64k oflag=direct conv=notrunc

agent_stop "$SOCK" KILL
check agent-gone sh -c "! diskcrypt list >/dev/null 2>&1"
dd if=/dev/mapper/diskcrypt-disk-a of=/tmp/restart-back bs=64k count=16 iflag=direct 2>/dev/null
check io-without-agent-read cmp -s /tmp/restart-back /tmp/restart-a
check io-without-agent-write dd if=/tmp/restart-a of=/dev/mapper/diskcrypt-disk-b bs=64k oflag=direct conv=notrunc

check new-agent agent_start
check new-agent-lists dc --json list
check new-agent-sees-a grep -q '"backing_device": "/dev/vda"' "$DC_OUT"
check new-agent-sees-b grep -q '"backing_device": "/dev/vdb"' "$DC_OUT"
check new-agent-idempotent-attach dc --json attach /dev/vda --disk-id disk-a --type network-ssd --key "$KEY" --service-account "$SA"
check new-agent-idempotent-flag [ "$(json_field already_attached)" = true ]
check new-agent-detach-a dc detach disk-a
check new-agent-detach-b dc detach disk-b
check new-agent-list-empty sh -c "diskcrypt list | grep -q 'No diskcrypt disks'"
die_on_kernel_warning restart-kernel-log
