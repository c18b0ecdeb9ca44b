#!/usr/bin/env bash
# The kernel suite: boots Debian's kernel in QEMU with dm-diskcrypt.ko and runs
# the guest tests in three guests, then decrypts what each guest wrote with
# OpenSSL on the host:
#   max-smp2   -cpu max (AES-NI), 2 CPUs: every test
#   qemu64     -cpu qemu64 (generic AES), 1 CPU: the crypto-dependent tests
#   debug      -cpu max, 2 CPUs, slub_debug=FZPU page_poison=1 panic_on_warn=1:
#              the data-path tests
# All guests get cryptd.cryptd_max_cpu_qlen=16, so that the asynchronous
# tests also fill cryptd's queue and exercise the backlog.
#
# Usage: tests/kmod/run.sh [TEST,...]   run these tests in every guest instead
# Environment:
#   DISKCRYPT_BUILD   build folder (default <repo>/build)
#   DISKCRYPT_GUESTS  which guests (default "max-smp2 qemu64 debug")
#   KMOD              the module (default <repo>/kmod/dm-diskcrypt.ko)
#   XTS_REF           the OpenSSL reference tool (default $DISKCRYPT_BUILD/cmake/tests/xts-ref)
# Exit status: 0 all passed, 1 a check failed, 2 the harness failed.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD=${DISKCRYPT_BUILD:-$ROOT/build}
KMOD=${KMOD:-$ROOT/kmod/dm-diskcrypt.ko}
XTS_REF=${XTS_REF:-$BUILD/cmake/tests/xts-ref}
ONLY=${1:-}
W=$BUILD/vm/kmod

# guest: cpu smp extra-kernel-args tests
guest_config() {
	case $1 in
	max-smp2) echo "max 2 - kat,interop,tables,messages,zero,reload,datapath,async,flush,errors,pressure" ;;
	qemu64) echo "qemu64 1 - kat,interop,zero,datapath,async" ;;
	debug) echo "max 2 slub_debug=FZPU,page_poison=1,panic_on_warn=1 datapath,async,errors,pressure,reload" ;;
	*) echo "kmod/run.sh: unknown guest $1" >&2; return 1 ;;
	esac
}

for f in "$KMOD" "$XTS_REF"; do
	[ -e "$f" ] || { echo "kmod/run.sh: $f is missing; run 'make all' first" >&2; exit 2; }
done

kver=$("$ROOT/tests/vm/kernel.sh")
mkdir -p "$W"
# Fresh key and plaintext every run; they never leave the build folder.
head -c 64 /dev/urandom >"$W/key.bin"
head -c 1048576 /dev/urandom >"$W/pattern.bin"
# Guest-side tools, static so that they need nothing from the initramfs.
gcc -static -O2 -Wall -Wextra -Werror -o "$W/bioshapes" "$ROOT/tests/kmod/tools/bioshapes.c"
"$ROOT/tests/vm/mkinitramfs.sh" --kver "$kver" --out "$W/initramfs.cpio" \
	--module "$KMOD" --tests "$ROOT/tests/kmod" \
	--file "$W/key.bin:/data/key.bin" --file "$W/pattern.bin:/data/pattern.bin" \
	--file "$W/bioshapes:/usr/local/bin/bioshapes"

passed=0 failed=0 rc=0
result() {
	if [ "$1" = PASS ]; then
		passed=$((passed + 1))
		echo "PASS $2"
	else
		failed=$((failed + 1))
		echo "FAIL $2: $3"
	fi
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
			--decrypt --out "$W/plain.bin" && cmp -s "$W/plain.bin" "$W/pattern.bin"; then
			result PASS "kat-openssl-$name-$cpu"
		else
			result FAIL "kat-openssl-$name-$cpu" "OpenSSL AES-256-XTS disagrees with the guest's ciphertext"
		fi
	done <"$ROOT/tests/kmod/kat-cases.txt"
}

for guest in ${DISKCRYPT_GUESTS:-max-smp2 qemu64 debug}; do
	read -r cpu smp extra tests <<<"$(guest_config "$guest")"
	[ -n "$ONLY" ] && tests=$ONLY
	append=cryptd.cryptd_max_cpu_qlen=16
	[ "$extra" != - ] && append="$append ${extra//,/ }"
	vda=$W/vda-$guest.img vdb=$W/vdb-$guest.img
	rm -rf "$vda" "$vdb" "$W/run-$guest"
	truncate -s 320M "$vda" "$vdb"
	set +e
	"$ROOT/tests/vm/run.sh" --kver "$kver" --initramfs "$W/initramfs.cpio" \
		--disk "$vda" --disk "$vdb" --cpu "$cpu" --smp "$smp" --append "$append" \
		--run "$tests" --timeout 1200 --out "$W/run-$guest" --label "kmod-$guest"
	vm_rc=$?
	set -e
	[ "$vm_rc" -gt "$rc" ] && rc=$vm_rc
	p=$(grep -c '^PASS ' "$W/run-$guest/results.txt" || true)
	f=$(grep -c '^FAIL ' "$W/run-$guest/results.txt" || true)
	passed=$((passed + p)) failed=$((failed + f))
	[ "$vm_rc" -ne 0 ] && [ "$f" -eq 0 ] && failed=$((failed + 1))
	case ",$tests," in
	*,kat,*) openssl_check "$guest" "$vda" "$W/run-$guest/results.txt" ;;
	esac
	rm -f "$vda" "$vdb"
done

[ "$failed" -gt 0 ] && [ "$rc" -eq 0 ] && rc=1
echo "kmod: $passed passed, $failed failed"
exit "$rc"
