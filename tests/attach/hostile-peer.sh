#!/bin/sh
# Many disks, in the guest: `list` shows 1000 attached disks (the paged
# protocol) as one table and as one JSON document, exit 0.
. /tests/attach/common.sh
check hostile-peer-setup setup_disks || exit 1

# (One byte 0xff and other bytes that are not UTF-8 on the socket: the host
# test e2e-tests "hostile peer" sends them to a real agent; the guest has no
# raw SOCK_SEQPACKET client.)
check agent-answers dc status

# 1000 fake diskcrypt mappings (zero target, no backing device), made in one
# dmsetup call where it supports --concise, else one by one.
N=1000
fake_spec() {
	i=1
	while [ "$i" -le "$N" ]; do
		n=$(printf '%04d' "$i")
		printf 'diskcrypt-fake%s,DISKCRYPT-fake%s,,,0 8 zero' "$n" "$n"
		[ "$i" -lt "$N" ] && printf ';'
		i=$((i + 1))
	done
}
make_fakes() {
	if dmsetup create --concise "$(fake_spec)" 2>"$W/concise.err"; then
		return 0
	fi
	i=1
	while [ "$i" -le "$N" ]; do
		n=$(printf '%04d' "$i")
		dmsetup create "diskcrypt-fake$n" --uuid "DISKCRYPT-fake$n" --table "0 8 zero" || return 1
		i=$((i + 1))
	done
}
# Many names per dmsetup call (one process each costs seconds under TCG),
# then one by one for whatever is left.
remove_fakes() {
	dmsetup ls | awk '/^diskcrypt-fake/ {print $1}' | xargs -n 200 dmsetup remove 2>/dev/null
	dmsetup ls | awk '/^diskcrypt-fake/ {print $1}' | while read -r name; do
		dmsetup remove "$name" || echo "cannot remove $name" >&2
	done
}
count_fakes() { dmsetup ls | grep -c '^diskcrypt-fake'; }

start=$(date +%s)
check fakes-made make_fakes
check fakes-count test "$(count_fakes)" -eq "$N"
info "made $N fake mappings in $(($(date +%s) - start)) s"

start=$(date +%s)
if dc list; then
	pass list-1000-exit-0
else
	fail list-1000-exit-0 "exit $_dc_rc: $(head -c 300 "$DC_ERR")"
fi
info "list of $N+ disks took $(($(date +%s) - start)) s"
check list-1000-rows test "$(grep -c '^fake[0-9]\{4\} ' "$DC_OUT")" -eq "$N"
check list-first-and-last sh -c "grep -q '^fake0001 ' '$DC_OUT' && grep -q '^fake1000 ' '$DC_OUT'"
check list-one-header test "$(grep -c '^DISK-ID' "$DC_OUT")" -eq 1

if dc --json list; then
	pass json-list-1000-exit-0
else
	fail json-list-1000-exit-0 "exit $_dc_rc: $(head -c 300 "$DC_ERR")"
fi
check json-list-1000-disks test "$(grep -c '"disk_id": "fake[0-9]\{4\}"' "$DC_OUT")" -eq "$N"
check json-list-one-document test "$(grep -c '^{' "$DC_OUT")" -eq 1
check json-list-no-next sh -c "! grep -q '\"next\"' '$DC_OUT'"

check agent-alive-after-list dc status

start=$(date +%s)
remove_fakes
check fakes-removed test "$(count_fakes)" -eq 0
info "removed the fake mappings in $(($(date +%s) - start)) s"
