#!/usr/bin/env bash
# Runs the benchmarks behind BENCHMARKS.md against one test MongoDB server
# (or MONGODB_URI) and an in-process fake WeChat, with release builds.
#   scripts/bench.sh                 # everything (about 10 minutes)
#   scripts/bench.sh reader cached   # some sections: reader, cached, concurrent, footprint, coldstart, scale, mirror, metrics, huge (BENCH_HUGE_ACCOUNTS; not in the default run)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --bin wxtokend --example bench
if [ -z "${MONGODB_URI:-}" ]; then
  dir=$(mktemp -d -t wxtokend-bench-mongodb.XXXXXX)
  trap 'scripts/test-mongodb.sh stop "$dir"; rm -rf "$dir"' EXIT
  MONGODB_URI=$(scripts/test-mongodb.sh start "$dir")
  export MONGODB_URI
fi
"${CARGO_TARGET_DIR:-target}/release/examples/bench" "$@"
