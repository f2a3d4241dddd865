#!/usr/bin/env bash
# A local sandbox: the test MongoDB server, a fake WeChat, and wxtokend
# refreshing one account whose tokens live 30 s, so you can watch them rotate
# without WeChat credentials. Ctrl-C stops everything. State lives in .sandbox/.
#
# While it runs, from another terminal:
#   target/debug/wxtokend --config .sandbox/wxtokend.toml get wxsandbox00000001 --json
set -euo pipefail
cd "$(dirname "$0")/.."

ACCOUNT=wxsandbox00000001
dir=.sandbox
rm -rf "$dir"   # every sandbox starts from an empty database
mkdir -p "$dir"

cargo build --workspace --bins --locked

fake_pid=""
cleanup() {
  [ -n "$fake_pid" ] && kill "$fake_pid" 2>/dev/null || true
  scripts/test-mongodb.sh stop "$dir/mongodb"
}
trap cleanup EXIT

uri=$(scripts/test-mongodb.sh start "$dir/mongodb")

# A throwaway secret shared by the fake and the daemon.
secret="sandbox-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
target/debug/fake-wechat 127.0.0.1:0 "$ACCOUNT=$secret" --expires-in 30 --overlap 10 \
  2>"$dir/fake-wechat.log" &
fake_pid=$!
wechat_url=""
for _ in $(seq 1 100); do
  wechat_url=$(grep -o -m1 'http://[0-9.]*:[0-9]*' "$dir/fake-wechat.log" || true)
  [ -n "$wechat_url" ] && break
  sleep 0.1
done
[ -n "$wechat_url" ] || { echo "sandbox: fake WeChat did not start" >&2; exit 1; }

cat > "$dir/wxtokend.toml" <<TOML
# Written by scripts/sandbox.sh: a local MongoDB and a fake WeChat.
[mongodb]
uri = "$uri"
database = "wechat"

[wechat]
base_url = "$wechat_url"
allow_http = true
# The fake's tokens live 30 s, below the default floor of 60s.
min_expires_in = "10s"

[refresh]
margin = "10s"

[[accounts]]
id = "$ACCOUNT"
platform = "official_account"
secret_env = "WXTOKEND_SANDBOX_SECRET"
tickets = ["jsapi"]
TOML

cat >&2 <<MSG

sandbox: MongoDB at $uri, fake WeChat at $wechat_url
sandbox: tokens live 30 s and are refreshed 10 s before expiry. From another terminal:
  target/debug/wxtokend --config $dir/wxtokend.toml get $ACCOUNT --json
  target/debug/wxtokend --config $dir/wxtokend.toml status
  target/debug/wxtokend --config $dir/wxtokend.toml sign $ACCOUNT 'https://example.com/page'
  curl -s 127.0.0.1:9464/metrics

MSG
WXTOKEND_SANDBOX_SECRET=$secret target/debug/wxtokend --config "$dir/wxtokend.toml" run
