# shellcheck shell=sh
# Guest-side helpers shared by the kernel suite (sourced after the harness's
# lib.sh). Disk layout: /dev/vda and /dev/vdb, 320 MiB each, regions in MiB:
#   0-31 kat, 32-47 interop, 48-51 messages (50-51 the race), 52-59 zero_unwritten,
#   60-63 reload, 64-127 datapath, 128-195 async, 196-219 options,
#   220-235 errors, 236-255 flush, 256-287 pressure, 288-315 align; on vdb also
#   224-319 swap; forward (own guest, leaves kat's region alone): 64-159.

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

# dev_name MAPPING: the dm-N name of a mapping, for /sys/block.
dev_name() {
	dmsetup info -c --noheadings -o blkdevname "$1"
}

# The MiB each fio job covers. The debug guest (KASAN and lockdep under TCG,
# roughly ten times slower) and the qemu64 guest (one CPU, the C AES) set
# DCTEST_FIO_MIB on the kernel command line.
FIO_MIB=${DCTEST_FIO_MIB:-12}

# The debug guest also runs fewer of bioshapes' iterations (DCTEST_SHAPES_PCT
# percent of each test's count) and skips the dm-crypt control runs
# (DCTEST_CONTROL=0: dm-crypt reading diskcrypt's data, dm-crypt under the
# forward load), which the guests on Debian's kernel run: it is there for
# KASAN's and lockdep's view of diskcrypt.
SHAPES_PCT=${DCTEST_SHAPES_PCT:-100}
CONTROL=${DCTEST_CONTROL:-1}

# The sector sizes of datapath's and async's loads (fio, bioshapes), colon
# separated (DCTEST_SECTOR_SIZES). The debug guest runs them at 4096 bytes
# only: what is particular to that size (a sector across two pages,
# iv_large_sectors) is tested nowhere else, while its pressure test (fio and
# bioshapes, sync) and forward test (async writers) load 512-byte sectors.
SECTOR_SIZES=$(echo "${DCTEST_SECTOR_SIZES:-512:4096}" | tr ':' ' ')

# shapes_iterations N: bioshapes' iteration count for a test's N.
shapes_iterations() {
	echo $(($1 * SHAPES_PCT / 100))
}

# The AES block cipher under the XTS the tests build from templates: the
# generic C AES, or, on the debug guest (KASAN instruments the C AES down to
# ~150 KiB/s), DCTEST_AES=aes-aesni; either way XTS over ECB.
AES=${DCTEST_AES:-aes-generic}
# An asynchronous AES-XTS: every request completes in cryptd's worker (and,
# with the guests' small cryptd queue, some wait in its backlog).
ASYNC="capi:cryptd(xts(ecb($AES)))-plain64"
# A synchronous one, named by driver: where there is no AES-NI, a cryptd
# instance made by an earlier test (priority 150) would otherwise win
# "xts(aes)" over xts(ecb(aes-generic)) (100).
SYNC="capi:xts(ecb($AES))-plain64"

# fio_verify DEV BSSPLIT DIRECT SEED [FIO-OPTION...]: two jobs writing random
# blocks of the given sizes into their own FIO_MIB halves, then reading them
# back and checking every block (crc32c). With --verify_only, only the check.
fio_verify() {
	_dev=$1 _bs=$2 _direct=$3 _seed=$4
	shift 4
	_engine=libaio
	[ "$_direct" = 0 ] && _engine=psync
	fio --name=verify --filename="$_dev" --ioengine=$_engine --iodepth=16 \
		--direct="$_direct" --rw=randwrite --bssplit="$_bs" --size="${FIO_MIB}M" \
		--offset_increment="${FIO_MIB}M" --numjobs=2 --verify=crc32c --verify_fatal=1 \
		--do_verify=1 --randseed="$_seed" --end_fsync=1 --group_reporting \
		--output=/tmp/fio.out "$@" || { cat /tmp/fio.out; return 1; }
}

# bssplit SECTOR_SIZE: block sizes from one sector to 4 MiB, mostly small;
# to 1 MiB where the jobs cover less than 4 MiB (the debug guest).
bssplit() {
	if [ "$FIO_MIB" -lt 4 ]; then
		_big=1m/20 _big4k=1m/15
	else
		_big=1m/15:4m/5 _big4k=1m/10:4m/5
	fi
	if [ "$1" = 512 ]; then
		echo "512/30:4k/30:64k/20:$_big"
	else
		echo "4k/50:16k/15:128k/20:$_big4k"
	fi
}

# status_field MAPPING NAME: one counter of dmsetup status.
status_field() {
	dmsetup status "$1" | tr ' ' '\n' | sed -n "s/^$2://p"
}

# drop_caches: make the next buffered reads come from the device.
drop_caches() {
	sync
	echo 3 >/proc/sys/vm/drop_caches
}
