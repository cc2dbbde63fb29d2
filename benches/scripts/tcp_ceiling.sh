#!/usr/bin/env bash
# The loopback TCP ceiling next to Open MPI and braid at N = 2, interleaved:
# per round a host fingerprint, then tcp_ceiling.c (what two processes get
# from the kernel with no library: oneway S for a broadcast of S, exchange
# S/2 for an all-gather of S, twice that for an all-reduce of S, reduction
# not counted), Open MPI's TCP path (../shared/anchors/run_mpi.sh 2 tcp) and
# braid under braid-run. Prints the per-round rows, then medians over rounds
# and how far above Open MPI the ceiling lets anyone go (Open MPI's time /
# the ceiling's). Needs gcc and Open MPI (openmpi-bin libopenmpi-dev).
# Usage: benches/scripts/tcp_ceiling.sh [rounds] [sizes]
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-4}
sizes=${2:-1048576,16777216,67108864}
. benches/scripts/anchors_setup.sh
gcc -O2 -Wall -o "$out/tcp_ceiling" benches/scripts/tcp_ceiling.c
rows=$(mktemp)
trap 'rm -f "$rows"' EXIT
echo "# $(date -u +%FT%TZ) $(uname -r) $(nproc) cpus, N=2, tcp, sizes $sizes, $rounds rounds"
for round in $(seq "$rounds"); do
  fp=$(fingerprint_ns)
  echo "## round $round, core ping-pong $fp ns"
  for s in ${sizes//,/ }; do
    read -r _ _ _ _ t < <("$out/tcp_ceiling" oneway "$s" 30)
    echo "$round ceiling broadcast $s $t" | tee -a "$rows"
    read -r _ _ _ _ t < <("$out/tcp_ceiling" exchange $((s / 2)) 30)
    echo "$round ceiling all_gather $s $t" | tee -a "$rows"
    echo "$round ceiling all_reduce $s $(python3 -c "print(2 * $t)")" | tee -a "$rows"
  done
  "$anchors/run_mpi.sh" 2 tcp --ops bcast,allgather,allreduce --sizes "$sizes" --mintime 0.2 |
    awk -v r="$round" '/^## /{op=$2} /^ +[0-9]/{
      name = op == "bcast" ? "broadcast" : op == "allgather" ? "all_gather" : "all_reduce";
      print r, "openmpi", name, $1, $4}' | tee -a "$rows"
  for c in broadcast all_gather all_reduce; do
    BRAID_TRANSPORT=tcp "$bin/braid-run" -n 2 --no-prefix -- "$bin/braid-bench" "$c" --sizes "$sizes" --json |
      grep '^{' | python3 -c '
import json, sys
for line in sys.stdin:
    r = json.loads(line)
    print(sys.argv[1], "braid", r["collective"], r["bytes"], r["time_us"])' "$round" | tee -a "$rows"
  done
done
python3 - "$rows" <<'EOF'
import statistics, sys
from collections import defaultdict
t = defaultdict(list)
for line in open(sys.argv[1]):
    _, who, c, s, us = line.split()
    t[(c, int(s), who)].append(float(us))
print()
print("| collective | size | ceiling µs | Open MPI µs | braid µs | Open MPI / ceiling (the most anyone can gain on Open MPI) | braid / Open MPI |")
print("|---|---|---|---|---|---|---|")
for c in ("broadcast", "all_gather", "all_reduce"):
    for s in sorted({k[1] for k in t if k[0] == c}):
        m = {w: statistics.median(t[(c, s, w)]) for w in ("ceiling", "openmpi", "braid") if t[(c, s, w)]}
        if len(m) < 3:
            continue
        print(f"| {c} | {s >> 20} MiB | {m['ceiling']:.0f} | {m['openmpi']:.0f} | {m['braid']:.0f} | "
              f"{m['openmpi'] / m['ceiling']:.2f} | {m['openmpi'] / m['braid']:.2f} |")
EOF
