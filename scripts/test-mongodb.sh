#!/usr/bin/env bash
# The MongoDB-protocol server the tests run against: SecantusDB (MongoDB wire
# protocol over WiredTiger), built once from crates.io and cached.
#
#   scripts/test-mongodb.sh bin            install if needed, print the binary path
#   scripts/test-mongodb.sh start DIR [PORT [ARGS...]]  start in the background, wait
#                                          until it listens, print its URI (PORT 0 = any
#                                          free one; ARGS go to the server: --auth, --tls-*)
#   scripts/test-mongodb.sh stop DIR       stop the server started in DIR
#   scripts/test-mongodb.sh serve DIR [PORT [ARGS...]]  start, print the URI, stop when
#                                          stdin closes (how the tests start one and never
#                                          leak it)
#
# Environment: WXTOKEND_TEST_SERVER_ROOT overrides the install directory
# (default ~/.cache/wxtokend/secantus-mdb-VERSION).
set -euo pipefail

VERSION=0.5.3-beta.196
ROOT="${WXTOKEND_TEST_SERVER_ROOT:-${XDG_CACHE_HOME:-$HOME/.cache}/wxtokend/secantus-mdb-$VERSION}"
BIN="$ROOT/bin/secantusd-rs"

install_server() {
  [ -x "$BIN" ] && return 0
  if ! command -v cmake >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      echo "test-mongodb: installing cmake (needed to build the server)" >&2
      apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cmake >&2
    else
      echo "test-mongodb: cmake is required: sudo apt-get install cmake" >&2
      exit 1
    fi
  fi
  echo "test-mongodb: building secantus-mdb $VERSION into $ROOT (about 8 minutes, once)" >&2
  cargo install secantus-mdb --version "=$VERSION" --locked --ignore-rust-version --root "$ROOT" >&2
}

start_server() {
  local dir=$1 port=${2:-0}
  shift; shift || true
  install_server
  mkdir -p "$dir/data"
  : > "$dir/server.log"
  "$BIN" --host 127.0.0.1 --port "$port" --storage-path "$dir/data" \
    --cache-size 256M --log-file-max 16MB "$@" >>"$dir/server.log" 2>&1 &
  echo $! > "$dir/server.pid"
  local listening=""
  for _ in $(seq 1 300); do
    listening=$(grep -o -m1 'listening on [0-9.]*:[0-9]*' "$dir/server.log" || true)
    [ -n "$listening" ] && break
    if ! kill -0 "$(cat "$dir/server.pid")" 2>/dev/null; then
      echo "test-mongodb: server exited; its log:" >&2; cat "$dir/server.log" >&2; exit 1
    fi
    sleep 0.1
  done
  if [ -z "$listening" ]; then
    echo "test-mongodb: server did not start within 30 s; its log:" >&2; cat "$dir/server.log" >&2
    stop_server "$dir"; exit 1
  fi
  echo "mongodb://${listening#listening on }/?directConnection=true"
}

stop_server() {
  local dir=$1 pid
  [ -f "$dir/server.pid" ] || return 0
  pid=$(cat "$dir/server.pid")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$dir/server.pid"
}

case "${1:-}" in
  bin) install_server; echo "$BIN" ;;
  start) shift; start_server "${1:?DIR}" "${2:-0}" "${@:3}" ;;
  stop) stop_server "${2:?DIR}" ;;
  serve)
    shift
    dir=${1:?DIR}
    trap 'stop_server "$dir"' EXIT
    start_server "$dir" "${2:-0}" "${@:3}"
    # Wait until whoever started us closes our stdin (or dies).
    cat >/dev/null || true
    ;;
  *) sed -n '2,15p' "$0" >&2; exit 2 ;;
esac
