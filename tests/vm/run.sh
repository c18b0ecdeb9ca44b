#!/usr/bin/env bash
# Boot the test guest under QEMU (TCG), run guest tests, and judge the outcome.
#
# Usage: tests/vm/run.sh [options]
#   --kver KVER         guest kernel release (default: what tests/vm/kernel.sh prints)
#   --kernel-dir DIR    kernel cache of tests/vm/kernel.sh (default $DISKCRYPT_BUILD/vm/kernel),
#                       or the folder tests/vm/debug-kernel.sh prints (with its --kver)
#   --initramfs FILE    from tests/vm/mkinitramfs.sh (default $DISKCRYPT_BUILD/vm/initramfs.cpio)
#   --disk FILE         raw image attached as virtio-blk, cache=unsafe; in order they
#                       become /dev/vda, /dev/vdb, ... (repeatable; not created here)
#   --cpu MODEL         max (default; AES-NI emulated) or qemu64 (no AES-NI)
#   --smp N             guest CPUs (default 1)
#   --mem MiB           guest memory (default 1024)
#   --append ARGS       extra kernel command line arguments
#   --run a,b,c         guest tests to run in order (kernel argument dctest.run=)
#   --timeout SECONDS   kill the guest after this long (default 300)
#   --out DIR           where console.log and results.txt go (default $DISKCRYPT_BUILD/vm/run)
#   --label NAME        prefix of the summary line (default vm)
#   --qemu-arg ARG      one more QEMU argument, after the others (repeatable; make bench
#                       passes -icount and friends this way)
# Environment: DISKCRYPT_BUILD (default <repo>/build); DISKCRYPT_VM_VERBOSE=1 streams the
# guest console to stderr while it runs.
#
# Prints the PASS/FAIL/INFO lines of results.txt, then "LABEL: N passed, M failed".
# Exit status: 0 when QEMU ended through isa-debug-exit with a pass, results.txt has
# "VERDICT PASS", at least one PASS and no FAIL, and the console shows no kernel bug;
# 1 when checks failed or the kernel warned; 2 on harness errors (timeout, panic,
# missing verdict, QEMU failing to start).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD=${DISKCRYPT_BUILD:-$ROOT/build}

# Kernel messages that mean the kernel is broken whatever the tests said. They must
# follow a printk timestamp: user space prints "WARNING:" too (cryptsetup, kmod).
# WARN() is KERN_WARNING, which loglevel=4 keeps off the console; the guest's /init
# scans dmesg for those and reports "FAIL kernel-log". The debug kernel's checkers
# report through these: KASAN and KFENCE ("BUG: KASAN: ...", "BUG: KFENCE: ..."),
# lockdep ("WARNING: possible circular locking dependency", "WARNING: inconsistent
# lock state", "WARNING: suspicious RCU usage"), DEBUG_ATOMIC_SLEEP ("BUG: sleeping
# function called from invalid context"), DEBUG_OBJECTS (a WARN: "WARNING: CPU: ..."),
# the hung task detector ("INFO: task NAME:PID blocked for more than N seconds"), the
# soft lockup detector ("watchdog: BUG: soft lockup") and the workqueue watchdog
# ("BUG: workqueue lockup").
KERNEL_BAD='\[ *[0-9]+\.[0-9]+\] (watchdog: )?(BUG:|Oops|WARNING:|Call Trace|Kernel panic|general protection fault|kernel BUG at|INFO: task .* blocked for more than)'

log() { echo "run.sh: $*" >&2; }
usage_error() {
	log "$*"
	exit 2
}

kver="" kdir=$BUILD/vm/kernel initramfs=$BUILD/vm/initramfs.cpio out=$BUILD/vm/run
cpu=max smp=1 mem=1024 append="" run="" timeout=300 label=vm disks=() qemu_args=()
opts=$(getopt -n run.sh -o h -l kver:,kernel-dir:,initramfs:,disk:,cpu:,smp:,mem:,append:,run:,timeout:,out:,label:,qemu-arg:,help -- "$@") || exit 2
eval set -- "$opts"
while true; do
	case "$1" in
	--kver) kver=$2 ;;
	--kernel-dir) kdir=$2 ;;
	--initramfs) initramfs=$2 ;;
	--disk) disks+=("$2") ;;
	--cpu) cpu=$2 ;;
	--smp) smp=$2 ;;
	--mem) mem=$2 ;;
	--append) append=$2 ;;
	--run) run=$2 ;;
	--timeout) timeout=$2 ;;
	--out) out=$2 ;;
	--label) label=$2 ;;
	--qemu-arg) qemu_args+=("$2") ;;
	-h | --help)
		awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
		exit 0
		;;
	--)
		shift
		break
		;;
	esac
	shift 2
done
(($# == 0)) || usage_error "unexpected argument '$1'"
[[ "$timeout" =~ ^[0-9]+$ ]] || usage_error "--timeout wants seconds, got '$timeout'"
[[ "$run" =~ ^[A-Za-z0-9_./,-]+$ ]] || usage_error "--run wants test names like a,b,suite/c"
[[ -n "$kver" ]] || kver=$("$ROOT/tests/vm/kernel.sh" "$kdir")
kernel=$kdir/$kver/vmlinux
[[ -f "$kernel" ]] || usage_error "no kernel $kernel (run tests/vm/kernel.sh)"
[[ -f "$initramfs" ]] || usage_error "no initramfs $initramfs (run tests/vm/mkinitramfs.sh)"

drives=()
for i in "${!disks[@]}"; do
	[[ -f "${disks[$i]}" ]] || usage_error "--disk ${disks[$i]}: no such file"
	# QEMU's option syntax escapes a comma by doubling it.
	drives+=(-drive "file=${disks[$i]//,/,,},if=none,id=d$i,format=raw,cache=unsafe"
		-device "virtio-blk-pci,drive=d$i")
done

mkdir -p "$out"
console=$out/console.log results=$out/results.txt
rm -f "$console" "$results" "$out/qemu.stderr"
: >"$console"

follower=""
if [[ "${DISKCRYPT_VM_VERBOSE:-0}" == 1 ]]; then
	tail -n +1 -F "$console" >&2 2>/dev/null &
	follower=$!
fi

start=$(date +%s%N)
# no_timer_check: on a loaded host the IO-APIC timer check at boot can miss its
# ticks under TCG and panic ("IO-APIC + timer doesn't work!"; seen 2026-12-01).
set +e
# sercon-port=0 keeps SeaBIOS's banner and escape codes off the console (QEMU warns
# about the name in qemu.stderr; that is expected).
timeout --kill-after=5 "$timeout" qemu-system-x86_64 \
	-accel tcg -cpu "$cpu" -smp "$smp" -m "$mem" -machine pc \
	-nodefaults -no-user-config -nographic -no-reboot -monitor none \
	-serial "file:$console" -serial "file:$results" \
	-kernel "$kernel" -initrd "$initramfs" \
	-append "console=ttyS0 panic=-1 oops=panic loglevel=4 log_buf_len=4M no_timer_check dctest.run=$run $append" \
	"${drives[@]}" \
	-device isa-debug-exit,iobase=0xf4,iosize=0x04 \
	-fw_cfg name=etc/sercon-port,string=0 \
	"${qemu_args[@]}" \
	</dev/null 2>"$out/qemu.stderr"
status=$?
set -e
elapsed_ms=$((($(date +%s%N) - start) / 1000000))
if [[ -n "$follower" ]]; then
	sleep 0.2
	kill "$follower" 2>/dev/null || true
	wait "$follower" 2>/dev/null || true
fi
log "guest ran $((elapsed_ms / 1000)).$((elapsed_ms % 1000 / 100)) s ($cpu), qemu exit $status"

# Results: strip carriage returns; show the lines, then the summary.
touch "$results"
tr -d '\r' <"$results" >"$results.tmp" && mv "$results.tmp" "$results"
grep -E '^(PASS|FAIL|INFO) ' "$results" || true
npass=$(grep -c '^PASS ' "$results" || true)
nfail=$(grep -c '^FAIL ' "$results" || true)
echo "$label: $npass passed, $nfail failed"

# Collect every reason to fail; the exit status is the worst one seen.
rc=0
problem() { # SEVERITY MESSAGE
	log "FAILED: $2"
	(($1 > rc)) && rc=$1
	return 0
}
case "$status" in
1) ;;
3) problem 1 "the guest reported failure (isa-debug-exit)" ;;
124 | 137) problem 2 "timeout after $timeout s" ;;
0) problem 2 "QEMU exited without isa-debug-exit (guest rebooted, panicked or powered off)" ;;
*) problem 2 "QEMU exited with status $status: $(head -c 2000 "$out/qemu.stderr")" ;;
esac
verdict=$(grep -m 1 '^VERDICT ' "$results" || true)
if [[ -z "$verdict" ]]; then
	problem 2 "no VERDICT line in $results (the guest did not finish)"
elif [[ "$verdict" != "VERDICT PASS "* ]]; then
	problem 1 "guest verdict: $verdict"
fi
((npass > 0)) || problem 1 "no check passed"
if ((nfail > 0)); then
	problem 1 "$nfail failed check(s):"
	grep '^FAIL ' "$results" | sed 's/^/    /' >&2
fi
if grep -q -E '\] Kernel panic' "$console"; then
	problem 2 "kernel panic"
fi
if grep -q -E "$KERNEL_BAD" "$console"; then
	problem 1 "kernel bug or warning on the console:"
	tr -d '\r' <"$console" | grep -n -E -B 3 -A 12 "$KERNEL_BAD" | head -n 80 >&2 || true
fi

if ((rc != 0)) && [[ -z "$follower" ]]; then
	log "last console lines ($console):"
	tr -d '\r' <"$console" | tail -n 40 | sed 's/^/    /' >&2
fi
exit "$rc"
