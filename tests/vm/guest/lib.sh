# shellcheck shell=sh
# Helpers for guest test scripts (busybox sh). Source it first:
#   . "${DCTEST_LIB:-/lib/dctest/lib.sh}"
#
# Results go only to the second serial port (ttyS1, results.txt on the host), one line
# each: PASS NAME | FAIL NAME: REASON | INFO TEXT | HOSTCHECK KEY VALUE...
# Every result is also appended to /run/dctest/results, which is how /init counts them
# across subshells, and echoed to the console (ttyS0) so console.log reads in context.
#
# busybox sh runs its own applets before searching PATH; for each real tool that
# shadows an applet (kmod's modprobe, util-linux's losetup, ...) a function of the same
# name is defined below, so plain "modprobe dm-diskcrypt" runs kmod's modprobe.

DCTEST_OUT=${DCTEST_OUT:-/dev/ttyS1}
DCTEST_STATE=${DCTEST_STATE:-/run/dctest}

while read -r _dctest_name _dctest_path; do
	eval "$_dctest_name() { $_dctest_path \"\$@\"; }"
done </etc/dctest/real-tools
unset _dctest_name _dctest_path

# Write one result line to ttyS1, the results log and the console.
_dctest_emit() {
	mkdir -p "$DCTEST_STATE"
	printf '%s\n' "$*" >>"$DCTEST_STATE/results"
	printf '%s\n' "$*" >>"$DCTEST_OUT"
	printf '[dctest %s] %s\n' "$(cut -d' ' -f1 /proc/uptime 2>/dev/null)" "$*"
}

# Number of result lines of a kind (PASS, FAIL) reported so far, by anyone.
dctest_count() {
	grep -c "^$1 " "$DCTEST_STATE/results" 2>/dev/null || true
}

pass() { _dctest_emit "PASS $1"; }

fail() {
	_dctest_name=$1
	shift
	_dctest_emit "FAIL $_dctest_name: ${*:-failed}"
	return 1
}

info() { _dctest_emit "INFO $*"; }

hostcheck() { _dctest_emit "HOSTCHECK $*"; }

# check NAME CMD [ARGS...]: PASS if CMD succeeds, else FAIL; returns CMD's status.
check() {
	_dctest_name=$1
	shift
	"$@"
	_dctest_rc=$?
	if [ "$_dctest_rc" -eq 0 ]; then
		pass "$_dctest_name"
	else
		fail "$_dctest_name" "exit $_dctest_rc from: $*"
	fi
	return "$_dctest_rc"
}

# expect_fail NAME CMD [ARGS...]: PASS if CMD fails, else FAIL; returns 0 on PASS.
expect_fail() {
	_dctest_name=$1
	shift
	if "$@"; then
		fail "$_dctest_name" "succeeded unexpectedly: $*"
	else
		pass "$_dctest_name"
	fi
}

# Milliseconds since boot, for timing figures reported with info.
now_ms() { awk '{ printf "%d\n", $1 * 1000 }' /proc/uptime; }

# dmesg_mark: put a marker in the kernel log; dmesg_since_mark prints what follows
# the latest marker (the whole log if there is none).
dmesg_mark() {
	mkdir -p "$DCTEST_STATE"
	_dctest_mark=$(($(cat "$DCTEST_STATE/mark" 2>/dev/null || echo 0) + 1))
	echo "$_dctest_mark" >"$DCTEST_STATE/mark"
	echo "<5>dctest-mark:$_dctest_mark:" >/dev/kmsg
}

dmesg_since_mark() {
	dmesg | awk -v m="dctest-mark:$(cat "$DCTEST_STATE/mark" 2>/dev/null):" '
		index($0, m) { buf = ""; next }
		{ buf = buf $0 "\n" }
		END { printf "%s", buf }'
}

# kernel_warnings: print kernel log lines since the latest mark that show a kernel
# bug or warning; succeeds if there is any. The words must start the message (after
# the timestamp), so "modprobe: WARNING: ..." from user space does not count. The
# debug kernel's soft lockup and hung task reports are included (tests/vm/run.sh).
DCTEST_KERNEL_BAD='(^|\] )(watchdog: )?(BUG:|Oops|WARNING:|Call Trace|general protection fault|kernel BUG at|INFO: task .* blocked for more than)'
kernel_warnings() {
	dmesg_since_mark | grep -E "$DCTEST_KERNEL_BAD"
}

# First line of stdin without its printk timestamp (keeps FAIL lines short, and
# keeps the console scan of run.sh from matching them).
dctest_first_message() { head -n 1 | sed 's/^\[[ 0-9.]*\] //'; }

# die_on_kernel_warning [NAME]: FAIL NAME (default kernel-log) and exit the test
# script if the kernel logged a bug or warning since the latest mark.
die_on_kernel_warning() {
	if _dctest_lines=$(kernel_warnings); then
		echo "$_dctest_lines"
		fail "${1:-kernel-log}" "kernel: $(echo "$_dctest_lines" | dctest_first_message)"
		exit 1
	fi
}

# dctest_main: run the tests named by "dctest.run=a,b,c" on the kernel command
# line (each /tests/*/NAME.sh, or /tests/DIR/NAME.sh for DIR/NAME), scan the
# kernel log, write the verdict to ttyS1 and end QEMU through isa-debug-exit
# (QEMU exits 1 on pass, 3 on fail). The busybox guest's /init and the systemd
# guest's test unit both end with it.
dctest_main() {
	tests=""
	read -r cmdline </proc/cmdline
	set -f
	# shellcheck disable=SC2086 # split the command line into words
	for arg in $cmdline; do
		case "$arg" in
		dctest.run=*) tests=${arg#dctest.run=} ;;
		esac
	done

	export KVER
	KVER=$(uname -r)
	[ -n "$tests" ] || fail dctest "no tests given (kernel argument dctest.run=a,b,c)"

	old_ifs=$IFS
	IFS=,
	# shellcheck disable=SC2086 # split the comma-separated list
	set -- $tests
	IFS=$old_ifs
	set +f

	for name in "$@"; do
		case "$name" in
		*/*) scripts=$(ls /tests/"$name".sh 2>/dev/null) ;;
		*) scripts=$(ls /tests/*/"$name".sh 2>/dev/null) ;;
		esac
		case "$(echo "$scripts" | wc -w)" in
		1) ;;
		0)
			fail "$name" "no test script /tests/*/$name.sh"
			continue
			;;
		*)
			fail "$name" "ambiguous, name one of: $(echo "$scripts" | tr '\n' ' ')"
			continue
			;;
		esac

		echo "=== dctest: $name ($scripts) ==="
		started=$(now_ms)
		before=$(($(dctest_count PASS) + $(dctest_count FAIL)))
		failed_before=$(dctest_count FAIL)
		(
			cd "$(dirname "$scripts")" || exit 1
			export DCTEST_TEST="$name"
			exec sh "$scripts"
		) </dev/null
		rc=$?
		info "time $name $((($(now_ms) - started) / 1000)) s"
		after=$(($(dctest_count PASS) + $(dctest_count FAIL)))
		if [ "$rc" -ne 0 ] && [ "$(dctest_count FAIL)" -eq "$failed_before" ]; then
			fail "$name" "exited $rc"
		elif [ "$after" -eq "$before" ]; then
			fail "$name" "reported no result"
		fi
	done

	# Warnings may not reach the console at loglevel=4: scan the whole kernel log.
	if bad=$(dmesg | grep -E "$DCTEST_KERNEL_BAD"); then
		echo "=== dctest: kernel log has bugs or warnings; full dmesg follows ==="
		dmesg
		fail kernel-log "$(echo "$bad" | dctest_first_message)"
	fi

	npass=$(dctest_count PASS)
	nfail=$(dctest_count FAIL)
	if [ "$nfail" -eq 0 ] && [ "$npass" -gt 0 ]; then
		echo "VERDICT PASS $npass" >>"$DCTEST_OUT"
		exit_byte='\000'
	else
		echo "VERDICT FAIL $nfail of $((npass + nfail))" >>"$DCTEST_OUT"
		exit_byte='\001'
	fi
	echo "=== dctest: $npass passed, $nfail failed ==="
	sync

	# isa-debug-exit at port 0xf4: QEMU exits with (byte << 1) | 1.
	printf '%b' "$exit_byte" | dd of=/dev/port bs=1 seek=244 count=1 conv=notrunc 2>/dev/null
	poweroff -f
	while :; do sleep 3600; done
}
