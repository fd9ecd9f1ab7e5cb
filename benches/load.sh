#!/usr/bin/env bash
# Hot-path load benchmark: direct vs through veil, in one run (see benches/load.rs).
#   LOAD_SECS=4 benches/load.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ulimit -n 8192 2>/dev/null || true   # 1,000 idle connections need ~2,100 descriptors
cargo bench --bench load
