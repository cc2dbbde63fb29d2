#!/usr/bin/env python3
"""Prices validate_model.sh's rows again with the cost model of this build:
for each run (shape, N, collective, size) it hands the network that run
calibrated (OUT.jsonl.calibration) to `braid-sim --network`, takes each
algorithm's best chunk as its prediction and the cheapest algorithm as the
automatic choice, and writes the rows with predicted_us and auto_choice
replaced (the measured times kept), for validate_model.py. So a change to
the model can be scored on measurements taken before it (on a machine no
longer at hand) without measuring again; figures as printed (3 digits).
Rows and calibration lines of pooled rounds carry their round ("round": R
in a row, "round R: " before a line).
Usage: reprice.py IN.jsonl OUT.jsonl [BRAID_SIM]
  BRAID_SIM: the braid-sim binary (default target/release/braid-sim)"""
import json
import os
import subprocess
import sys
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

SIZE_TOKENS = {"8": 8, "1K": 1 << 10, "64K": 64 << 10, "1M": 1 << 20, "16M": 16 << 20, "64M": 64 << 20}


def bucket(b):
    return 0 if b == 0 else 1 << (b - 1).bit_length()


def main():
    src, dst = sys.argv[1], sys.argv[2]
    sim = sys.argv[3] if len(sys.argv) > 3 else "target/release/braid-sim"
    lines = {}
    # validate_model.sh writes OUT.jsonl.calibration; docs/validation keeps
    # NAME.calibration beside NAME.jsonl.
    cal = src + ".calibration"
    if not os.path.exists(cal):
        cal = src.removesuffix(".jsonl") + ".calibration"
    for line in open(cal):
        head, _, net = line.partition(": braid tuning network: ")
        # Files of several rounds: "round R: shape N=n collective size".
        rnd, _, rest = head.partition(": ") if head.startswith("round ") else ("", "", head)
        shape, n, coll, token = rest.split()
        rnd = int(rnd.split()[1]) if rnd else None
        lines[(rnd, shape, int(n[2:]), coll, SIZE_TOKENS[token])] = net.strip()
    rows = [json.loads(l) for l in open(src) if l.startswith("{")]
    cells = defaultdict(list)
    for r in rows:
        token = max(t for t in SIZE_TOKENS.values() if t <= max(r["bytes"], 8))
        key = (r.get("round"), r.get("shape", "none"), r["nranks"], r["collective"], token)
        cells[key + (r["bytes"], r.get("root") or 0)].append(r)

    def price(key):
        rnd, shape, n, coll, token, nbytes, root = key
        net = lines.get((rnd, shape, n, coll, token))
        if net is None:
            return key, None
        size = bucket(nbytes)
        # --chunks braid: the chunks and message bound a communicator tries.
        cmd = [sim, "--network", net, "-n", str(n), "-s", str(size), "-r", str(root), coll,
               "--all", "--json", "--chunks", "braid"]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        best = {}
        for l in out.splitlines():
            c = json.loads(l)
            t = c.get("time_us")
            if t is not None and (c["algorithm"] not in best or t < best[c["algorithm"]]):
                best[c["algorithm"]] = t
        return key, best

    with ThreadPoolExecutor(max_workers=4) as pool:
        priced = dict(pool.map(price, cells))
    with open(dst, "w") as f:
        for key, rs in cells.items():
            best = priced.get(key)
            if not best:
                continue
            choice = min(best, key=best.get)
            for r in rs:
                r = dict(r, predicted_us=best.get(r["algorithm"]), auto_choice=r["algorithm"] == choice)
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
