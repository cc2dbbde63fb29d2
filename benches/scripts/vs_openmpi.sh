#!/usr/bin/env bash
# braid (ranks in separate processes under braid-run) interleaved with Open
# MPI (../shared/anchors/run_mpi.sh N tcp|shm) over the same path, a host
# state fingerprint (core ping-pong) before each block, and for shm the
# single-thread memcpy bandwidth. Needs Open MPI (apt-get install openmpi-bin
# libopenmpi-dev). Summarise with benches/scripts/summarize_vs_openmpi.py.
# Usage: benches/scripts/vs_openmpi.sh N tcp|shm [rounds]
set -euo pipefail
cd "$(dirname "$0")/../.."
n=${1:?usage: vs_openmpi.sh N tcp|shm [rounds]}
transport=${2:?usage: vs_openmpi.sh N tcp|shm [rounds]}
rounds=${3:-2}
case "$transport" in
  tcp)
    sizes=8,65536,1048576,16777216,67108864
    mpi_ops=allreduce,allgather,bcast,reduce_scatter
    ops="all_reduce all_gather broadcast reduce_scatter" ;;
  shm)
    sizes=8,1024,65536,1048576,16777216,67108864
    mpi_ops=allreduce,allgather,bcast,reduce_scatter,reduce,gather,scatter,alltoall
    ops="all_reduce all_gather broadcast reduce_scatter reduce gather scatter all_to_all" ;;
  *) echo "transport must be tcp or shm" >&2; exit 2 ;;
esac
. benches/scripts/anchors_setup.sh
gcc -O2 -o "$out/memcpy_bw" "$anchors/memcpy_bw.c"
echo "# $(date -u +%FT%TZ) $(uname -r) $(nproc) cpus, N=$n, $transport"
for round in $(seq "$rounds"); do
  if [ "$transport" = shm ]; then
    echo "## round $round: memcpy"
    "$out/memcpy_bw" | grep -E '^ +268435456|^ +16777216'
  fi
  echo "## round $round: Open MPI"
  "$out/core_pingpong" 0 1 50000
  "$anchors/run_mpi.sh" "$n" "$transport" --ops "$mpi_ops" --sizes "$sizes" --mintime 0.2 \
    | grep -E '^##|^ +[0-9]'
  echo "## round $round: braid"
  "$out/core_pingpong" 0 1 50000
  for c in $ops; do
    echo "## $c"
    BRAID_TRANSPORT=$transport "$bin/braid-run" -n "$n" -- "$bin/braid-bench" "$c" --sizes "$sizes" -c \
      | grep -v '#' || true
  done
done
