#!/usr/bin/env bash
# Load benchmark: direct, a no-op MITM proxy and veil (best-effort and required), in one run
# (see benches/load/main.rs for what it measures and the environment it reads).
#   LOAD_ROUNDS=3 LOAD_SECS=4 benches/load.sh
# LOAD_FORWARD_ONLY=1 adds this commit built with the `forward-only` feature (intercepts and
# forwards, records nothing) as the baseline, named `veil forward-only`: forwarding alone
# beside the full veil in the same rounds. Its build has its own target directory.
set -euo pipefail
cd "$(dirname "$0")/.."
# 1,000 idle connections need ~2,100 descriptors; the bench itself refuses to run with fewer.
[ "$(ulimit -n)" = unlimited ] || [ "$(ulimit -n)" -ge 8192 ] || ulimit -n 8192 2>/dev/null || true
if [ "${LOAD_FORWARD_ONLY:-}" = 1 ]; then
  [ -z "${LOAD_BASELINE:-}" ] || { echo "LOAD_FORWARD_ONLY=1 is a baseline: unset LOAD_BASELINE" >&2; exit 2; }
  # Absolute: the bench starts each veil in its own project directory.
  dir="$(realpath -m "${CARGO_TARGET_DIR:-target}")/forward-only"
  # The bench profile, as the bench's own veil is built (cross-crate optimized); like
  # release, it writes under release/.
  cargo build --locked --profile bench --features forward-only --bin veil --target-dir "$dir"
  export LOAD_BASELINE="$dir/release/veil" LOAD_BASELINE_NAME="veil forward-only"
fi
cargo bench --bench load
