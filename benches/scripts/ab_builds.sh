#!/usr/bin/env bash
# A/B of two builds of braid on one machine: validate_model.sh with each,
# one transport at a time, the builds alternating and then swapping order
# each round (the host's fast and slow spells fall on both alike), and
# validate_model.py's summary of each file. A build is a folder holding
# braid-bench and braid-run, e.g. one built from an older commit:
#   git worktree add /tmp/old 887074b
#   cargo build --release -p braid -p braid-bench --manifest-path /tmp/old/Cargo.toml
#   benches/scripts/ab_builds.sh /tmp/old/target/release target/release OUT_DIR
# Writes OUT_DIR/{a,b}-<transport>-r<round>.jsonl (with .calibration and
# .pairs), OUT_DIR/{a,b}-<transport>.jsonl (the rounds pooled, a "round"
# key per row) and OUT_DIR/summary.txt: per transport and build the
# pooled summary and, where the build prints what each pair measured,
# pairs_by_distance.py of those pairs. About 6 minutes per round on
# 16 cores for shm and TCP at N = 4 and 8.
# Usage: benches/scripts/ab_builds.sh BUILD_A BUILD_B OUT_DIR
#   TRANSPORTS (default "shm tcp"), RANKS (default "4 8"), ROUNDS (default 1),
#   SIZES and COLLECTIVES as validate_model.sh takes them.
set -euo pipefail
cd "$(dirname "$0")/../.."
a=${1:?usage: ab_builds.sh BUILD_A BUILD_B OUT_DIR}
b=${2:?usage: ab_builds.sh BUILD_A BUILD_B OUT_DIR}
out=${3:?usage: ab_builds.sh BUILD_A BUILD_B OUT_DIR}
for dir in "$a" "$b"; do
  for bin in braid-bench braid-run; do
    [ -x "$dir/$bin" ] || { echo "no $dir/$bin: build it first" >&2; exit 2; }
  done
done
mkdir -p "$out"
summary="$out/summary.txt"
echo "# $(date -u +%FT%TZ) $(uname -n) $(nproc) cpus; A = $a, B = $b" | tee "$summary"
lscpu -e >"$out/cpus.txt" 2>&1 || true
rounds=${ROUNDS:-1}
for t in ${TRANSPORTS:-shm tcp}; do
  for r in $(seq 1 "$rounds"); do
    order="a b"
    [ $((r % 2)) -eq 0 ] && order="b a"
    for which in $order; do
      dir=$a
      [ "$which" = b ] && dir=$b
      file="$out/$which-$t-r$r.jsonl"
      began=$SECONDS
      BRAID_BIN=$dir BENCH_TRANSPORT=$t benches/scripts/validate_model.sh "$file" none "${RANKS:-4 8}" ${SIZES:+"$SIZES"} 2>"$file.log" \
        || echo "# $which $t round $r: validate_model.sh failed (see $file.log)" | tee -a "$summary"
      echo "$which $t round $r ($((SECONDS - began)) s): $(python3 benches/scripts/validate_model.py "$file" | head -1)" | tee -a "$summary"
    done
  done
  for which in a b; do
    # Rounds pooled, as validate_model.py scores several rounds in one file.
    for r in $(seq 1 "$rounds"); do
      sed "s/^{/{\"round\":$r,/" "$out/$which-$t-r$r.jsonl"
    done >"$out/$which-$t.jsonl"
    { echo "## $which $t, $rounds round(s)"; python3 benches/scripts/validate_model.py "$out/$which-$t.jsonl"; } >>"$summary"
    # What each pair measured (builds that print it: commit 887074b does not).
    cat "$out/$which-$t"-r*.jsonl.pairs >"$out/$which-$t.pairs" 2>/dev/null || true
    if [ -s "$out/$which-$t.pairs" ]; then
      echo "## pairs by distance, $which $t" >>"$summary"
      python3 benches/scripts/pairs_by_distance.py "$out/$which-$t.pairs" >>"$summary" 2>&1 || true
    fi
  done
done
echo "summary: $summary"
