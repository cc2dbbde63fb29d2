#!/usr/bin/env python3
"""Summarises validate_model.sh's JSON lines: per (shape, N, collective,
size) cell, the fastest measured algorithm, the automatic choice and its
measured and predicted times. Prints the two acceptance figures (auto within
10% of the fastest in >= 90% of cells; prediction within 1.5x of the measured
time of the chosen algorithm), the level of the predictions (their
quartiles, and how many pass once divided by the median: a shared bias or
a miss of shape), every cell where either fails, and the median
predicted / measured of every algorithm's rows by collective and size (where
the model is off, and in which direction). Files of several rounds also
get the bench's repeatability: how often the algorithm fastest by the
median of the other rounds' times is within 10% of a round's fastest (the
score a model that knew every other round's measurements would get; no
model can be shown better than the measurement repeats). Last, at each
collective's smallest size (up to 1 KiB), every algorithm's measured minus
predicted time: whether what the model misses there is paid per call or
per hop.
Usage: validate_model.py OUT.jsonl [--markdown]"""
import json
import signal
import statistics
import sys
from collections import defaultdict


def within_bound(ratio):
    """Whether a predicted / measured ratio meets the 1.5x acceptance bound."""
    return 1 / 1.5 <= ratio <= 1.5


def human(b):
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if b >= size:
            return f"{b // size} {unit}"
    return f"{b} B"


def main():
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # | head
    cells = defaultdict(list)
    for line in open(sys.argv[1]):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line still being written
        if r.get("time_us") is None or r.get("wrong"):
            continue
        # Files of several runs mark each row with its "round": a cell is
        # one run's.
        key = (r.get("shape", "none"), r["nranks"], r["collective"], r["bytes"], r.get("round", 0))
        cells[key].append(r)
    total = within = pred_total = pred_ok = 0
    bad = []
    per_shape = defaultdict(lambda: [0, 0, 0, 0])
    ratios = defaultdict(list)
    for key in sorted(cells, key=lambda k: (k[0], k[4], k[1], k[2], k[3])):
        rows = cells[key]
        best = min(rows, key=lambda r: r["time_us"])
        auto = [r for r in rows if r.get("auto_choice")]
        if not auto:
            bad.append((key, "no auto choice measured", best, None))
            continue
        a = auto[0]
        total += 1
        s = per_shape[key[0]]
        s[0] += 1
        ok = a["time_us"] <= 1.10 * best["time_us"]
        within += ok
        s[1] += ok
        p = a.get("predicted_us")
        pok = None
        if p:
            ratio = p / a["time_us"]
            ratios[key[0]].append(ratio)
            pok = within_bound(ratio)
            pred_total += 1
            pred_ok += pok
            s[2] += 1
            s[3] += pok
        if not ok or pok is False:
            bad.append((key, None, best, a))
    print(f"cells: {total}; auto within 10% of the fastest: {within} ({100 * within / max(total, 1):.1f}%); "
          f"prediction within 1.5x of measured: {pred_ok} of {pred_total} ({100 * pred_ok / max(pred_total, 1):.1f}%)")
    print()
    print("| shape (α µs, Gbit/s) | cells | auto within 10% | prediction within 1.5× |")
    print("|---|---|---|---|")
    for shape, (n, w, pt, po) in sorted(per_shape.items()):
        print(f"| {shape} | {n} | {w} ({100 * w / max(n, 1):.0f}%) | {po} of {pt} ({100 * po / max(pt, 1):.0f}%) |")
    prediction_level(ratios)
    print()
    print("Cells where the automatic choice or the prediction misses:")
    print()
    print("| shape | N | collective | size | fastest (µs) | auto choice (µs) | auto / fastest | predicted (µs) | predicted / measured |")
    print("|---|---|---|---|---|---|---|---|---|")
    for key, note, best, a in bad:
        shape, n, c, b, _ = key
        if a is None:
            print(f"| {shape} | {n} | {c} | {human(b)} | {best['algorithm']} {best['time_us']:.4g} | {note} | | | |")
            continue
        p = a.get("predicted_us")
        print(f"| {shape} | {n} | {c} | {human(b)} | {best['algorithm']} {best['time_us']:.4g} | "
              f"{a['algorithm']} {a['time_us']:.4g} | {a['time_us'] / best['time_us']:.2f} | "
              f"{p:.4g} | {p / a['time_us']:.2f} |" if p else
              f"| {shape} | {n} | {c} | {human(b)} | {best['algorithm']} {best['time_us']:.4g} | "
              f"{a['algorithm']} {a['time_us']:.4g} | {a['time_us'] / best['time_us']:.2f} | - | - |")
    repeatability(cells)
    print()
    print("Median predicted / measured over every measured row (every algorithm), by size:")
    print()
    ratios = defaultdict(list)
    for key, rows in cells.items():
        shape, n, c, b, _ = key
        for r in rows:
            if r.get("predicted_us"):
                ratios[(shape, n, c, b)].append(r["predicted_us"] / r["time_us"])
    sizes = sorted({k[3] for k in ratios})
    print("| shape | N | collective | " + " | ".join(human(b) for b in sizes) + " |")
    print("|---|---|---|" + "---|" * len(sizes))
    for shape, n, c in sorted({k[:3] for k in ratios}):
        row = [ratios.get((shape, n, c, b)) for b in sizes]
        print(f"| {shape} | {n} | {c} | "
              + " | ".join(f"{statistics.median(v):.2f}" if v else "" for v in row) + " |")
    small_call_excess(cells)


def small_call_excess(cells):
    """Each algorithm's measured minus predicted time at the smallest size
    of its (shape, N, collective), median over rounds: a cost the model
    misses once per call shows as the same excess for every algorithm, one
    it misses per hop grows with the hops in a row (ring against star)."""
    smallest = {}
    for shape, n, c, b, _ in cells:
        smallest[(shape, n, c)] = min(b, smallest.get((shape, n, c), b))
    excess = defaultdict(lambda: defaultdict(list))
    for (shape, n, c, b, _), rows in cells.items():
        if b != smallest[(shape, n, c)] or b > 1024:
            continue
        for r in rows:
            if r.get("predicted_us"):
                excess[(shape, n, c, b)][r["algorithm"]].append(r["time_us"] - r["predicted_us"])
    if not excess:
        return
    print()
    print("Calls of at most 1 KiB (each collective's smallest size): measured − predicted, µs, "
          "median over rounds, by algorithm:")
    print()
    print("| shape | N | collective | size | algorithm: excess |")
    print("|---|---|---|---|---|")
    for (shape, n, c, b), by_algo in sorted(excess.items()):
        text = ", ".join(f"{a} {statistics.median(v):.2f}" for a, v in sorted(by_algo.items()))
        print(f"| {shape} | {n} | {c} | {human(b)} | {text} |")


def prediction_level(ratios):
    """The auto choice's predicted / measured per shape: its quartiles, and
    the cells within 1.5x were every prediction divided by the median. A
    miss the level explains (a bias every size shares) passes then; one of
    shape (a term missing at some sizes) does not."""
    print()
    print("Level of the predictions (auto choice's predicted / measured): quartiles, and the cells "
          "within 1.5× with every prediction divided by the median (as priced: the table above):")
    print()
    print("| shape | q1 | median | q3 | within 1.5× at median 1 |")
    print("|---|---|---|---|---|")
    for shape, v in sorted(ratios.items()):
        v = sorted(v)
        med = statistics.median(v)
        q1, q3 = v[len(v) // 4], v[(3 * len(v)) // 4]
        level = sum(within_bound(x / med) for x in v)
        print(f"| {shape} | {q1:.2f} | {med:.2f} | {q3:.2f} | {level} of {len(v)} |")


def repeatability(cells):
    """Scores, for every cell of a round, the algorithm with the lowest
    median time over the other rounds, as the automatic choice is scored."""
    rounds = defaultdict(dict)
    for (shape, n, c, b, rnd), rows in cells.items():
        rounds[(shape, n, c, b)][rnd] = {r["algorithm"]: r["time_us"] for r in rows}
    total = within = 0
    for per_round in rounds.values():
        for rnd, times in per_round.items():
            others = [t for o, t in per_round.items() if o != rnd]
            medians = {a: statistics.median(t[a] for t in others if a in t)
                       for a in times if any(a in t for t in others)}
            if not medians:
                continue
            pick = min(medians, key=medians.get)
            total += 1
            within += times[pick] <= 1.10 * min(times.values())
    if total:
        print()
        print(f"Repeatability: the fastest by the other rounds' median is within 10% of a round's "
              f"fastest in {within} of {total} cells ({100 * within / total:.1f}%)")


if __name__ == "__main__":
    main()
