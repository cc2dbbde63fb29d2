#!/usr/bin/env python3
"""What the calibration's pairs measured, by how far apart in rank order
the two ranks were: reads validate_model.sh's OUT.jsonl.pairs (lines of
BRAID_DEBUG=tuning's "braid tuning pairs:") and prints, per transport, N
and distance |i - j|, the median α, o, B and D over every line's pairs.
braid-run pins rank r to the r-th CPU: read the distances against
`lscpu -e` (validate_on_device.sh keeps it in cpus.txt) to see whether
ranks that share a core, a cache or a socket measure faster links.
Usage: pairs_by_distance.py OUT.jsonl.pairs"""
import re
import statistics
import sys
from collections import defaultdict

PAIR = re.compile(
    r"(\w+) (\d+)-(\d+): alpha ([0-9.]+) us, o ([0-9.]+) us, B ([0-9.]+) GB/s"
    r"(?:, each way at once ([0-9.]+) GB/s)?"
)


def main():
    groups = defaultdict(lambda: defaultdict(list))
    for line in open(sys.argv[1]):
        head, _, pairs = line.partition("braid tuning pairs: ")
        n = re.search(r"N=(\d+)", head)
        for m in PAIR.finditer(pairs):
            kind, i, j = m.group(1), int(m.group(2)), int(m.group(3))
            key = (kind, int(n.group(1)) if n else 0, abs(i - j))
            for name, value in zip(("alpha", "o", "B", "D"), m.groups()[3:]):
                if value is not None:
                    groups[key][name].append(float(value))
    print("| kind | N | distance | pairs | α (µs) | o (µs) | B (GB/s) | D (GB/s) |")
    print("|---|---|---|---|---|---|---|---|")
    for key in sorted(groups):
        g = groups[key]
        med = lambda name: f"{statistics.median(g[name]):.3g}" if g[name] else "-"
        print(f"| {key[0]} | {key[1]} | {key[2]} | {len(g['alpha'])} | {med('alpha')} | "
              f"{med('o')} | {med('B')} | {med('D')} |")


if __name__ == "__main__":
    main()
