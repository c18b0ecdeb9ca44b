#!/bin/sh
# Disk-type profiles, in the guest: each encryptable type formatted on a loop
# device and attached, its table's options as `dmsetup table` shows them
# (sector size, zero_unwritten; discards only on request and where the type
# permits them), a never-written block reading as zeros; then a host override
# ([disk_types.network-hdd] in the agent's configuration, the agent
# restarted) seen in the next attach's table.
. /tests/attach/common.sh
check profiles-agent agent_running || exit 1
detach_all

# table_tail ID: the table's words after the data offset (the feature arguments).
table_tail() { dmsetup table "diskcrypt-$1" | sed 's/.* [0-9]*:[0-9]* 2048//'; }
# reads_zeros ID: a block the guest never wrote reads as 4096 zero bytes.
reads_zeros() {
	dd if="/dev/mapper/diskcrypt-$1" bs=4096 skip=1000 count=1 iflag=direct 2>/dev/null | cmp -s - /tmp/zeros4k
}
dd if=/dev/zero of=/tmp/zeros4k bs=4096 count=1 2>/dev/null

# type sector-size expected-feature-arguments
for c in "network-hdd 512 1_zero_unwritten" "network-ssd 512 1_zero_unwritten" \
	"network-ssd-nonreplicated 4096 2_sector_size:4096_zero_unwritten" \
	"network-ssd-io-m3 4096 2_sector_size:4096_zero_unwritten"; do
	# shellcheck disable=SC2086
	set -- $c
	type=$1 ss=$2 want=" $(echo "$3" | tr _ ' ' | sed 's/sector size/sector_size/; s/zero unwritten/zero_unwritten/')"
	id=prof-$type
	dev=$(loop_file "$W/$id.img" 16) || { fail "loop-$type"; continue; }
	check "format-$type" format_disk "$dev" "$id" "$type" || continue
	check "attach-$type" attach_ok "$id" "$dev" "$type" || continue
	info "$type: $(dmsetup table "diskcrypt-$id" | sed 's/:64:logon:[^ ]*/:64:logon:.../')"
	check "table-options-$type" [ "$(table_tail "$id")" = "$want" ]
	check "logical-block-$type" [ "$(blockdev --getss "/dev/mapper/diskcrypt-$id")" = "$ss" ]
	check "unwritten-reads-zeros-$type" reads_zeros "$id"
	check "detach-$type" dc detach "$id"
	eval "dev_$(echo "$type" | tr - _)=$dev"
done

# Discards: on request, where the profile permits them (SSD types only).
# shellcheck disable=SC2154 # set by the eval above
check discards-ssd dc attach "$dev_network_ssd" --disk-id prof-network-ssd --type network-ssd --key "$KEY" \
	--service-account "$SA" --allow-discards
check discards-ssd-table [ "$(table_tail prof-network-ssd)" = " 2 allow_discards zero_unwritten" ]
check discards-ssd-detach dc detach prof-network-ssd
# shellcheck disable=SC2154
expect_exit discards-hdd-refused 2 "whose profile does not allow discards" attach "$dev_network_hdd" \
	--disk-id prof-network-hdd --type network-hdd --key "$KEY" --service-account "$SA" --allow-discards

# The host's override: network-hdd without zero_unwritten, with both
# workqueues and an inline depth; the agent restarted on that configuration.
cp "$CFG" "$W/agent-profiles.toml"
printf '\n[disk_types.network-hdd]\nzero_unwritten = false\nread_workqueue = true\nwrite_workqueue = true\ninline_depth = 4\ndiscards = true\n' \
	>>"$W/agent-profiles.toml"
# shellcheck disable=SC2119 # the main agent
agent_stop
check override-agent agent_start "$W/agent-profiles.toml"
check override-attach attach_ok prof-network-hdd "$dev_network_hdd" network-hdd
check override-table [ "$(table_tail prof-network-hdd)" = " 3 read_workqueue write_workqueue inline_depth:4" ]
expect_fail override-no-zero-unwritten reads_zeros prof-network-hdd
check override-list dc --json list
check override-list-fields sh -c "tr -d ' \n' <'$DC_OUT' | grep -q '\"inline_depth\":4'"
check override-detach dc detach prof-network-hdd
check override-discards dc attach "$dev_network_hdd" --disk-id prof-network-hdd --type network-hdd --key "$KEY" \
	--service-account "$SA" --allow-discards
check override-discards-table [ "$(table_tail prof-network-hdd)" = " 4 allow_discards read_workqueue write_workqueue inline_depth:4" ]
check override-discards-detach dc detach prof-network-hdd
# shellcheck disable=SC2119 # the main agent
agent_stop
# shellcheck disable=SC2119
check profiles-default-agent agent_start

# shellcheck disable=SC2154
for l in "$dev_network_hdd" "$dev_network_ssd" "$dev_network_ssd_nonreplicated" "$dev_network_ssd_io_m3"; do
	/usr/sbin/losetup --detach "$l" 2>/dev/null
done
rm -f "$W"/prof-*.img
