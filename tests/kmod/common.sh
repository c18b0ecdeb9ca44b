# shellcheck shell=sh
# Guest-side helpers shared by the kernel suite (sourced after the harness's
# lib.sh). Disk layout: /dev/vda and /dev/vdb, 128 MiB each, regions in MiB:
#   0-31 kat, 32-47 interop, 48-51 messages, 52-59 zero_unwritten,
#   60-63 reload, 64-127 free for later suites.

# shellcheck source=../vm/guest/lib.sh
. "${DCTEST_LIB:-/lib/dctest/lib.sh}"

DATA=/data
KEYDESC=diskcrypt:test
KEYREF=:64:logon:$KEYDESC
MiB=2048	# sectors

# Load the module and put the test key in the session keyring (idempotent).
kmod_setup() {
	/sbin/modprobe dm-diskcrypt || return 1
	keyctl search @s logon "$KEYDESC" >/dev/null 2>&1 ||
		keyctl padd logon "$KEYDESC" @s <"$DATA/key.bin" >/dev/null
}

# feature_args SECTOR_SIZE LARGE [OPT...]: the counted feature group, or
# nothing.
feature_args() {
	_f="" _n=0
	[ "$1" != 512 ] && _f="$_f sector_size:$1" _n=$((_n + 1))
	[ "$2" = 1 ] && _f="$_f iv_large_sectors" _n=$((_n + 1))
	shift 2
	for _o in "$@"; do
		_f="$_f $_o" _n=$((_n + 1))
	done
	[ "$_n" -gt 0 ] && echo "$_n$_f"
	return 0
}

# sector_shift SECTOR_SIZE: log2(SECTOR_SIZE / 512)
sector_shift() {
	_s=0
	while [ $((512 << _s)) -lt "$1" ]; do _s=$((_s + 1)); done
	echo "$_s"
}

# dm_create NAME TABLE: create a mapping; the table may hold \n.
dm_create() {
	printf '%b\n' "$2" | dmsetup create "$1"
}

dm_remove() {
	for _n in "$@"; do
		dmsetup remove "$_n" 2>/dev/null || true
	done
}

# raw_region DEV SLOT_MIB COUNT_MIB OUT: the bytes on the device, bypassing caches.
raw_region() {
	dd if="$1" of="$4" bs=1M skip="$2" count="$3" iflag=direct 2>/dev/null
}

# write_file FILE DEV [SEEK_MIB]: direct 64 KiB writes.
write_file() {
	dd if="$1" of="$2" bs=64k seek=$((${3:-0} * 16)) oflag=direct conv=notrunc 2>/dev/null
}

# read_dev DEV OUT [COUNT_MIB] [SKIP_MIB]
read_dev() {
	dd if="$1" of="$2" bs=64k count=$((${3:-1} * 16)) skip=$((${4:-0} * 16)) iflag=direct 2>/dev/null
}

is_zero_file() {
	dd if=/dev/zero of=/tmp/zeros bs="$(stat -c %s "$1")" count=1 2>/dev/null
	cmp -s "$1" /tmp/zeros
}

# kernel_says TEXT: the kernel log since the last `dmesg -c` holds TEXT.
kernel_says() {
	dmesg | grep -qF -- "$1"
}
