#!/usr/bin/env bash
# The Redis server the mirror tests run against: Debian's redis-server
# (installed with apt-get when missing and run as root), one process per
# directory, no persistence (a restart empties it, the harder case).
#
#   scripts/test-redis.sh bin              install if needed, print the binary path
#   scripts/test-redis.sh start DIR [PORT [ARGS...]]  start in the background, wait
#                                          until it answers, print its URL (PORT 0 = a
#                                          free one; ARGS go to the server: --requirepass)
#   scripts/test-redis.sh stop DIR         stop the server started in DIR
#   scripts/test-redis.sh serve DIR [PORT [ARGS...]]  start, print the URL, stop when
#                                          stdin closes (how the tests start one and
#                                          never leak it)
set -euo pipefail

install_server() {
  command -v redis-server >/dev/null 2>&1 && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "test-redis: installing redis-server (for the Redis mirror tests)" >&2
    apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >&2
  else
    echo "test-redis: redis-server is required: sudo apt-get install redis-server" >&2
    exit 1
  fi
}

# Starts on $port and waits until it answers; returns 1 if the port was taken.
try_start() {
  local dir=$1 port=$2 answer
  shift 2
  : > "$dir/server.log"
  redis-server --bind 127.0.0.1 --port "$port" --dir "$dir" --save "" --appendonly no \
    --daemonize no --logfile "$dir/server.log" "$@" >/dev/null 2>&1 &
  echo $! > "$dir/server.pid"
  for _ in $(seq 1 100); do
    # A server with --requirepass answers NOAUTH: it is up all the same.
    answer=$(redis-cli -p "$port" ping 2>/dev/null || true)
    case "$answer" in PONG|NOAUTH*) return 0 ;; esac
    if ! kill -0 "$(cat "$dir/server.pid")" 2>/dev/null; then
      grep -q "Address already in use" "$dir/server.log" && return 1
      echo "test-redis: server exited; its log:" >&2; cat "$dir/server.log" >&2; exit 1
    fi
    sleep 0.1
  done
  echo "test-redis: server did not answer within 10 s; its log:" >&2; cat "$dir/server.log" >&2
  stop_server "$dir"; exit 1
}

start_server() {
  local dir=$1 port=${2:-0}
  shift; shift || true
  install_server
  mkdir -p "$dir"
  if [ "$port" != 0 ]; then
    try_start "$dir" "$port" "$@" || { echo "test-redis: port $port is taken" >&2; exit 1; }
  else
    for _ in $(seq 1 20); do
      port=$((20000 + RANDOM % 30000))
      try_start "$dir" "$port" "$@" && break
      port=0
    done
    [ "$port" != 0 ] || { echo "test-redis: no free port found" >&2; exit 1; }
  fi
  echo "redis://127.0.0.1:$port/0"
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
  bin) install_server; command -v redis-server ;;
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
  *) sed -n '2,14p' "$0" >&2; exit 2 ;;
esac
