#!/usr/bin/env bash
# braid over TCP (ranks in separate processes under braid-run) interleaved with
# Open MPI's TCP path (../shared/anchors/run_mpi.sh N tcp), a state fingerprint
# before each block. Needs Open MPI (apt-get install openmpi-bin libopenmpi-dev).
# Usage: benches/scripts/tcp_vs_openmpi.sh N [rounds]
set -euo pipefail
cd "$(dirname "$0")/../.."
n=${1:?usage: tcp_vs_openmpi.sh N [rounds]}
rounds=${2:-2}
anchors=$(cd "${ANCHORS:-../shared/anchors}" && pwd)
sizes=8,65536,1048576,16777216,67108864
out=${TMPDIR:-/tmp}/braid-anchors
mkdir -p "$out"
gcc -O2 -pthread -o "$out/core_pingpong" "$anchors/core_pingpong.c"
cargo build --release -q -p braid -p braid-bench
bin=${CARGO_TARGET_DIR:-target}/release
echo "# $(date -u +%FT%TZ) $(uname -r) $(nproc) cpus, N=$n"
for round in $(seq "$rounds"); do
  echo "## round $round: Open MPI"
  "$out/core_pingpong" 0 1 50000
  "$anchors/run_mpi.sh" "$n" tcp --ops allreduce,allgather,bcast,reduce_scatter --sizes "$sizes" --mintime 0.2 \
    | grep -E '^##|^ +[0-9]'
  echo "## round $round: braid"
  "$out/core_pingpong" 0 1 50000
  for c in all_reduce all_gather broadcast reduce_scatter; do
    echo "## $c"
    BRAID_TRANSPORT=tcp "$bin/braid-run" -n "$n" -- "$bin/braid-bench" "$c" --sizes "$sizes" -n 20 -w 3 -c \
      | grep -v '#' || true
  done
done
