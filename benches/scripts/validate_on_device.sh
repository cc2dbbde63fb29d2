#!/usr/bin/env bash
# The cost model's N = 4 and 8 validation on a machine with cores to spare
# (docs/cost-model.md): plain shm, plain loopback TCP and the shaped
# 20 µs / 10 Gbit/s network with one port per rank, every collective and
# size, then the summary of each; and send_recv at N = 2, 4 and 8 over
# shm and TCP. Meant for a machine without cargo: build
# here with `cargo build --release -p braid -p braid-bench` and point
# BRAID_BIN at the folder (default target/release). About 6 minutes on the
# 2-vCPU VM; rows and calibrations go to OUT_DIR (default $OUT, else
# ./validation-out), named <network>-<cpus>cpu.jsonl.
# Usage: benches/scripts/validate_on_device.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-${OUT:-validation-out}}
export BRAID_BIN=${BRAID_BIN:-target/release}
for b in braid-bench braid-run; do
  [ -x "$BRAID_BIN/$b" ] || { echo "no $BRAID_BIN/$b: build it first (cargo build --release -p braid -p braid-bench)" >&2; exit 2; }
done
mkdir -p "$out"
cpus=$(nproc)
echo "# $(date -u +%FT%TZ) $(uname -n) $cpus cpus" | tee "$out/summary.txt"
# Which CPUs share a core, a cache or a socket: braid-run pins rank r to
# the r-th CPU, and the calibration's pairs (OUT.jsonl.pairs) are read
# against this.
lscpu -e >"$out/cpus.txt" 2>&1 || true
run() { # name transport shapes
  local file="$out/$1-${cpus}cpu.jsonl"
  local began=$SECONDS
  BENCH_TRANSPORT=$2 benches/scripts/validate_model.sh "$file" "$3" "4 8" 2>"$file.log" || echo "# $1: validate_model.sh failed (see $file.log)" >&2
  { echo "## $1 ($((SECONDS - began)) s)"; python3 benches/scripts/validate_model.py "$file"; } >"$file.summary"
  cat "$file.summary" >>"$out/summary.txt"
  head -7 "$file.summary"
}
run shm shm none
run tcp tcp none
run shape-20-10-ports local 20,10,ports
# One step of a send to the next rank and a receive from the previous, at
# N = 2, 4 and 8, against the model's price (its rows' predicted_us).
for t in shm tcp; do
  file="$out/send-recv-$t-${cpus}cpu.jsonl"
  COLLECTIVES=send_recv BENCH_TRANSPORT=$t benches/scripts/validate_model.sh "$file" none "2 4 8" 2>"$file.log" || true
  { echo "## send_recv $t"; python3 benches/scripts/validate_model.py "$file"; } >>"$out/summary.txt"
done
