#!/usr/bin/env bash
# Load benchmark: direct, a no-op MITM proxy and veil (best-effort and required), in one run
# (see benches/load/main.rs for what it measures and the environment it reads).
#   LOAD_ROUNDS=3 LOAD_SECS=4 benches/load.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# 1,000 idle connections need ~2,100 descriptors; the bench itself refuses to run with fewer.
[ "$(ulimit -n)" = unlimited ] || [ "$(ulimit -n)" -ge 8192 ] || ulimit -n 8192 2>/dev/null || true
cargo bench --bench load
