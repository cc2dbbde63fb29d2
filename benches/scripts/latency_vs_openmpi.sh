#!/usr/bin/env bash
# 8-byte all-reduce latency, braid against Open MPI over the same path, in
# many short interleaved rounds (the host flips between a fast and a slow
# state within seconds, so only neighbouring figures compare). Each line:
# round, core ping-pong median (the state), Open MPI median, braid median,
# Open MPI median again (µs; both harnesses: a barrier, then one timed call,
# the slowest rank's time, median over samples).
# Usage: benches/scripts/latency_vs_openmpi.sh N shm|tcp [rounds]
set -euo pipefail
cd "$(dirname "$0")/../.."
n=${1:?usage: latency_vs_openmpi.sh N shm|tcp [rounds]}
transport=${2:?usage: latency_vs_openmpi.sh N shm|tcp [rounds]}
rounds=${3:-10}
. benches/scripts/anchors_setup.sh
mpi() {
  "$anchors/run_mpi.sh" "$n" "$transport" --ops allreduce --sizes 8 --mintime 0.15 --csv \
    | awk -F, '$3 == 8 {print $6}'
}
braid() {
  BRAID_TRANSPORT=$transport "$bin/braid-run" -n "$n" -- "$bin/braid-bench" all_reduce \
    --sizes 8 -n 20000 -w 1000 --json \
    | sed -n 's/.*"time_us":\([0-9.e-]*\).*/\1/p' | awk '{printf "%.3f\n", $1}'
}
echo "# $(date -u +%FT%TZ) $(uname -r) $(nproc) cpus, N=$n, $transport, 8 B all_reduce"
echo "# round  pingpong_ns  openmpi_us  braid_us  openmpi_us"
for round in $(seq "$rounds"); do
  state=$(fingerprint_ns 20000)
  echo "$round $state $(mpi) $(braid) $(mpi)"
done | tee "$out/latency-rows.txt"
# Medians of each column over the rounds in the fast (ping-pong < 150 ns)
# and the slow state.
awk '{s = ($2 < 150) ? "fast" : "slow"; n[s]++; o[s] = o[s] " " $3 " " $5; b[s] = b[s] " " $4}
  END {for (s in n) print s, n[s], o[s], "|", b[s]}' "$out/latency-rows.txt" \
  | while read -r state rounds rest; do
      mpi_med=$(echo "${rest%%|*}" | tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
      braid_med=$(echo "${rest##*|}" | tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
      echo "# $state state, $rounds rounds: median Open MPI $mpi_med us, braid $braid_med us"
    done
