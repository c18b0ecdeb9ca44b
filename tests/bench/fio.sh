#!/bin/sh
# The guest half of `make bench`: the same fio workloads on one backing device
# raw and through each configuration. BENCH_MODE picks the device and set:
#   wallclock (default): /dev/vda (virtio, image in host RAM); raw, dm-crypt
#     (defaults), dm-crypt with no_read_workqueue and no_write_workqueue,
#     diskcrypt (defaults) and diskcrypt with all crypto inline whatever the
#     queue depth (inline_depth:65536). Rounds are interleaved (every config
#     runs once per round, each round starting one config later than the last)
#     so that drift in the emulator hits all configs alike.
#   icount (the host runs QEMU with -icount): a brd ram disk (or with
#     BENCH_DEVICE=nullb a memory-backed null_blk that completes in hard-IRQ
#     context), so that nothing waits on the host and guest time counts
#     instructions; raw, dm-crypt both
#     ways, dm-crypt with cipher_null-ecb and the no-workqueue flags (the same
#     target without the cipher: the cipher's share of the path), diskcrypt,
#     and dc-zero: diskcrypt with zero_unwritten, the table the network disk
#     types' profiles attach (agent/README.md, "Disk types").
# BENCH_CONFIGS overrides the set (names as above plus crypt-null, dc-inline,
# dc-depth0: diskcrypt with inline_depth:0, all crypto on its workqueue;
# dc-zero);
# BENCH_WORKLOADS keeps only the workloads it names (e.g. randwrite-4k-qd32).
# Emits "INFO RESULT <config> <workload> <round> <KiB/s> <IOPS> <I/Os> <ms>"
# lines (I/Os completed in fio's runtime of <ms> milliseconds).
# shellcheck source-path=SCRIPTDIR source=../kmod/common.sh
. /tests/kmod/common.sh
kmod_setup || { fail bench-setup "cannot load dm-diskcrypt or add the key"; exit 1; }

MODE=${BENCH_MODE:-wallclock}
ROUNDS=${BENCH_ROUNDS:-5}
RUNTIME=${BENCH_RUNTIME:-3}
SIZE=128M
case $MODE in
wallclock)
	DEV=/dev/vda
	LEN=$((256 * MiB))	# sectors in the benchmark region
	CONFIGS="raw crypt-default crypt-noqueue diskcrypt dc-inline"
	FIO_RUNTIME=${RUNTIME}s
	SEED=0	# new random offsets every run
	;;
icount)
	case ${BENCH_DEVICE:-brd} in
	brd)
		# brd was loaded at boot with 16 small disks: one disk that holds SIZE.
		/sbin/rmmod brd 2>/dev/null
		/sbin/modprobe brd rd_nr=1 rd_size=$((128 * 1024)) max_part=0 ||
			{ fail bench-setup "cannot load brd"; exit 1; }
		DEV=/dev/ram0
		;;
	nullb)
		# Completions in hard-IRQ context (an hrtimer that expires at
		# once), as multi-queue virtio-blk and NVMe complete: reads
		# take the path a hard-IRQ completion takes. It was loaded at
		# boot with its defaults.
		/sbin/rmmod null_blk 2>/dev/null
		/sbin/modprobe null_blk nr_devices=1 gb=1 memory_backed=1 \
			irqmode=2 completion_nsec=0 ||
			{ fail bench-setup "cannot load null_blk"; exit 1; }
		DEV=/dev/nullb0
		;;
	*)
		fail bench-setup "BENCH_DEVICE=$BENCH_DEVICE: want brd or nullb"
		exit 1
		;;
	esac
	LEN=$((128 * MiB))
	ROUNDS=1	# every run gives the same figures
	CONFIGS="raw crypt-default crypt-noqueue crypt-null diskcrypt dc-zero"
	FIO_RUNTIME=${BENCH_ICOUNT_MS:-300}ms
	SEED=1	# the same offsets every boot
	;;
*)
	fail bench-setup "BENCH_MODE=$MODE: want wallclock or icount"
	exit 1
	;;
esac

# BENCH_CONFIGS comes from the kernel command line, commas for spaces.
[ -n "${BENCH_CONFIGS:-}" ] && CONFIGS=$(echo "$BENCH_CONFIGS" | tr ',' ' ')

# Prefill so that reads return written data everywhere (on brd: so that every
# read finds a page, as on a used disk).
dd if=/dev/urandom of=/tmp/fill bs=1M count=8 2>/dev/null
i=0
while [ $i -lt 128 ]; do
	dd if=/tmp/fill of=$DEV bs=1M seek=$i oflag=direct conv=notrunc 2>/dev/null
	i=$((i + 8))
done
rm -f /tmp/fill

NOQ="2 no_read_workqueue no_write_workqueue"
for cfg in $CONFIGS; do
	case $cfg in
	raw) ;;
	crypt-default) dm_create "$cfg" "0 $LEN crypt aes-xts-plain64 $KEYREF 0 $DEV 0" ;;
	crypt-noqueue) dm_create "$cfg" "0 $LEN crypt aes-xts-plain64 $KEYREF 0 $DEV 0 $NOQ" ;;
	crypt-null) dm_create "$cfg" "0 $LEN crypt cipher_null-ecb - 0 $DEV 0 $NOQ" ;;
	diskcrypt) dm_create "$cfg" "0 $LEN diskcrypt aes-xts-plain64 $KEYREF 0 $DEV 0" ;;
	dc-inline) dm_create "$cfg" "0 $LEN diskcrypt aes-xts-plain64 $KEYREF 0 $DEV 0 1 inline_depth:65536" ;;
	dc-depth0) dm_create "$cfg" "0 $LEN diskcrypt aes-xts-plain64 $KEYREF 0 $DEV 0 1 inline_depth:0" ;;
	dc-zero) dm_create "$cfg" "0 $LEN diskcrypt aes-xts-plain64 $KEYREF 0 $DEV 0 1 zero_unwritten" ;;
	*)
		fail bench-setup "unknown config '$cfg'"
		exit 1
		;;
	esac || { fail "bench-$cfg" "cannot create the mapping"; exit 1; }
done

dev_of() {
	case $1 in
	raw) echo $DEV ;;
	*) echo "/dev/mapper/$1" ;;
	esac
}

# name rw bs(KiB) iodepth
WORKLOADS="randread-4k-qd1:randread:4:1 randread-4k-qd32:randread:4:32
randwrite-4k-qd1:randwrite:4:1 randwrite-4k-qd32:randwrite:4:32
read-1m:read:1024:4 write-1m:write:1024:4"
# BENCH_WORKLOADS (commas for spaces) keeps only the workloads it names.
if [ -n "${BENCH_WORKLOADS:-}" ]; then
	keep=""
	for w in $WORKLOADS; do
		case ",$BENCH_WORKLOADS," in
		*",${w%%:*},"*) keep="$keep $w" ;;
		esac
	done
	[ -n "$keep" ] || { fail bench-setup "BENCH_WORKLOADS=$BENCH_WORKLOADS names no workload"; exit 1; }
	WORKLOADS=$keep
fi

info "BENCH mode=$MODE device=$DEV rounds=$ROUNDS runtime=$FIO_RUNTIME size=$SIZE cpus=$(nproc) driver=$(grep -A2 'name *: xts(aes)' /proc/crypto | sed -n 's/driver *: //p' | head -n 1)"
# rotate N A B C...: the list started N places later (rotate 1 a b c: b c a).
rotate() {
	n=$1
	shift
	while [ "$n" -gt 0 ]; do
		set -- "$@" "$1"
		shift
		n=$((n - 1))
	done
	echo "$@"
}

ncfg=0
for cfg in $CONFIGS; do ncfg=$((ncfg + 1)); done
round=1
while [ "$round" -le "$ROUNDS" ]; do
	# Each round starts one configuration later, so that no configuration
	# always runs in the same place (after the same neighbour, at the same
	# time into the round) while the emulator drifts.
	# shellcheck disable=SC2086 # a list of words
	order=$(rotate $(((round - 1) % ncfg)) $CONFIGS)
	for w in $WORKLOADS; do
		name=${w%%:*} rest=${w#*:}
		rw=${rest%%:*} rest=${rest#*:}
		bs=${rest%%:*} qd=${rest#*:}
		for cfg in $order; do
			out=$(fio --name=b --filename="$(dev_of "$cfg")" --rw="$rw" --bs="${bs}k" \
				--iodepth="$qd" --ioengine=libaio --direct=1 --size=$SIZE \
				--runtime="$FIO_RUNTIME" --time_based --randrepeat=$SEED --norandommap \
				--output-format=terse --terse-version=3 2>/dev/null) || {
				fail "bench-$cfg-$name" "fio failed"
				continue
			}
			# terse v3: KiB, KiB/s, IOPS, ms of reads (fields 6-9) and writes (47-50)
			case $rw in
			*read) f=6 ;;
			*) f=47 ;;
			esac
			read -r kib kibs iops ms <<-EOT
				$(echo "$out" | awk -F';' -v f=$f '{ print $f, $(f + 1), $(f + 2), $(f + 3) }')
			EOT
			info "RESULT $cfg $name $round $kibs $iops $((kib / bs)) $ms"
		done
	done
	round=$((round + 1))
done
for cfg in $CONFIGS; do
	case $cfg in
	diskcrypt | dc-*) info "STATUS $cfg $(dmsetup status "$cfg" | cut -d' ' -f4-)" ;;
	esac
	[ "$cfg" = raw ] || dm_remove "$cfg"
done
pass bench-complete
