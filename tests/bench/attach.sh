#!/bin/sh
# The guest half of `make bench-attach`: attach latency, p50 and p99 of
# BENCH_CYCLES (default 50) attach+detach cycles of one disk through the CLI
# and the agent (SoftHSM2 unwrap, libcryptsetup keyslot, keyring, table load),
# side by side with stock `cryptsetup open`/`close` of the same volume
# through a second keyslot with the same PBKDF (PBKDF2, 1000 iterations), so
# that what differs is the KMS and the agent; then import and snapshot copy
# throughput next to dd through dm-crypt and onto the raw device. Reports INFO lines; asserts
# only that every cycle worked.
. /tests/attach/common.sh
check bench-setup setup_disks || exit 1
detach_all
cycles=50
read -r cmdline </proc/cmdline
for arg in $cmdline; do
	case "$arg" in BENCH_CYCLES=*) cycles=${arg#BENCH_CYCLES=} ;; esac
done


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

# One attach through the CLI with --json: the agent's own elapsed_ms and
# kms_ms (of it, the time spent waiting for the KMS) go to /tmp/kms.split.
kms_split_attach() {
	dc --json attach /dev/vda --disk-id disk-a --type network-ssd --key "$KEY" --service-account "$SA" || return 1
	echo "$(json_field elapsed_ms) $(json_field kms_ms)" >>/tmp/kms.split
}
: >/tmp/kms.split
run_cycles diskcrypt kms_split_attach "diskcrypt detach disk-a"
# Then a second keyslot on disk-a for stock cryptsetup, same PBKDF as ours
# (after diskcrypt's cycles: the agent refuses a header with two keyslots).
secret_of /dev/vda disk-a >/tmp/secret
head -c 32 /dev/urandom >/tmp/pass
check bench-stock-keyslot cryptsetup luksAddKey --batch-mode --key-file /tmp/secret --pbkdf pbkdf2 \
	--pbkdf-force-iterations 1000 --new-key-slot 1 /dev/vda /tmp/pass
rm -f /tmp/secret
run_cycles cryptsetup "cryptsetup open --key-file /tmp/pass --key-slot 1 /dev/vda stock-a" "cryptsetup close stock-a"

info "attach latency, $cycles cycles each, ms (guest under TCG; compare the rows, not the absolute values)"
info "                                 attach p50  attach p99  detach p50  detach p99"
for n in diskcrypt cryptsetup; do
	label="diskcrypt attach/detach (agent)"
	[ "$n" = cryptsetup ] && label="cryptsetup open/close (stock)  "
	info "$(printf '%s  %10s  %10s  %10s  %10s' "$label" "$(pct /tmp/$n.times 1 50)" "$(pct /tmp/$n.times 1 99)" \
		"$(pct /tmp/$n.times 2 50)" "$(pct /tmp/$n.times 2 99)")"
done
# The share of an attach (as the agent times it) spent outside the KMS call.
# median COLUMN: the median of a column of /tmp/kms.split (busybox awk has no asort).
median() { cut -d' ' -f"$1" /tmp/kms.split | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
awk '{ printf "%s %s %.4f\n", $1, $2, ($1 > 0) ? ($1 - $2) / $1 : 0 }' /tmp/kms.split >/tmp/kms.tmp
mv /tmp/kms.tmp /tmp/kms.split
info "$(printf 'agent attach p50 %s ms, of it the KMS unwrap p50 %s ms (PKCS#11, SoftHSM2): %.0f%% outside the KMS call' \
	"$(median 1)" "$(median 2)" "$(awk -v f="$(median 3)" 'BEGIN { print 100 * f }')")"
check bench-keyslot-removed cryptsetup luksKillSlot --batch-mode /dev/vda 1

# Copies: import MB/s next to dd of the same image through dm-crypt and onto
# the raw device, and a snapshot copy next to a plain copy of the device
# (4 MiB O_DIRECT dd), on loop devices over files in the guest's root file
# system (memory); random data, so that import encrypts every chunk. Two
# figures for diskcrypt: the whole command (format, KMS, mapping included)
# and its data phase (copy_ms in its JSON).
mib=64
B=/bench-copies
mkdir -p "$B"
# mbs START_US END_US: MB/s of $mib MiB, one decimal.
mbs() { awk -v b=$((mib * 1048576)) -v us=$(($2 - $1)) 'BEGIN { printf "%.1f", b / us }'; }
# mbs_ms MS: MB/s of $mib MiB in MS milliseconds.
mbs_ms() { awk -v b=$((mib * 1048576)) -v ms="$1" 'BEGIN { printf "%.1f", b / (ms * 1000) }'; }
# loop_off DEV FILE: detach a loop device and free its file (memory is short).
loop_off() { losetup -d "$1" 2>/dev/null; rm -f "$2"; }
dd if=/dev/urandom of="$B/image.raw" bs=1M count=$mib 2>/dev/null
l1=$(loop_file "$B/l1.img" $((mib + 4)))
t0=$(now_us)
dd if="$B/image.raw" of="$l1" bs=4M oflag=direct 2>/dev/null
t1=$(now_us)
loop_off "$l1" "$B/l1.img"
l2=$(loop_file "$B/l2.img" $((mib + 4)))
hex=$(head -c 64 /dev/urandom | xxd -p | tr -d '\n')
dmsetup create bench-crypt --table "0 $(((mib + 4) * 2048)) crypt aes-xts-plain64 $hex 0 $l2 0"
t2=$(now_us)
dd if="$B/image.raw" of=/dev/mapper/bench-crypt bs=4M oflag=direct 2>/dev/null
t3=$(now_us)
dmsetup remove bench-crypt
loop_off "$l2" "$B/l2.img"
l3=$(loop_file "$B/l3.img" $((mib + 4)))
t4=$(now_us)
check bench-import dc --json import "$l3" --image "$B/image.raw" --disk-id bench-i --type network-ssd \
	--service-account "$SA" --user "$USER_ID"
t5=$(now_us)
import_ms=$(json_field copy_ms)
# The same dd through the diskcrypt target (the imported disk attached): the
# kernel target's rate, without the agent's streaming.
check bench-attach-imported dc attach "$l3" --disk-id bench-i --type network-ssd --key "$KEY" --service-account "$SA"
t8=$(now_us)
dd if="$B/image.raw" of=/dev/mapper/diskcrypt-bench-i bs=4M oflag=direct 2>/dev/null
t9=$(now_us)
check bench-detach-imported dc detach bench-i
rm -f "$B/image.raw"
l4=$(loop_file "$B/l4.img" $((mib + 4)))
t5b=$(now_us)
check bench-snapshot dc --json copy "$l3" --disk-id bench-i --key "$KEY" --service-account "$SA" \
	--user "$USER_ID" --to "$l4" --to-id bench-s --to-kind snapshot
t6=$(now_us)
copy_ms=$(json_field copy_ms)
dd if="$l3" of="$l4" bs=4M iflag=direct oflag=direct 2>/dev/null
t7=$(now_us)
info "copies, $mib MiB of random data, MB/s (same guest, same run)"
info "$(printf '  onto the raw device (dd)        %8s' "$(mbs "$t0" "$t1")")"
info "$(printf '  through dm-crypt (dd)           %8s' "$(mbs "$t2" "$t3")")"
info "$(printf '  through diskcrypt (dd)          %8s' "$(mbs "$t8" "$t9")")"
info "$(printf '  diskcrypt import, data phase    %8s  (%.2fx dm-crypt)' "$(mbs_ms "$import_ms")" \
	"$(awk -v a=$((t3 - t2)) -v b="$import_ms" 'BEGIN { print a / (b * 1000) }')")"
info "$(printf '  diskcrypt copy, data phase      %8s  (%.2fx the plain copy)' "$(mbs_ms "$copy_ms")" \
	"$(awk -v a=$(((t7 - t6) * mib / (mib + 4))) -v b="$copy_ms" 'BEGIN { print a / (b * 1000) }')")"
info "$(printf '  plain copy of the device (dd)   %8s  (%s MiB: header and data)' \
	"$(mib=$((mib + 4)) && mbs "$t6" "$t7")" $((mib + 4)))"
info "(whole commands, format or KMS and header work included: import $(mbs "$t4" "$t5"), copy $(mbs "$t5b" "$t6") MB/s)"
loop_off "$l3" "$B/l3.img"
loop_off "$l4" "$B/l4.img"
rm -rf "$B"
