#!/bin/sh
# The guest half of `make bench`: fio on the same backing device (/dev/vda)
# raw, through dm-crypt (defaults), dm-crypt with no_read_workqueue and
# no_write_workqueue, diskcrypt (defaults) and diskcrypt with all crypto
# inline whatever the queue depth (inline_depth:65536). Rounds are interleaved (every config runs
# once per round) so that drift in the emulator hits all configs alike.
# Emits "INFO RESULT <config> <workload> <round> <KiB/s> <IOPS>" lines.
. /tests/kmod/common.sh
kmod_setup || { fail bench-setup "cannot load dm-diskcrypt or add the key"; exit 1; }

ROUNDS=${BENCH_ROUNDS:-5}
RUNTIME=${BENCH_RUNTIME:-3}
SIZE=128M
LEN=$((256 * MiB))	# sectors in the benchmark region

# Prefill so that reads return written data everywhere.
dd if=/dev/urandom of=/tmp/fill bs=1M count=8 2>/dev/null
i=0
while [ $i -lt 128 ]; do
	dd if=/tmp/fill of=/dev/vda bs=1M seek=$i oflag=direct conv=notrunc 2>/dev/null
	i=$((i + 8))
done

dm_create crypt-default "0 $LEN crypt aes-xts-plain64 $KEYREF 0 /dev/vda 0"
dm_create crypt-noqueue "0 $LEN crypt aes-xts-plain64 $KEYREF 0 /dev/vda 0 2 no_read_workqueue no_write_workqueue"
dm_create diskcrypt "0 $LEN diskcrypt aes-xts-plain64 $KEYREF 0 /dev/vda 0"
dm_create dc-inline "0 $LEN diskcrypt aes-xts-plain64 $KEYREF 0 /dev/vda 0 1 inline_depth:65536"

dev_of() {
	case $1 in
	raw) echo /dev/vda ;;
	*) echo "/dev/mapper/$1" ;;
	esac
}

# name rw bs iodepth
WORKLOADS="randread-4k-qd1:randread:4k:1 randread-4k-qd32:randread:4k:32
randwrite-4k-qd1:randwrite:4k:1 randwrite-4k-qd32:randwrite:4k:32
read-1m:read:1m:4 write-1m:write:1m:4"

info "BENCH rounds=$ROUNDS runtime=${RUNTIME}s size=$SIZE cpus=$(nproc) driver=$(grep -A2 'name *: xts(aes)' /proc/crypto | sed -n 's/driver *: //p' | head -n 1)"
round=1
while [ "$round" -le "$ROUNDS" ]; do
	for w in $WORKLOADS; do
		name=${w%%:*} rest=${w#*:}
		rw=${rest%%:*} rest=${rest#*:}
		bs=${rest%%:*} qd=${rest#*:}
		for cfg in raw crypt-default crypt-noqueue diskcrypt dc-inline; do
			out=$(fio --name=b --filename="$(dev_of "$cfg")" --rw="$rw" --bs="$bs" \
				--iodepth="$qd" --ioengine=libaio --direct=1 --size=$SIZE \
				--runtime="$RUNTIME" --time_based --randrepeat=0 --norandommap \
				--output-format=terse --terse-version=3 2>/dev/null) || {
				fail "bench-$cfg-$name" "fio failed"
				continue
			}
			case $rw in
			*read) set -- $(echo "$out" | awk -F';' '{ print $7, $8 }') ;;
			*) set -- $(echo "$out" | awk -F';' '{ print $48, $49 }') ;;
			esac
			info "RESULT $cfg $name $round $1 $2"
		done
	done
	round=$((round + 1))
done
dm_remove crypt-default crypt-noqueue diskcrypt dc-inline
pass bench-complete
