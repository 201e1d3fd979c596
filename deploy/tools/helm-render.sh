#!/usr/bin/env bash
# Builds (once) and runs deploy/tools/helm-render, a renderer faithful to `helm template` for Tollgate's charts,
# for machines without a Helm binary (tests, CI). Users with Helm run `helm lint` / `helm template` instead.
#
#   deploy/tools/helm-render.sh --build                  build if needed; print the binary's path as the last line
#   deploy/tools/helm-render.sh [NAME] CHART [FLAGS...]  render, like `helm template [NAME] CHART [FLAGS...]`
#
# Needs Debian's Go and Go libraries (no module downloads): golang-go, golang-github-masterminds-sprig-dev (Sprig,
# the template functions Helm uses), golang-k8s-sigs-yaml-dev (the YAML library Helm uses) and
# golang-github-xeipuuv-gojsonschema-dev (the values.schema.json validator of Helm 3). Missing packages are
# installed with apt-get when running as root; otherwise the script fails naming them. The binary is cached outside
# the clone, keyed by a hash of main.go, this script and the Go and package versions:
#   ${TOLLGATE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tollgate}/helm-render/<hash>/helm-render
# Safe to run several times at once (flock). Fails loudly, never skips.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
src="$here/helm-render/main.go"
log() { echo "helm-render: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[ -f "$src" ] || die "$src is missing"

packages=(golang-go golang-github-masterminds-sprig-dev golang-k8s-sigs-yaml-dev golang-github-xeipuuv-gojsonschema-dev)
installed() { dpkg-query -W -f='${Status} ${Version}\n' "$1" 2>/dev/null | grep "install ok installed"; }

ensure_packages() {
  local missing=() p
  command -v dpkg-query >/dev/null || die "dpkg-query not found: this needs a Debian/Ubuntu machine with ${packages[*]}"
  for p in "${packages[@]}"; do
    installed "$p" >/dev/null || missing+=("$p")
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    die "missing Debian packages: ${missing[*]}; install them with: sudo apt-get install ${missing[*]}"
  fi
  log "installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2 \
    || { apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2; } \
    || die "apt-get install ${missing[*]} failed"
  for p in "${packages[@]}"; do
    installed "$p" >/dev/null || die "package $p is still not installed"
  done
}

build() {
  ensure_packages
  command -v go >/dev/null || die "'go' is not on PATH although golang-go is installed"
  local gocode=/usr/share/gocode
  [ -d "$gocode/src/github.com/Masterminds/sprig" ] || die "$gocode/src/github.com/Masterminds/sprig is missing (golang-github-masterminds-sprig-dev)"
  [ -d "$gocode/src/sigs.k8s.io/yaml" ] || die "$gocode/src/sigs.k8s.io/yaml is missing (golang-k8s-sigs-yaml-dev)"
  [ -d "$gocode/src/github.com/xeipuuv/gojsonschema" ] || die "$gocode/src/github.com/xeipuuv/gojsonschema is missing (golang-github-xeipuuv-gojsonschema-dev)"
  local key
  key=$( {
    sha256sum "$src" "$0" | cut -d' ' -f1
    go version
    for p in "${packages[@]}"; do installed "$p"; done
  } | sha256sum | cut -c1-16)
  local cache_root="${TOLLGATE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tollgate}/helm-render"
  local dest="$cache_root/$key"
  bin="$dest/helm-render"
  [ -x "$bin" ] && return 0
  mkdir -p "$cache_root"
  exec 9>"$cache_root/.lock"
  flock 9
  if [ ! -x "$bin" ]; then
    log "building $bin"
    local gopath
    gopath=$(mktemp -d)
    mkdir -p "$gopath/src/helm-render" "$dest"
    cp "$src" "$gopath/src/helm-render/main.go"
    if ! (cd "$gopath" && env GO111MODULE=off GOFLAGS= GOTOOLCHAIN=local GOPATH="$gopath:$gocode" \
      GOCACHE="$cache_root/gocache" go build -trimpath -o "$bin.tmp" helm-render) >&2; then
      rm -rf "$gopath"
      die "go build of $src failed (GOPATH mode against $gocode)"
    fi
    rm -rf "$gopath"
    mv "$bin.tmp" "$bin"
  fi
  exec 9>&-
}

build
if [ "${1:-}" = "--build" ]; then
  echo "$bin"
  exit 0
fi
exec "$bin" "$@"
