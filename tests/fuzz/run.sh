#!/usr/bin/env bash
# Runs the libFuzzer targets of a DISKCRYPT_FUZZ build and prints, per target,
# the executions, exec/s, the corpus size and the crashes.
#
# Usage: tests/fuzz/run.sh FUZZ_BUILD_DIR SECONDS [TARGET...]
#   FUZZ_BUILD_DIR  the CMake build with -DDISKCRYPT_FUZZ=ON (make fuzz-smoke / make fuzz)
#   SECONDS         run time per target (-max_total_time)
#   TARGET          request response token header config policy provisioning kmip audit_line (default: all)
# Environment: FUZZ_PARALLEL=N runs N targets at a time (default 1; one
# libFuzzer worker each). FUZZ_ARGS adds libFuzzer options.
#
# New corpus entries go to FUZZ_BUILD_DIR/work/TARGET/corpus (never the source
# tree); the seed corpus and tests/fuzz/regressions/TARGET are read. Fuzzing
# goes on after a crash, leak, timeout or OOM (-fork=1 -ignore_crashes=1); any
# of them fails the run: the inputs are copied to FUZZ_BUILD_DIR/work/report/
# and the reports printed. To keep one as a regression test, copy it to
# tests/fuzz/regressions/TARGET/ (ctest replays it).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
if (($# < 2)); then
	sed -n '2,17s/^# \{0,1\}//p' "$0" >&2
	exit 2
fi
build=$1
seconds=$2
shift 2
targets=("$@")
((${#targets[@]})) || targets=(request response token header config policy provisioning kmip audit_line)
parallel=${FUZZ_PARALLEL:-1}
work=$build/work
report=$work/report
mkdir -p "$report"

run_one() {
	local t=$1 bin=$build/tests/fuzz/fuzz-$1 dir=$work/$1
	mkdir -p "$dir/corpus" "$dir/artifacts"
	rm -f "$dir/artifacts"/* "$dir/log"
	local dirs=("$dir/corpus" "$here/corpus/$t")
	[[ -d "$here/regressions/$t" ]] && dirs+=("$here/regressions/$t")
	local rc=0
	# One worker in a child process (-fork=1): a crash is recorded and fuzzing
	# goes on, so a long run counts every crash. A small ASan quarantine keeps
	# the header target (libcryptsetup allocates per load) from faulting in
	# fresh pages on every input.
	# shellcheck disable=SC2086 # FUZZ_ARGS is a list of options
	ASAN_OPTIONS="quarantine_size_mb=16${ASAN_OPTIONS:+:$ASAN_OPTIONS}" \
		LSAN_OPTIONS="suppressions=$here/../lsan.supp${LSAN_OPTIONS:+:$LSAN_OPTIONS}" \
		"$bin" -fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1 \
		-max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
		-artifact_prefix="$dir/artifacts/" ${FUZZ_ARGS:-} "${dirs[@]}" >"$dir/log" 2>&1 || rc=$?
	echo "$rc" >"$dir/rc"
}

for t in "${targets[@]}"; do
	[[ -x "$build/tests/fuzz/fuzz-$t" ]] || {
		echo "run.sh: no fuzz target $build/tests/fuzz/fuzz-$t (make fuzz-smoke builds them)" >&2
		exit 2
	}
done

echo "fuzzing ${targets[*]}: ${seconds} s each, $parallel at a time (logs in $work/TARGET/log)" >&2
running=0
for t in "${targets[@]}"; do
	run_one "$t" &
	running=$((running + 1))
	if ((running >= parallel)); then
		wait -n || true
		running=$((running - 1))
	fi
done
wait || true

failed=0
printf '%-10s %8s %14s %10s %8s %8s\n' TARGET SECONDS EXECUTIONS EXEC/S CORPUS CRASHES
for t in "${targets[@]}"; do
	dir=$work/$t
	# The fork driver's last status line:
	# "#N: cov: C ft: F corp: K exec/s R oom/timeout/crash: O/T/X time: Ss job: J ..."
	status=$(grep -E '^#[0-9]+: cov:' "$dir/log" | tail -n 1 || true)
	execs=$(sed -n 's/^#\([0-9]*\):.*/\1/p' <<<"$status")
	secs=$(sed -n 's/^INFO: exiting: [0-9]* time: \([0-9]*\)s.*/\1/p' "$dir/log" | tail -n 1)
	[[ -n "$secs" ]] || secs=$(sed -n 's/.* time: \([0-9]*\)s.*/\1/p' <<<"$status")
	rate="-"
	[[ -n "$execs" && "$secs" =~ ^[0-9]+$ ]] && ((secs > 0)) && rate=$((execs / secs))
	corpus=$(find "$dir/corpus" -type f | wc -l)
	crashes=$(find "$dir/artifacts" -type f | wc -l)
	rc=$(cat "$dir/rc")
	printf '%-10s %8s %14s %10s %8s %8s\n' "$t" "${secs:-?}" "${execs:-?}" "$rate" "$corpus" "$crashes"
	if ((rc != 0 || crashes != 0)) || [[ -z "$execs" ]]; then
		failed=1
	fi
done

if ((failed)); then
	echo >&2
	for t in "${targets[@]}"; do
		dir=$work/$t
		[[ "$(cat "$dir/rc")" == 0 ]] && [[ -z "$(ls -A "$dir/artifacts")" ]] &&
			grep -qE '^#[0-9]+: cov:' "$dir/log" && continue
		echo "=== $t: libFuzzer exit $(cat "$dir/rc"), log $dir/log" >&2
		# Each input once more, outside the fork driver, for its report (the
		# driver keeps only the tail of a child's log).
		# (the first three; a long run often finds one bug many times).
		n=0
		for a in "$dir/artifacts"/*; do
			[[ -f "$a" ]] || continue
			cp "$a" "$report/$t-$(basename "$a")"
			echo "--- input: $report/$t-$(basename "$a") ($(stat -c %s "$a") bytes)" >&2
			((n++ < 3)) || continue
			timeout 120 "$build/tests/fuzz/fuzz-$t" "$a" 2>&1 |
				grep -m1 -A12 -E '^==[0-9]+==ERROR|^terminate called|runtime error:|^==[0-9]+== ERROR' |
				cut -c1-240 >&2 || true
		done
		grep -qE '^#[0-9]+: cov:' "$dir/log" || tail -n 20 "$dir/log" >&2
	done
	echo "run.sh: FAILED (inputs in $report; reproduce: $build/tests/fuzz/fuzz-TARGET INPUT;" \
		"keep one as a regression test in tests/fuzz/regressions/TARGET/)" >&2
	exit 1
fi
