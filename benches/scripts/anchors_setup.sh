# Sourced by the scripts that run braid next to the anchors (run from the
# repository root): finds the anchors, builds the host fingerprint program
# and braid's release binaries. Sets anchors, out (built anchor programs),
# bin (braid-bench, braid-run) and defines fingerprint_ns.
anchors=$(cd "${ANCHORS:-../shared/anchors}" && pwd)
out=${TMPDIR:-/tmp}/braid-anchors
mkdir -p "$out"
gcc -O2 -pthread -o "$out/core_pingpong" "$anchors/core_pingpong.c"
cargo build --release -q -p braid -p braid-bench
bin=${CARGO_TARGET_DIR:-target}/release

# The host's state: the median core-to-core round trip in ns (fast ~80,
# slow ~400 on the 2-vCPU VM).
fingerprint_ns() {
  "$out/core_pingpong" 0 1 "${1:-50000}" | sed -n 's/.*median \([0-9.]*\) ns.*/\1/p'
}
