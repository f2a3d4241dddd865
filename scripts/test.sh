#!/usr/bin/env bash
# Runs the whole test suite: starts one test MongoDB server for the run
# (unless MONGODB_URI points at one already), then `cargo test --workspace`.
# Extra arguments go to cargo test, e.g. scripts/test.sh refresh
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${MONGODB_URI:-}" ]; then
  dir=$(mktemp -d -t wxtokend-test-mongodb.XXXXXX)
  trap 'scripts/test-mongodb.sh stop "$dir"; rm -rf "$dir"' EXIT
  MONGODB_URI=$(scripts/test-mongodb.sh start "$dir")
  export MONGODB_URI
  echo "test MongoDB: $MONGODB_URI" >&2
fi
# Tests that stop and restart MongoDB start their own server with the same script.
scripts/test-mongodb.sh bin >/dev/null
# The clock-skew test runs one daemon under Debian's libfaketime.
if ! ls /usr/lib/*/faketime/libfaketimeMT.so.1 >/dev/null 2>&1 && [ "$(id -u)" = 0 ] \
   && command -v apt-get >/dev/null 2>&1; then
  echo "test: installing libfaketime (for the clock-skew test)" >&2
  apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libfaketime >&2
fi
export WXTOKEND_REQUIRE_FAKETIME=1
cargo test --workspace --locked --features failpoints "$@"
