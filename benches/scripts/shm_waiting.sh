#!/usr/bin/env bash
# Spin-then-futex waiting over shared memory with more ranks than cores:
# 4 ranks on this machine's CPUs (2 here), all-reduce and barrier latency
# with BRAID_SPIN_US = 0 (sleep at once), 20 (the default), 200 and 2000
# (long spins), interleaved in rounds, plus the CPU time each job burnt.
# A spin that does not pay costs the peers that need the core.
# Usage: benches/scripts/shm_waiting.sh [ranks] [rounds]
set -euo pipefail
cd "$(dirname "$0")/../.."
n=${1:-4}
rounds=${2:-3}
cargo build --release -q -p braid -p braid-bench
bin=${CARGO_TARGET_DIR:-target}/release
echo "# $(date -u +%FT%TZ) $(uname -r) $(nproc) cpus, $n ranks over shm"
tmp=$(mktemp -d)
for round in $(seq "$rounds"); do
  for spin in 0 20 200 2000; do
    for c in all_reduce barrier; do
      sizes=8,65536,1048576
      [ "$c" = barrier ] && sizes=8
      /usr/bin/time -o "$tmp/time" -f "%e %U %S" env BRAID_TRANSPORT=shm BRAID_SPIN_US=$spin \
        "$bin/braid-run" -n "$n" --no-prefix -- "$bin/braid-bench" "$c" --sizes "$sizes" -n 200 -w 20 >"$tmp/out"
      read -r wall user sys <"$tmp/time"
      grep -v '#' "$tmp/out" | awk -v s="$spin" -v r="$round" -v c="$c" -v w="$wall" -v u="$user" -v y="$sys" \
        '{printf "round %s  spin_us %5s  %-10s %8s B  %9s us   (job: wall %s s, cpu %.2f s)\n", r, s, c, $1, $6, w, u + y}'
    done
  done
done
rm -rf "$tmp"
