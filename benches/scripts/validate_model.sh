#!/usr/bin/env bash
# Validates the cost model and the automatic choice (docs/cost-model.md):
# for each network shape (BRAID_SHAPE=alpha_us,gbps: user-space shaping of
# every link) and N, every collective at sizes 8 B to 64 MiB, braid-bench
# measures every algorithm (-a all) with its auto choice marked and the
# model's prediction; summarise with benches/scripts/validate_model.py.
# Each size is its own run, which calibrates afresh just before it measures
# (BRAID_CALIBRATE=refresh unless set): on a host whose core-to-core
# latency changes within seconds (the 2-vCPU VM's fast and slow states) a
# calibration a few seconds old prices another machine. The figures each
# run calibrated (BRAID_DEBUG=tuning's network line) go to
# OUT.jsonl.calibration, so that the rows can be re-priced later, and what
# each pair measured (BRAID_DEBUG=tuning's pairs line) to OUT.jsonl.pairs.
# Usage: benches/scripts/validate_model.sh OUT.jsonl [shapes] [ranks] [sizes]
#   shapes: space-separated alpha_us,gbps (default "20,10 500,1 2000,2"),
#           "none" for the plain transport
#   ranks:  default "4 8"
#   transport: BENCH_TRANSPORT=local (threads, default) | tcp | shm (processes under braid-run)
#   BRAID_BIN: folder of prebuilt braid-bench and braid-run (else cargo builds them)
#   COLLECTIVES: space-separated subset (default: all eight)
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:?usage: validate_model.sh OUT.jsonl [shapes] [ranks] [sizes]}
shapes=${2:-"20,10 500,1 2000,2"}
ranks=${3:-"4 8"}
sizes=${4:-8,1K,64K,1M,16M,64M}
transport=${BENCH_TRANSPORT:-local}
collectives=${COLLECTIVES:-"all_reduce all_gather broadcast reduce reduce_scatter gather scatter all_to_all"}
# BRAID_BIN: a folder with braid-bench and braid-run already built (a
# machine without cargo); otherwise they are built here.
if [ -n "${BRAID_BIN:-}" ]; then
  bin=$BRAID_BIN
else
  cargo build --release -q -p braid -p braid-bench
  bin=${CARGO_TARGET_DIR:-target}/release
fi
: >"$out"
: >"$out.calibration"
: >"$out.pairs"
echo "# $(date -u +%FT%TZ) $(uname -r) $(nproc) cpus; transport $transport; shapes $shapes; ranks $ranks; sizes $sizes" >&2
for shape in $shapes; do
  for n in $ranks; do
    for c in $collectives; do
      echo "# shape $shape, N=$n, $c" >&2
      env_shape=()
      [ "$shape" != none ] && env_shape=(BRAID_SHAPE="$shape")
      if [ "$transport" = local ]; then
        cmd=("$bin/braid-bench" "$c" --ranks "$n")
      else
        cmd=("$bin/braid-run" -n "$n" --no-prefix -- "$bin/braid-bench" "$c" --transport "$transport")
      fi
      # braid-bench's default calls per row (up to 1000 for small sizes,
      # its samples interleaved across the algorithms), except on shapes
      # of α >= 100 µs, which take seconds per call at 64 MiB: 5 calls
      # after 1 warm-up there.
      counts=()
      [ "$shape" != none ] && awk -v a="${shape%%,*}" 'BEGIN { exit !(a >= 100) }' && counts=(-n 5 -w 1)
      for size in ${sizes//,/ }; do
        env "${env_shape[@]}" BRAID_CALIBRATE="${BRAID_CALIBRATE:-refresh}" BRAID_TIMEOUT=600 BRAID_DEBUG=tuning \
          "${cmd[@]}" --sizes "$size" -a all "${counts[@]}" --start together --json \
          2> >(grep 'tuning \(network\|pairs\)' | sed "s/^/$shape N=$n $c $size: /" \
                 | tee >(grep 'tuning pairs' >>"$out.pairs") | grep 'tuning network' >>"$out.calibration") \
          | grep '^{' | sed "s/^{/{\"shape\":\"$shape\",/" >>"$out" || echo "# FAILED: $shape N=$n $c $size" >&2
      done
    done
  done
done
