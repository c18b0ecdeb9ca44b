#!/usr/bin/env bash
# Self-test of the QEMU test harness (tests/vm/).
#
# Usage: tests/vm/selftest.sh [--quick]
#   --quick   only the dm-crypt runs, not the failure-detection runs
#
# Builds the module in tests/vm/dummy-kmod/ and build/vm/selftest.cpio from
# tests/vm/selftest/, then:
#  1. runs selftest.sh (dm-crypt with a logon key) under -cpu max and -cpu qemu64, each
#     on a fresh 64 MiB sparse disk, and checks the guest's HOSTCHECK line against the
#     disk image on the host; the max run also loads the module by name (module.sh);
#  2. checks that failures are caught: a failing check, a script exiting non-zero
#     without a FAIL, and a kernel Call Trace must give exit 1; a kernel panic, and a
#     guest that never reports a verdict ("timeout"), must give exit 2.
# Two VMs run at a time (one per core). Exits non-zero if any expectation is unmet.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD=${DISKCRYPT_BUILD:-$ROOT/build}
VM=$BUILD/vm
RUN=$ROOT/tests/vm/run.sh

quick=0
case "${1:-}" in
"") ;;
--quick) quick=1 ;;
*)
	echo "usage: tests/vm/selftest.sh [--quick]" >&2
	exit 2
	;;
esac

failures=0
bad() {
	echo "selftest: FAILED: $*" >&2
	failures=$((failures + 1))
}
ms() { date +%s%3N; }

kver=$("$ROOT/tests/vm/kernel.sh")

# Kbuild writes next to the sources: build a copy under build/.
kmod=$VM/selftest-kmod
rm -rf "$kmod"
mkdir -p "$kmod"
cp "$ROOT"/tests/vm/dummy-kmod/* "$kmod/"
make -s -C "/lib/modules/$kver/build" M="$kmod" modules >&2

t0=$(ms)
"$ROOT/tests/vm/mkinitramfs.sh" --kver "$kver" --tests "$ROOT/tests/vm/selftest" \
	--module "$kmod/dctest_dummy.ko" --out "$VM/selftest.cpio"
echo "selftest: initramfs built in $(($(ms) - t0)) ms"

# Start run.sh in the background: NAME then run.sh arguments. Output goes to NAME.log.
declare -A pids=()
start() {
	local name=$1
	shift
	mkdir -p "$VM/selftest-$name"
	"$RUN" --kver "$kver" --initramfs "$VM/selftest.cpio" --out "$VM/selftest-$name" \
		--label "selftest-$name" "$@" >"$VM/selftest-$name.log" 2>&1 &
	pids[$name]=$!
}
# Wait for run NAME; print its output; succeed if it exited with status $2.
finish() {
	local name=$1 want=$2 rc=0
	wait "${pids[$name]}" || rc=$?
	echo "--- $name (exit $rc, expected $want)"
	# A run meant to fail shows its log only when it did not fail as meant,
	# so that its deliberate FAIL lines do not read as the project's failures.
	if ((rc != want || want == 0)); then
		cat "$VM/selftest-$name.log"
	else
		echo "    failed as it should (log: $VM/selftest-$name.log)"
	fi
	((rc == want)) || bad "$name exited $rc, expected $want"
	((rc == want))
}

# The guest reports the SHA-256 of what it read from the raw disk; compare.
hostcheck() {
	local name=$1 disk=$2 key off len want got
	while read -r _ key off len want; do
		[[ "$key" == vda-sha256 ]] || continue
		got=$(dd if="$disk" iflag=skip_bytes,count_bytes skip="$off" count="$len" bs=1M \
			status=none | sha256sum | cut -d' ' -f1)
		if [[ "$got" == "$want" ]]; then
			echo "selftest: $name: host sees the guest's ciphertext ($len bytes at $off)"
		else
			bad "$name: disk image hash $got, guest saw $want"
		fi
		return 0
	done < <(grep '^HOSTCHECK ' "$VM/selftest-$name/results.txt")
	bad "$name: no HOSTCHECK vda-sha256 line"
}

for cpu in max qemu64; do
	disk=$VM/selftest-$cpu.img
	rm -f "$disk"
	truncate -s 64M "$disk"
	tests=selftest
	[[ "$cpu" == max ]] && tests+=,module
	start "$cpu" --cpu "$cpu" --disk "$disk" --run "$tests" --timeout 120
done
for cpu in max qemu64; do
	if finish "$cpu" 0; then
		hostcheck "$cpu" "$VM/selftest-$cpu.img"
	fi
done

if ((!quick)); then
	start failing --run fail,crash,kwarn --timeout 120
	start hang --run hang --timeout 20
	if finish failing 1; then
		for want in 'FAIL deliberate-failure: ' 'FAIL crash: exited 3' \
			'FAIL kwarn-detected: ' 'FAIL kernel-log: '; do
			grep -q "^$want" "$VM/selftest-failing/results.txt" ||
				bad "failing: no '$want' line"
		done
	fi
	start panic --run panic --timeout 120
	if finish panic 2; then
		grep -q 'FAILED: kernel panic' "$VM/selftest-panic.log" || bad "panic: not reported"
	fi
	if finish hang 2; then
		grep -q 'timeout after 20 s' "$VM/selftest-hang.log" || bad "hang: no timeout reported"
	fi
fi

if ((failures)); then
	echo "selftest: $failures problem(s)" >&2
	exit 1
fi
echo "selftest: harness OK"
