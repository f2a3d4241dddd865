#!/usr/bin/env bash
# A Python virtualenv with an SDK from PyPI, for the proofs that run an SDK
# itself against the fake WeChat and the Redis mirror (tests/sdk/). Built
# once per version into ~/.cache/wxtokend/ and reused; needs python3 with
# venv (python3-venv, installed with apt-get when missing and run as root).
#
#   scripts/sdk-venv.sh wechatpy VERSION   print the venv's python, building it if needed
set -euo pipefail

sdk=${1:?SDK}
version=${2:?VERSION}
case "$sdk" in
  # wechatpy imports a crypto library at start: pycryptodome is its lighter choice.
  wechatpy) packages=("wechatpy==$version" "pycryptodome==3.21.0" "redis==5.2.1") ;;
  *) echo "sdk-venv: unknown SDK $sdk" >&2; exit 2 ;;
esac
root="${XDG_CACHE_HOME:-$HOME/.cache}/wxtokend/venv-$sdk-$version"
if [ ! -x "$root/bin/python" ]; then
  # Debian's own python3 (whatever else is on PATH); making a venv needs
  # python3-venv, which a fresh Debian lacks (python3 too).
  python=/usr/bin/python3
  rm -rf "$root" "$root.tmp"
  if ! [ -x "$python" ] || ! "$python" -m venv "$root.tmp" >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      echo "sdk-venv: installing python3-venv" >&2
      apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >&2
      rm -rf "$root.tmp"
      "$python" -m venv "$root.tmp"
    else
      echo "sdk-venv: python3 with venv is required: sudo apt-get install python3-venv" >&2
      exit 1
    fi
  fi
  echo "sdk-venv: building $root (${packages[*]})" >&2
  "$root.tmp/bin/pip" install -q --disable-pip-version-check "${packages[@]}" >&2
  mv "$root.tmp" "$root"
fi
echo "$root/bin/python"
