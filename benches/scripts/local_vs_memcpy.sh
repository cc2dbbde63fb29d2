#!/usr/bin/env bash
# In-process (local transport) collectives next to the single-thread memcpy
# anchor, interleaved in short blocks with the machine-state fingerprint
# before each (the host flips between fast and slow states; see
# ../shared/anchors/README.md). Usage: benches/scripts/local_vs_memcpy.sh [rounds]
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-3}
anchors=${ANCHORS:-../shared/anchors}
out=${TMPDIR:-/tmp}/braid-anchors
mkdir -p "$out"
gcc -O2 -o "$out/memcpy_bw" "$anchors/memcpy_bw.c"
gcc -O2 -pthread -o "$out/core_pingpong" "$anchors/core_pingpong.c"
cargo build --release -q -p braid-bench
bench=${CARGO_TARGET_DIR:-target}/release/braid-bench
echo "# $(date -u +%FT%TZ) $(uname -r) $(nproc) cpus"
for round in $(seq "$rounds"); do
  echo "## round $round"
  "$out/core_pingpong" 0 1 50000
  "$out/memcpy_bw" 1048576 16777216 268435456
  for c in all_reduce all_gather broadcast reduce_scatter; do
    "$bench" "$c" --ranks 4 -b 8 -e 64M -f 8 -n 20 -w 3 -c | grep -v '^#  \|^# [a-z]' || true
  done
done
