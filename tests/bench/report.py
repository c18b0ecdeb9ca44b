#!/usr/bin/env python3
"""Turns the guest's "INFO RESULT" lines into the benchmark tables.

Wall-clock mode (default): each row is the median of the rounds for MB/s and
IOPS, the spread ((max - min) / median) and the ratios diskcrypt / dm-crypt
(both variants) and diskcrypt / raw, computed on the medians; then, per
workload, the paired ratio: in each round, diskcrypt's IOPS over that same
round's IOPS of the dm-crypt variant with the better median (the
configurations of a round run back to back, so drift of the host hits them
alike), and the median of those. The variant is chosen once per workload, not
per round: the larger of two noisy figures of one round is above either one's
typical figure, so two identical configurations with TCG's run-to-run noise
would pair at about 0.9x against it.

Instruction-counting mode (--icount; QEMU ran with -icount shift=0, so one
nanosecond of guest time is one guest instruction): one run per row, IOPS and
instructions per I/O (runtime / I/Os completed) for every configuration, the
ratios diskcrypt / the better dm-crypt and diskcrypt / raw, and the split of
diskcrypt's instructions above raw into the cipher (dm-crypt aes-xts-plain64
minus dm-crypt cipher_null-ecb, both without workqueues, measured on reads)
and the rest (the target's own path).
Usage: report.py [--icount] RESULTS.TXT
"""
import random
import statistics
import sys
from collections import defaultdict

CONFIGS = ["raw", "crypt-default", "crypt-noqueue", "diskcrypt", "dc-inline", "dc-depth0", "dc-zero"]
DISKCRYPTS = ("diskcrypt", "dc-inline", "dc-depth0", "dc-zero")
BOOTSTRAP = 2000


def read_results(path):
    """(header, workload order, {(config, workload): [(KiB/s, IOPS, I/Os, ms)]},
    {(config, workload): {round: IOPS}})."""
    runs = defaultdict(list)
    rounds = defaultdict(dict)
    header = ""
    order = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            parts = line.split()
            if parts[:2] == ["INFO", "BENCH"]:
                header = " ".join(parts[2:])
            if parts[:2] != ["INFO", "RESULT"] or len(parts) not in (7, 9):
                continue
            cfg, load = parts[2], parts[3]
            nums = [float(p) for p in parts[5:]]
            if len(nums) == 2:
                nums += [0.0, 0.0]
            if load not in order:
                order.append(load)
            runs[(cfg, load)].append(tuple(nums))
            rounds[(cfg, load)][parts[4]] = nums[1]
    return header, order, runs, rounds


def wallclock(header, order, runs, rounds):
    print(f"diskcrypt benchmark, wall clock ({header})")
    print("median of rounds; spread = (max - min) / median; ratios on median IOPS")
    print(f"{'workload':<18}{'config':<15}{'MB/s':>9}{'IOPS':>10}{'spread':>8}"
          f"{'dc/crypt':>10}{'dc/noq':>8}{'dc/raw':>8}")
    for load in order:
        med = {}
        for cfg in CONFIGS:
            vals = runs.get((cfg, load), [])
            if not vals:
                continue
            mbs = statistics.median(v[0] * 1024 / 1e6 for v in vals)
            iops = statistics.median(v[1] for v in vals)
            spread = (max(v[1] for v in vals) - min(v[1] for v in vals)) / iops if iops else 0
            med[cfg] = iops
            ratios = ""
            if cfg in DISKCRYPTS:
                def ratio(base):
                    return f"{iops / med[base]:.2f}x" if med.get(base) else "-"
                ratios = f"{ratio('crypt-default'):>10}{ratio('crypt-noqueue'):>8}{ratio('raw'):>8}"
            print(f"{load:<18}{cfg:<15}{mbs:>9.1f}{iops:>10.0f}{spread * 100:>7.1f}%{ratios}")
    print()
    print("dc/best = median IOPS / the better dm-crypt's median IOPS; 95% interval of it by")
    print(f"bootstrap ({BOOTSTRAP} resamples of the rounds, a fixed seed); paired = per round,")
    print("IOPS / the same round's IOPS of the dm-crypt with the better median")
    print(f"{'workload':<18}{'config':<15}{'dc/best':>8}{'95% interval':>15}"
          f"{'paired':>8}{'min':>7}{'max':>7}{'rounds':>7}")
    for load in order:
        crypts = {c: rounds[(c, load)] for c in ("crypt-default", "crypt-noqueue")
                  if rounds.get((c, load))}
        if not crypts:
            continue
        medians = {c: statistics.median(r.values()) for c, r in crypts.items()}
        base = crypts[max(medians, key=medians.get)]
        for cfg in DISKCRYPTS:
            mine = rounds.get((cfg, load), {})
            pairs = [iops / base[rnd] for rnd, iops in mine.items() if base.get(rnd)]
            if not pairs:
                continue
            common = [r for r in mine if all(r in c for c in crypts.values())]
            low, high = bootstrap(mine, list(crypts.values()), common)
            best = statistics.median(mine.values()) / max(medians.values())
            print(f"{load:<18}{cfg:<15}{best:>7.2f}x{f'{low:.2f}x-{high:.2f}x':>15}"
                  f"{statistics.median(pairs):>7.2f}x{min(pairs):>6.2f}x{max(pairs):>6.2f}x"
                  f"{len(pairs):>7}")


def bootstrap(mine, crypts, common):
    """The 2.5th and 97.5th percentiles of median(mine) / the larger median of
    crypts, over resamples (with replacement) of the rounds all of them ran: a
    round is drawn whole, so the pairing within rounds is kept."""
    rng = random.Random(1)
    if len(common) < 2:
        return float("nan"), float("nan")
    stats = []
    for _ in range(BOOTSTRAP):
        pick = [rng.choice(common) for _ in common]
        best = max(statistics.median(c[r] for r in pick) for c in crypts)
        stats.append(statistics.median(mine[r] for r in pick) / best if best else 0)
    stats.sort()
    return stats[int(0.025 * BOOTSTRAP)], stats[int(0.975 * BOOTSTRAP) - 1]


def icount(header, order, runs):
    """Prints the instruction-counting tables ("-" where a configuration did not run)."""
    def instr(cfg, load):
        vals = runs.get((cfg, load))
        if not vals or not vals[0][2]:
            return None
        _, _, ios, ms = vals[0]
        return ms * 1e6 / ios

    print(f"diskcrypt benchmark, instruction counting ({header})")
    print("QEMU -icount shift=0: 1 ns of guest time = 1 guest instruction, so on a ram disk")
    print("IOPS = 1e9 / instructions per I/O (fio's own included); repeats exactly from boot")
    print("to boot. Path length, not cycles: no cache, lock or wait effects.")
    print("crypt = dm-crypt defaults, noq = dm-crypt no_read_workqueue no_write_workqueue;")
    print("ratios on IOPS: dc/best = diskcrypt / the better dm-crypt, dc/raw = diskcrypt / raw")
    print(f"{'IOPS':<18}{'raw':>9}{'crypt':>9}{'noq':>9}{'diskcrypt':>10}{'dc/best':>9}{'dc/raw':>8}")
    table = {}
    for load in order:
        ins = {cfg: instr(cfg, load) for cfg in
               ("raw", "crypt-default", "crypt-noqueue", "crypt-null", "diskcrypt", "dc-inline", "dc-zero")}
        table[load] = ins

        def iops(cfg, ins=ins):
            return f"{1e9 / ins[cfg]:.0f}" if ins[cfg] else "-"

        crypts = [ins[c] for c in ("crypt-default", "crypt-noqueue") if ins[c]]
        best = min(crypts) if crypts else None
        dc = ins["diskcrypt"]
        vs_best = f"{best / dc:.3f}x" if dc and best else "-"
        vs_raw = f"{ins['raw'] / dc:.3f}x" if dc and ins["raw"] else "-"
        print(f"{load:<18}{iops('raw'):>9}{iops('crypt-default'):>9}{iops('crypt-noqueue'):>9}"
              f"{iops('diskcrypt'):>10}{vs_best:>9}{vs_raw:>8}")
    print()
    print("instructions per I/O. above = diskcrypt - raw = cipher + target. cipher = noq - null")
    print("(dm-crypt aes-xts-plain64 minus dm-crypt cipher_null-ecb, both without workqueues:")
    print("the AES-XTS work, a floor no target goes below) measured on reads, where the null")
    print("transform works in place and touches no data; a write row uses the read row of its")
    print("size (AES-NI encrypts and decrypts a block in the same instructions), because on")
    print("writes cipher_null still copies into the bounce page (aes-null there counts AES over")
    print("that copy). target = above - cipher: the target's own path. noq-path = noq - raw -")
    print("cipher: dm-crypt's own path by the same measure.")
    print(f"{'instr/IO':<18}{'raw':>8}{'crypt':>9}{'noq':>9}{'null':>9}{'diskcrypt':>10}"
          f"{'aes-null':>9}{'above':>9}{'cipher':>9}{'target':>9}{'cipher%':>8}{'noq-path':>9}")

    def aes_minus_null(load):
        ins = table.get(load)
        if not ins or not ins["crypt-noqueue"] or not ins["crypt-null"]:
            return None
        return ins["crypt-noqueue"] - ins["crypt-null"]

    for load in order:
        ins = table[load]

        def num(value):
            return f"{value:.0f}" if value is not None else "-"

        raw, noq, null, dc = ins["raw"], ins["crypt-noqueue"], ins["crypt-null"], ins["diskcrypt"]
        measured = aes_minus_null(load)
        cipher = aes_minus_null(load.replace("write", "read")) if "write" in load else measured
        above = dc - raw if dc and raw else None
        target = above - cipher if above is not None and cipher is not None else None
        share = f"{cipher / above * 100:.0f}%" if cipher is not None and above else "-"
        noq_path = noq - raw - cipher if noq and raw and cipher is not None else None
        print(f"{load:<18}{num(raw):>8}{num(ins['crypt-default']):>9}{num(noq):>9}{num(null):>9}"
              f"{num(dc):>10}{num(measured):>9}{num(above):>9}{num(cipher):>9}{num(target):>9}"
              f"{share:>8}{num(noq_path):>9}")
    for variant in ("dc-inline", "dc-zero"):
        if not any(table[load][variant] for load in order):
            continue
        print()
        print(f"{variant:<18}{'instr/IO':>9}{'IOPS':>9}{'vs dc':>8}{'dc/best':>9}")
        for load in order:
            ins, dc = table[load][variant], table[load]["diskcrypt"]
            crypts = [table[load][c] for c in ("crypt-default", "crypt-noqueue") if table[load][c]]
            if ins:
                rel = f"{dc / ins:.3f}x" if dc else "-"
                best = f"{min(crypts) / ins:.3f}x" if crypts else "-"
                print(f"{load:<18}{ins:>9.0f}{1e9 / ins:>9.0f}{rel:>8}{best:>9}")


def main(argv):
    args = argv[1:]
    counting = bool(args) and args[0] == "--icount"
    if counting:
        args = args[1:]
    if len(args) != 1:
        print("usage: report.py [--icount] RESULTS.TXT", file=sys.stderr)
        return 2
    header, order, runs, rounds = read_results(args[0])
    if not runs:
        print("bench: no results", file=sys.stderr)
        return 1
    if counting:
        icount(header, order, runs)
    else:
        wallclock(header, order, runs, rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
