#!/usr/bin/env python3
"""Turns the guest's "INFO RESULT" lines into the benchmark table.

Each row: the median of the rounds for MB/s and IOPS, the spread
((max - min) / median) and the ratios diskcrypt / dm-crypt (both variants)
and diskcrypt / raw, computed on the medians.
Usage: report.py RESULTS.TXT
"""
import statistics
import sys
from collections import defaultdict

CONFIGS = ["raw", "crypt-default", "crypt-noqueue", "diskcrypt", "dc-inline"]


def main(path):
    runs = defaultdict(list)
    header = ""
    order = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            parts = line.split()
            if parts[:2] == ["INFO", "BENCH"]:
                header = " ".join(parts[2:])
            if parts[:2] != ["INFO", "RESULT"] or len(parts) != 7:
                continue
            cfg, load, kib, iops = parts[2], parts[3], float(parts[5]), float(parts[6])
            if load not in order:
                order.append(load)
            runs[(cfg, load)].append((kib * 1024 / 1e6, iops))
    if not runs:
        print("bench: no results", file=sys.stderr)
        return 1
    print(f"diskcrypt benchmark ({header})")
    print("median of rounds; spread = (max - min) / median; ratios on median IOPS")
    print(f"{'workload':<18}{'config':<15}{'MB/s':>9}{'IOPS':>10}{'spread':>8}"
          f"{'dc/crypt':>10}{'dc/noq':>8}{'dc/raw':>8}")
    for load in order:
        med = {}
        for cfg in CONFIGS:
            vals = runs.get((cfg, load), [])
            if not vals:
                continue
            mbs = statistics.median(v[0] for v in vals)
            iops = statistics.median(v[1] for v in vals)
            spread = (max(v[1] for v in vals) - min(v[1] for v in vals)) / iops if iops else 0
            med[cfg] = iops
            ratios = ""
            if cfg in ("diskcrypt", "dc-inline"):
                def ratio(base):
                    return f"{iops / med[base]:.2f}x" if med.get(base) else "-"
                ratios = f"{ratio('crypt-default'):>10}{ratio('crypt-noqueue'):>8}{ratio('raw'):>8}"
            print(f"{load:<18}{cfg:<15}{mbs:>9.1f}{iops:>10.0f}{spread * 100:>7.1f}%{ratios}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
