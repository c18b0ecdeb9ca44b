#!/bin/sh
# The guest half of `make bench-attach`: attach latency, p50 and p99 of
# BENCH_CYCLES (default 50) attach+detach cycles of one disk through the CLI
# and the agent (SoftHSM2 unwrap, libcryptsetup keyslot, keyring, table load),
# side by side with stock `cryptsetup open`/`close` of the same volume
# through a second keyslot with the same PBKDF (PBKDF2, 1000 iterations), so
# that what differs is the KMS and the agent. Reports INFO lines; asserts
# only that every cycle worked.
. /tests/attach/common.sh
check bench-setup setup_disks || exit 1
detach_all
cycles=50
read -r cmdline </proc/cmdline
for arg in $cmdline; do
	case "$arg" in BENCH_CYCLES=*) cycles=${arg#BENCH_CYCLES=} ;; esac
done

# A second keyslot on disk-a for stock cryptsetup, same PBKDF as ours.
secret_of /dev/vda disk-a >/tmp/secret
head -c 32 /dev/urandom >/tmp/pass
check bench-stock-keyslot cryptsetup luksAddKey --batch-mode --key-file /tmp/secret --pbkdf pbkdf2 \
	--pbkdf-force-iterations 1000 --new-key-slot 1 /dev/vda /tmp/pass
rm -f /tmp/secret

# busybox sh has EPOCHREALTIME (seconds.microseconds).
# shellcheck disable=SC3028
now_us() {
	_t=$EPOCHREALTIME
	echo "${_t%.*}${_t#*.}"
}

# run_cycles NAME ATTACH-CMD DETACH-CMD: microseconds of each step, one line per cycle.
run_cycles() {
	_name=$1 _attach=$2 _detach=$3 _i=0 _bad=0
	: >"/tmp/$_name.times"
	while [ "$_i" -lt "$cycles" ]; do
		_t0=$(now_us)
		eval "$_attach" >/dev/null 2>&1 || _bad=$((_bad + 1))
		_t1=$(now_us)
		eval "$_detach" >/dev/null 2>&1 || _bad=$((_bad + 1))
		_t2=$(now_us)
		echo "$((_t1 - _t0)) $((_t2 - _t1))" >>"/tmp/$_name.times"
		_i=$((_i + 1))
	done
	[ "$_bad" -eq 0 ] || fail "bench-$_name" "$_bad of $((2 * cycles)) steps failed"
	[ "$_bad" -eq 0 ] && pass "bench-$_name"
}

# pct FILE COLUMN P: the P-th percentile (nearest rank) in ms with one decimal.
pct() {
	cut -d' ' -f"$2" "$1" | sort -n | awk -v p="$3" '{ v[NR] = $1 } END {
		r = int((p * NR + 99) / 100); if (r < 1) r = 1; printf "%.1f", v[r] / 1000 }'
}

run_cycles diskcrypt "diskcrypt attach /dev/vda --disk-id disk-a --type network-ssd --key $KEY --service-account $SA" "diskcrypt detach disk-a"
run_cycles cryptsetup "cryptsetup open --key-file /tmp/pass --key-slot 1 /dev/vda stock-a" "cryptsetup close stock-a"

info "attach latency, $cycles cycles each, ms (guest under TCG; compare the rows, not the absolute values)"
info "                                 attach p50  attach p99  detach p50  detach p99"
for n in diskcrypt cryptsetup; do
	label="diskcrypt attach/detach (agent)"
	[ "$n" = cryptsetup ] && label="cryptsetup open/close (stock)  "
	info "$(printf '%s  %10s  %10s  %10s  %10s' "$label" "$(pct /tmp/$n.times 1 50)" "$(pct /tmp/$n.times 1 99)" \
		"$(pct /tmp/$n.times 2 50)" "$(pct /tmp/$n.times 2 99)")"
done
check bench-keyslot-removed cryptsetup luksKillSlot --batch-mode /dev/vda 1
