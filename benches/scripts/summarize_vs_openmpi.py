#!/usr/bin/env python3
"""Turns the output of vs_openmpi.sh into a markdown table: per collective
and size, Open MPI's and braid's median time and busbw in each round, and the
busbw ratio braid / Open MPI of the same round (interleaved pairs)."""
import re
import sys

MPI_NAMES = {"allreduce": "all_reduce", "allgather": "all_gather", "bcast": "broadcast",
             "reduce_scatter": "reduce_scatter", "reduce": "reduce", "gather": "gather",
             "scatter": "scatter", "alltoall": "all_to_all"}
OPS = ["all_reduce", "all_gather", "broadcast", "reduce_scatter", "reduce", "gather", "scatter",
       "all_to_all"]


def parse(path):
    rows = {}  # (impl, round, op, bytes) -> (us, busbw)
    fps = {}
    impl = rnd = op = None
    for line in open(path):
        m = re.match(r"## round (\d+): (Open MPI|braid|memcpy)", line)
        if m:
            rnd = int(m.group(1))
            impl = {"Open MPI": "ompi", "braid": "braid", "memcpy": "memcpy"}[m.group(2)]
            continue
        f = line.split()
        if impl == "memcpy" and len(f) >= 4 and f[0].isdigit():
            fps[("memcpy", rnd, int(f[0]))] = float(f[3])
            continue
        m = re.search(r"round trip: median ([\d.]+) ns", line)
        if m and rnd is not None:
            fps[(impl, rnd)] = float(m.group(1))
            continue
        m = re.match(r"## (\w+)", line)
        if m:
            op = MPI_NAMES.get(m.group(1), m.group(1))
            continue
        f = line.replace("[0]", "").split()
        if impl == "ompi" and len(f) >= 10 and f[0].isdigit():
            rows[(impl, rnd, op, int(f[0]))] = (float(f[3]), float(f[8]))
        elif impl == "braid" and len(f) >= 10 and f[0].isdigit():
            # ... time [predicted] algbw busbw #wrong algorithm: busbw is
            # third from the end (the predicted column came later).
            rows[(impl, rnd, op, int(f[0]))] = (float(f[5]), float(f[-3]))
    return rows, fps


def human(b):
    for unit, size in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if b >= size:
            return f"{b // size} {unit}"
    return f"{b} B"


def main():
    rows, fps = parse(sys.argv[1])
    rounds = sorted({k[1] for k in rows})
    print("fingerprints (ns): " + ", ".join(f"round {r}: Open MPI {fps.get(('ompi', r), '?')}, braid {fps.get(('braid', r), '?')}" for r in rounds))
    print()
    print()
    print("| collective | size | Open MPI µs | braid µs | Open MPI busbw | braid busbw | braid / Open MPI |")
    print("|---|---|---|---|---|---|---|")
    for key in sorted(k for k in fps if k[0] == "memcpy"):
        print(f"memcpy round {key[1]}, {human(key[2])}: {fps[key]:.2f} GB/s")
    ops = [op for op in OPS if any(k[2] == op for k in rows)]
    sizes = sorted({k[3] for k in rows})
    for op in ops:
        for b in sizes:
            cells = []
            for r in rounds:
                o, br = rows.get(("ompi", r, op, b)), rows.get(("braid", r, op, b))
                cells.append((o, br))
            if not any(o and br for o, br in cells):
                continue
            fmt = lambda v, i: " / ".join(f"{c[i][v]:.3g}" if c[i] else "-" for c in cells)
            ratio = " / ".join(
                (f"{br[1] / o[1]:.2f}" if o and br and o[1] > 0 else (f"{o[0] / br[0]:.2f} (time)" if o and br else "-"))
                for o, br in cells)
            if b <= 8:
                ratio = " / ".join(f"{o[0] / br[0]:.2f} (time)" if o and br else "-" for o, br in cells)
            print(f"| {op} | {human(b)} | {fmt(0, 0)} | {fmt(0, 1)} | {fmt(1, 0)} | {fmt(1, 1)} | {ratio} |")


if __name__ == "__main__":
    main()
