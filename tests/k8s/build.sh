#!/usr/bin/env bash
# Builds the end-to-end tests' control plane from Go modules, once per pinned
# version, into $FERRY_CACHE/k8s/<version>/bin: kube-apiserver and
# kube-controller-manager from k8s.io/kubernetes (go.mod beside this file pins
# it and replaces its staging modules with the matching releases), and the etcd
# server of the release Kubernetes is tested with. Static binaries
# (CGO_ENABLED=0), cloud providers left out (the `providerless` tag), the
# release in /version as `make` would stamp it.
#
#   tests/k8s/build.sh          build what is missing, print the bin folder
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
FERRY_CACHE=${FERRY_CACHE:-$HOME/.cache/ferry}

KUBE_VERSION=$(awk '$1 == "k8s.io/kubernetes" {print $2; exit}' "$HERE/go.mod")
ETCD_VERSION=$(awk '$1 == "go.etcd.io/etcd/server/v3" {print $2; exit}' "$HERE/go.mod")
[ -n "$KUBE_VERSION" ] && [ -n "$ETCD_VERSION" ] || { echo "tests/k8s/go.mod names no kubernetes or etcd version" >&2; exit 1; }
OUT=$FERRY_CACHE/k8s/$KUBE_VERSION-etcd-$ETCD_VERSION
STAMP="$KUBE_VERSION $ETCD_VERSION $(sha256sum "$HERE/go.sum" "$HERE/go.mod" "$HERE/etcd/main.go" "${BASH_SOURCE[0]}" | sha256sum | cut -c1-16)"

# One build at a time (two test commands may start at once).
mkdir -p "$FERRY_CACHE/k8s"
exec 9>"$OUT.lock"
flock 9
if [ "$(cat "$OUT/.built" 2>/dev/null)" = "$STAMP" ]; then
  echo "$OUT/bin"
  exit 0
fi

log() { printf '[k8s] %s\n' "$*" >&2; }
command -v go >/dev/null || { log "FAILED: no Go toolchain on PATH"; exit 1; }
mkdir -p "$OUT/bin"
rm -f "$OUT/.built"

major=${KUBE_VERSION#v}; major=${major%%.*}
minor=${KUBE_VERSION#v*.}; minor=${minor%%.*}
date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
  ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$date"
done

cd "$HERE"
export CGO_ENABLED=0 GOFLAGS="-mod=mod -buildvcs=false" GOTOOLCHAIN=local
log "go mod download (k8s.io/kubernetes $KUBE_VERSION, etcd $ETCD_VERSION)"
go mod download
for cmd in kube-apiserver kube-controller-manager; do
  log "go build $cmd $KUBE_VERSION (a few minutes, once)"
  go build -trimpath -tags providerless -ldflags "$ldflags" -o "$OUT/bin/$cmd.tmp" "k8s.io/kubernetes/cmd/$cmd"
  mv "$OUT/bin/$cmd.tmp" "$OUT/bin/$cmd"
done
log "go build etcd $ETCD_VERSION"
go build -trimpath -ldflags "-s -w" -o "$OUT/bin/etcd.tmp" ./etcd
mv "$OUT/bin/etcd.tmp" "$OUT/bin/etcd"

"$OUT/bin/kube-apiserver" --version >&2
echo "$STAMP" > "$OUT/.built"
echo "$OUT/bin"
