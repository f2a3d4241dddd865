#!/usr/bin/env bash
# Runs the whole test suite: starts one test MongoDB server and one Redis
# server for the run (unless MONGODB_URI or REDIS_URL point at them already),
# then `cargo test --workspace`.
# Extra arguments go to cargo test, e.g. scripts/test.sh refresh
set -euo pipefail
cd "$(dirname "$0")/.."

mongodb_dir="" redis_dir=""
cleanup() {
  if [ -n "$mongodb_dir" ]; then scripts/test-mongodb.sh stop "$mongodb_dir"; rm -rf "$mongodb_dir"; fi
  if [ -n "$redis_dir" ]; then scripts/test-redis.sh stop "$redis_dir"; rm -rf "$redis_dir"; fi
}
trap cleanup EXIT

# Debian packages the tests need, installed in one apt-get run when missing
# (and run as root): tests running side by side must not each run apt-get.
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
ls /usr/lib/*/faketime/libfaketimeMT.so.1 >/dev/null 2>&1 || missing+=(libfaketime)
/usr/bin/python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "test: installing ${missing[*]}" >&2
  apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
fi
# The wechatpy proofs' virtualenvs (from PyPI, cached), built before the tests
# that use them start their clocks. Versions as in tests/it/mirror.rs.
for version in 1.8.18 2.0.0a26; do
  scripts/sdk-venv.sh wechatpy "$version" >/dev/null
done

if [ -z "${MONGODB_URI:-}" ]; then
  mongodb_dir=$(mktemp -d -t wxtokend-test-mongodb.XXXXXX)
  MONGODB_URI=$(scripts/test-mongodb.sh start "$mongodb_dir")
  export MONGODB_URI
  echo "test MongoDB: $MONGODB_URI" >&2
fi
# Tests that stop and restart MongoDB start their own server with the same script.
scripts/test-mongodb.sh bin >/dev/null
# The Redis mirror tests: Debian's redis-server (installed when missing), one
# for the run; tests that restart Redis start their own with the same script.
if [ -z "${REDIS_URL:-}" ]; then
  redis_dir=$(mktemp -d -t wxtokend-test-redis.XXXXXX)
  REDIS_URL=$(scripts/test-redis.sh start "$redis_dir")
  export REDIS_URL
  echo "test Redis: $REDIS_URL" >&2
fi
# The clock-skew test runs one daemon under Debian's libfaketime (installed above).
export WXTOKEND_REQUIRE_FAKETIME=1
cargo test --workspace --locked --features failpoints "$@"
