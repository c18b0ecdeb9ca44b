#!/usr/bin/env bash
# The kernel suite: boots a kernel in QEMU with dm-diskcrypt.ko and runs the
# guest tests in four guests on Debian's kernel (and, when asked, in two on a
# debug build of it), then decrypts what each guest wrote with OpenSSL on the
# host:
#   max-smp2   Debian's kernel, -cpu max (AES-NI), 2 CPUs: every test but forward
#   qemu64     Debian's kernel, -cpu qemu64 (generic AES), 1 CPU: the
#              crypto-dependent tests, a quarter of bioshapes' iterations and
#              4 MiB per fio job (12 elsewhere)
#   forward    Debian's kernel, -cpu max, 2 CPUs, 448 MiB: forward progress
#              under memory pressure with async crypto (the test arms the hung
#              task detector: 20 s, panic)
#   slub       Debian's kernel, -cpu max, 2 CPUs, slub_debug=FZPU page_poison=1
#              panic_on_warn=1: the data-path and concurrency tests
#   debug-full (not in this script's default list: make test-kmod-debug, and
#              make check beside its other steps) the debug kernel of
#              tests/vm/debug-kernel.sh
#              (KASAN, KFENCE, lockdep, DEBUG_ATOMIC_SLEEP, DEBUG_OBJECTS, hung
#              task detector; built on first use, ~20 CPU-minutes), -cpu max,
#              2 CPUs, panic on a hung task or soft lockup: datapath, async,
#              errors, pressure, messages (the key-message race), reload and
#              forward (the hang),
#              sized for KASAN under TCG: 1 MiB per fio job (blocks to 1 MiB),
#              datapath's and async's loads at 4096-byte sectors only (pressure
#              and forward load 512-byte ones), 2 MiB per forward writer, a
#              twentieth of bioshapes' iterations,
#              no dm-crypt control runs (the guests on Debian's kernel run
#              them), 900 s for the forward fio, hung tasks at 120 s, and the
#              test ciphers over AES-NI instead of the C AES, which KASAN
#              slows to ~150 KiB/s.
#              The module is rebuilt from kmod/ against it in
#              $DISKCRYPT_BUILD/kmod-debug.
#   debug      (not by default) the same kernel and sizes with messages,
#              reload and forward only
# All guests get cryptd.cryptd_max_cpu_qlen=16, so that the asynchronous
# tests also fill cryptd's queue and exercise the backlog.
#
# Usage: tests/kmod/run.sh [TEST,...]   run these tests in every guest instead
# Environment:
#   DISKCRYPT_BUILD   build folder (default <repo>/build)
#   DISKCRYPT_GUESTS  which guests (default "max-smp2 qemu64 forward slub")
#   DISKCRYPT_PARALLEL  1 (default with 2+ host CPUs): qemu64 and the debug
#                     guests run one after another beside the others;
#                     0: one guest after another
#   DISKCRYPT_KMOD_WORK  the work folder: images, initramfs, run-GUEST/ (default
#                     $DISKCRYPT_BUILD/vm/kmod); two runs at once need two
#   KMOD              the module (default <repo>/kmod/dm-diskcrypt.ko)
#   KMOD_SRC          the module's source, for the debug guest (default <repo>/kmod)
#   XTS_REF           the OpenSSL reference tool (default $DISKCRYPT_BUILD/cmake/tests/xts-ref)
# Exit status: 0 all passed, 1 a check failed, 2 the harness failed.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD=${DISKCRYPT_BUILD:-$ROOT/build}
KMOD=${KMOD:-$ROOT/kmod/dm-diskcrypt.ko}
KMOD_SRC=${KMOD_SRC:-$ROOT/kmod}
XTS_REF=${XTS_REF:-$BUILD/cmake/tests/xts-ref}
ONLY=${1:-}
GUESTS=${DISKCRYPT_GUESTS:-max-smp2 qemu64 forward slub}
W=${DISKCRYPT_KMOD_WORK:-$BUILD/vm/kmod}

# The debug kernel's guests: panic on a hung task or soft lockup, and sizes
# for KASAN under TCG (tests/kmod/common.sh, async.sh, forward.sh).
DEBUG_ARGS=hung_task_panic=1,softlockup_panic=1,loglevel=5,DCTEST_FIO_MIB=1
DEBUG_ARGS+=,DCTEST_SHAPES_PCT=5,DCTEST_CONTROL=0,DCTEST_SECTOR_SIZES=4096
DEBUG_ARGS+=,DCTEST_FORWARD_MIB=2,DCTEST_FORWARD_LIMIT=900
DEBUG_ARGS+=,DCTEST_HUNG_TASK_SECS=120
DEBUG_ARGS+=,DCTEST_AES=aes-aesni

# guest: cpu smp extra-kernel-args tests
guest_config() {
	case $1 in
	max-smp2) echo "max 2 - kat,interop,tables,messages,zero,reload,datapath,async,align,flush,errors,pressure,swap" ;;
	qemu64) echo "qemu64 1 DCTEST_SHAPES_PCT=25,DCTEST_FIO_MIB=4 kat,interop,zero,datapath,async" ;;
	debug) echo "max 2 $DEBUG_ARGS messages,reload,forward" ;;
	debug-full) echo "max 2 $DEBUG_ARGS datapath,async,errors,pressure,messages,reload,forward" ;;
	forward) echo "max 2 - forward" ;;
	slub) echo "max 2 slub_debug=FZPU,page_poison=1,panic_on_warn=1 datapath,async,errors,pressure,reload,messages" ;;
	*) echo "kmod/run.sh: unknown guest $1" >&2; return 1 ;;
	esac
}

# guest: memory in MiB (small where the test needs memory pressure)
guest_mem() {
	case $1 in
	forward) echo 448 ;;
	*) echo 1024 ;;
	esac
}

# Debian's kernel, the module built for it and the OpenSSL check are for the
# guests that boot that kernel; the debug guests alone need none of them.
debian_guests=0
for guest in $GUESTS; do
	[[ $guest == debug* ]] || debian_guests=1
done
if ((debian_guests)); then
	for f in "$KMOD" "$XTS_REF"; do
		[ -e "$f" ] || { echo "kmod/run.sh: $f is missing; run 'make all' first" >&2; exit 2; }
	done
	kver=$("$ROOT/tests/vm/kernel.sh")
fi
mkdir -p "$W"
# Fresh key and plaintext every run; they never leave the build folder.
head -c 64 /dev/urandom >"$W/key.bin"
head -c 1048576 /dev/urandom >"$W/pattern.bin"
# Guest-side tools, static so that they need nothing from the initramfs.
gcc -static -O2 -Wall -Wextra -Werror -o "$W/bioshapes" "$ROOT/tests/kmod/tools/bioshapes.c"
gcc -static -O2 -Wall -Wextra -Werror -o "$W/dmrace" "$ROOT/tests/kmod/tools/dmrace.c"
initramfs_args=(--tests "$ROOT/tests/kmod"
	--file "$W/key.bin:/data/key.bin" --file "$W/pattern.bin:/data/pattern.bin"
	--file "$W/bioshapes:/usr/local/bin/bioshapes" --file "$W/dmrace:/usr/local/bin/dmrace")
if ((debian_guests)); then
	# The align test's cipher driver (tests/kmod/align-kmod), built in a copy:
	# Kbuild writes next to the sources.
	rm -rf "$W/align-kmod"
	cp -r "$ROOT/tests/kmod/align-kmod" "$W/align-kmod"
	make -s -C "/lib/modules/$kver/build" M="$W/align-kmod" modules >"$W/align-kmod.log" 2>&1 ||
		{ cat "$W/align-kmod.log" >&2; echo "kmod/run.sh: building tests/kmod/align-kmod failed" >&2; exit 2; }
	"$ROOT/tests/vm/mkinitramfs.sh" --kver "$kver" --out "$W/initramfs.cpio" \
		--module "$KMOD" --module "$W/align-kmod/dctest_align.ko" "${initramfs_args[@]}"
fi

# The debug guests' kernel (built once, cached), the module built from
# KMOD_SRC against it in a folder of its own (kmod/ holds the build for
# Debian's kernel), and an initramfs with that module. Done once, just before
# the first debug guest, so that the other guests need not wait for the
# kernel. Returns non-zero if any of it failed.
debug_kdir="" debug_kver=""
prepare_debug() {
	local dk dmod
	[ -n "$debug_kver" ] && return 0
	dk=$("$ROOT/tests/vm/debug-kernel.sh") || { echo "kmod/run.sh: cannot build the debug kernel" >&2; return 1; }
	{ read -r debug_kdir; read -r debug_kver; } <<<"$dk"
	dmod=$BUILD/kmod-debug
	mkdir -p "$dmod"
	# -p keeps the times, so that make rebuilds only what changed.
	cp -p "$KMOD_SRC"/Kbuild "$KMOD_SRC"/*.[ch] "$dmod/"
	make -s -C "$debug_kdir/$debug_kver/build" M="$dmod" modules >&2 ||
		{ echo "kmod/run.sh: building the module against the debug kernel failed" >&2; return 1; }
	# No AF_ALG in the debug kernel (no networking; its tests need neither).
	"$ROOT/tests/vm/mkinitramfs.sh" --kernel-dir "$debug_kdir" --kver "$debug_kver" \
		--out "$W/initramfs-debug.cpio" --module "$dmod/dm-diskcrypt.ko" "${initramfs_args[@]}" \
		--no-kmod af_alg --no-kmod algif_skcipher ||
		return 1
}

# PASS/FAIL lines of the host's own checks; each guest's go to its run folder
# (run-GUEST/host.txt), where the totals are counted at the end.
result() {
	if [ "$1" = PASS ]; then
		echo "PASS $2"
	else
		echo "FAIL $2: $3"
	fi | tee -a "$host_results"
}

# The host's own check of the guest's ciphertext: decrypt each known-answer
# region of vda with OpenSSL and compare it with the plaintext.
openssl_check() {
	local cpu=$1 img=$2 results=$3 name ss iv large slot flags
	while read -r name ss iv large slot; do
		[[ -z $name || $name == \#* ]] && continue
		if ! grep -qx "HOSTCHECK kat $name" "$results"; then
			result FAIL "kat-openssl-$name-$cpu" "the guest did not write this region"
			continue
		fi
		flags=()
		[ "$large" = 1 ] && flags=(--iv-large-sectors)
		if "$XTS_REF" --key "$W/key.bin" --image "$img" --dev-offset $((slot * 2048)) \
			--length 1048576 --sector-size "$ss" --iv-offset "$iv" "${flags[@]}" \
			--decrypt --out "$W/plain-$cpu.bin" && cmp -s "$W/plain-$cpu.bin" "$W/pattern.bin"; then
			result PASS "kat-openssl-$name-$cpu"
		else
			result FAIL "kat-openssl-$name-$cpu" "OpenSSL AES-256-XTS disagrees with the guest's ciphertext"
		fi
	done <"$ROOT/tests/kmod/kat-cases.txt"
}

# run_guest GUEST: boot it, run its tests, check its ciphertext; leaves
# run-GUEST/results.txt, host.txt and rc (run.sh's exit status).
run_guest() {
	local guest=$1 cpu smp extra tests append vda vdb kernel vm_rc host_results timeout=1200
	read -r cpu smp extra tests <<<"$(guest_config "$guest")"
	[ -n "$ONLY" ] && tests=$ONLY
	append=cryptd.cryptd_max_cpu_qlen=16
	[ "$extra" != - ] && append="$append ${extra//,/ }"
	vda=$W/vda-$guest.img vdb=$W/vdb-$guest.img
	rm -rf "$vda" "$vdb" "$W/run-$guest"
	mkdir -p "$W/run-$guest"
	host_results=$W/run-$guest/host.txt
	: >"$host_results"
	if [[ $guest == debug* ]]; then
		if ! prepare_debug; then
			echo 2 >"$W/run-$guest/rc"
			return
		fi
		kernel=(--kernel-dir "$debug_kdir" --kver "$debug_kver" --initramfs "$W/initramfs-debug.cpio")
		timeout=2400
	else
		kernel=(--kver "$kver" --initramfs "$W/initramfs.cpio")
	fi
	truncate -s 320M "$vda" "$vdb"
	set +e
	"$ROOT/tests/vm/run.sh" "${kernel[@]}" \
		--disk "$vda" --disk "$vdb" --cpu "$cpu" --smp "$smp" --mem "$(guest_mem "$guest")" \
		--append "$append" --run "$tests" --timeout "$timeout" --out "$W/run-$guest" --label "kmod-$guest"
	vm_rc=$?
	set -e
	echo "$vm_rc" >"$W/run-$guest/rc"
	case ",$tests," in
	*,kat,*) openssl_check "$guest" "$vda" "$W/run-$guest/results.txt" ;;
	esac
	rm -f "$vda" "$vdb"
}

# With two or more host CPUs, qemu64 (one CPU) and then the debug guests (which
# may first wait for their kernel) run one after another beside the others;
# their output is shown when they end. DISKCRYPT_PARALLEL=0: one guest after
# another.
bg="" bg_guests=() fg_guests=() parallel=${DISKCRYPT_PARALLEL:-$(($(nproc) >= 2))}
for guest in $GUESTS; do
	case $guest in
	qemu64 | debug*) bg_guests+=("$guest") ;;
	*) fg_guests+=("$guest") ;;
	esac
done
if [ "$parallel" != 1 ] || ((${#fg_guests[@]} == 0)); then
	read -r -a fg_guests <<<"$GUESTS"
	bg_guests=()
fi
if ((${#bg_guests[@]})); then
	(for guest in "${bg_guests[@]}"; do run_guest "$guest"; done) >"$W/background.log" 2>&1 &
	bg=$!
fi
for guest in "${fg_guests[@]}"; do
	run_guest "$guest"
done
if [ -n "$bg" ]; then
	wait "$bg" || true
	cat "$W/background.log"
fi

passed=0 failed=0 rc=0
for guest in $GUESTS; do
	d=$W/run-$guest
	vm_rc=$(cat "$d/rc" 2>/dev/null || echo 2)
	[ "$vm_rc" -gt "$rc" ] && rc=$vm_rc
	p=$(cat "$d/results.txt" "$d/host.txt" 2>/dev/null | grep -c '^PASS ' || true)
	f=$(cat "$d/results.txt" "$d/host.txt" 2>/dev/null | grep -c '^FAIL ' || true)
	passed=$((passed + p)) failed=$((failed + f))
	[ "$vm_rc" -ne 0 ] && [ "$f" -eq 0 ] && failed=$((failed + 1))
done

[ "$failed" -gt 0 ] && [ "$rc" -eq 0 ] && rc=1
echo "kmod: $passed passed, $failed failed"
exit "$rc"
