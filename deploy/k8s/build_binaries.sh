#!/usr/bin/env bash
# Build the Kubernetes test-cluster tools from the Go module proxy (no release downloads):
#   helm, etcd, kube-apiserver, kube-scheduler, kube-controller-manager, kwok.
# Binaries go to $FAULTLINE_K8S_BIN (default ~/.cache/faultline/bin), outside the repo.
# Idempotent: a binary whose stamp file names the pinned version is not rebuilt.
# Builds run under `nice -n 19` so they use idle CPU only.
# Usage: deploy/k8s/build_binaries.sh [--prefetch | helm|etcd|kwok|kube-apiserver|kube-scheduler|kube-controller-manager ...]
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-v1.37.2}
K8S_STAGING_VERSION=${K8S_STAGING_VERSION:-v0.37.2}
ETCD_VERSION=${ETCD_VERSION:-v3.6.16}
HELM_VERSION=${HELM_VERSION:-v3.22.0}
KWOK_VERSION=${KWOK_VERSION:-v0.8.0}

BIN=${FAULTLINE_K8S_BIN:-$HOME/.cache/faultline/bin}
WORK=${FAULTLINE_K8S_BUILD:-$HOME/.cache/faultline/k8s-build}
NICE=(nice -n 19)
export GOFLAGS="${GOFLAGS:-} -buildvcs=false -mod=mod"
export CGO_ENABLED=0
mkdir -p "$BIN" "$WORK"

command -v go >/dev/null || { echo "build_binaries: Go is needed (go 1.26+)" >&2; exit 1; }

log() { printf '[build_binaries %(%H:%M:%S)T] %s\n' -1 "$*"; }

is_built() {  # name version
  [[ -x "$BIN/$1" && -f "$BIN/.$1.version" && "$(cat "$BIN/.$1.version")" == "$2" ]]
}

timed() {  # name version cmd...
  local name=$1 version=$2; shift 2
  if is_built "$name" "$version"; then
    log "$name $version: already built ($BIN/$name)"
    return 0
  fi
  log "$name $version: building ..."
  local start=$SECONDS
  "$@"
  echo "$version" >"$BIN/.$name.version"
  local took=$((SECONDS - start))
  echo "$name $version ${took}s $(date -u +%FT%TZ)" >>"$BIN/build-times.log"
  log "$name $version: built in ${took}s"
}

# A throwaway wrapper module that requires MOD@VER and builds PKG from it. The wrapper ignores the
# dependency's own replace directives, which is what `go install pkg@ver` refuses to do.
wrapper() {  # dir module version
  local dir=$WORK/$1 mod=$2 ver=$3
  mkdir -p "$dir"
  if [[ ! -f "$dir/go.mod" || ! -f "$dir/.ready" || "$(cat "$dir/.ready")" != "$ver" ]]; then
    rm -f "$dir/go.mod" "$dir/go.sum" "$dir/.ready"
    (cd "$dir" && go mod init "faultline.local/$1" >/dev/null 2>&1)
  fi
  echo "$dir"
}

build_helm() {
  local dir; dir=$(wrapper helm helm.sh/helm/v3 "$HELM_VERSION")
  (cd "$dir" && [[ -f .ready ]] || { go get "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" && echo "$HELM_VERSION" >.ready; })
  # Helm's default Kubernetes version (for `helm template`/`lint` and kubeVersion checks) is set at link time.
  local minor=${K8S_VERSION#v1.}; minor=${minor%%.*} flags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
  for pkg in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
    flags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$minor"
  done
  (cd "$dir" && "${NICE[@]}" go build -trimpath -ldflags "$flags" -o "$BIN/helm" helm.sh/helm/v3/cmd/helm)
}

build_kwok() {
  local dir; dir=$(wrapper kwok sigs.k8s.io/kwok "$KWOK_VERSION")
  (cd "$dir" && [[ -f .ready ]] || { go get "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION" && echo "$KWOK_VERSION" >.ready; })
  (cd "$dir" && "${NICE[@]}" go build -trimpath -ldflags "-s -w" -o "$BIN/kwok" sigs.k8s.io/kwok/cmd/kwok)
}

build_etcd() {
  local dir; dir=$(wrapper etcd go.etcd.io/etcd/server/v3 "$ETCD_VERSION")
  build_etcd_main "$dir"
  (cd "$dir" && [[ -f .ready ]] || { go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" && go mod tidy && echo "$ETCD_VERSION" >.ready; })
  (cd "$dir" && "${NICE[@]}" go build -trimpath -ldflags "-s -w" -o "$BIN/etcd" .)
}

build_etcd_main() {
  cat >"$1/main.go" <<'GO'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
}

k8s_wrapper() {
  local dir; dir=$(wrapper kubernetes k8s.io/kubernetes "$K8S_VERSION")
  if [[ ! -f "$dir/.ready" ]]; then
    log "kubernetes $K8S_VERSION: generating the staging-module replaces"
    local gomod
    gomod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",/\1/p')
    [[ -f "$gomod" ]] || { echo "cannot download k8s.io/kubernetes@$K8S_VERSION go.mod" >&2; exit 1; }
    {
      echo
      echo "require k8s.io/kubernetes $K8S_VERSION"
      echo
      echo "replace ("
      grep -E '^\s*k8s\.io/[a-z0-9-]+ => \./staging/' "$gomod" |
        awk -v v="$K8S_STAGING_VERSION" '{print "\t" $1 " => " $1 " " v}'
      echo ")"
    } >>"$dir/go.mod"
    (cd "$dir" && go get "k8s.io/kubernetes/cmd/kube-apiserver@$K8S_VERSION" \
        "k8s.io/kubernetes/cmd/kube-scheduler@$K8S_VERSION" \
        "k8s.io/kubernetes/cmd/kube-controller-manager@$K8S_VERSION")
    echo "$K8S_VERSION" >"$dir/.ready"
  fi
  echo "$dir"
}

build_kube() {  # kube-apiserver | kube-scheduler | kube-controller-manager
  local dir; dir=$(k8s_wrapper | tail -1)
  local minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
  local pkg=k8s.io/component-base/version
  (cd "$dir" && "${NICE[@]}" go build -trimpath \
      -ldflags "-s -w -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean" \
      -o "$BIN/$1" "k8s.io/kubernetes/cmd/$1")
}

prefetch() {  # set up the wrapper modules and download their modules, compile nothing (network, little CPU)
  local dir
  dir=$(wrapper etcd go.etcd.io/etcd/server/v3 "$ETCD_VERSION")
  [[ -f "$dir/main.go" ]] || build_etcd_main "$dir"
  (cd "$dir" && [[ -f .ready ]] || { go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" && go mod tidy && echo "$ETCD_VERSION" >.ready; })
  dir=$(wrapper kwok sigs.k8s.io/kwok "$KWOK_VERSION")
  (cd "$dir" && [[ -f .ready ]] || { go get "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION" && echo "$KWOK_VERSION" >.ready; })
  dir=$(k8s_wrapper | tail -1)
  (cd "$dir" && go mod download all)
}

if [[ "${1:-}" == "--prefetch" ]]; then
  start=$SECONDS
  prefetch
  log "prefetch done in $((SECONDS - start))s"
  exit 0
fi

targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(helm etcd kwok kube-apiserver kube-scheduler kube-controller-manager)
total=$SECONDS
for t in "${targets[@]}"; do
  case $t in
    helm) timed helm "$HELM_VERSION+k8s-$K8S_VERSION" build_helm ;;
    etcd) timed etcd "$ETCD_VERSION" build_etcd ;;
    kwok) timed kwok "$KWOK_VERSION" build_kwok ;;
    kube-apiserver | kube-scheduler | kube-controller-manager) timed "$t" "$K8S_VERSION" build_kube "$t" ;;
    *) echo "unknown target $t" >&2; exit 2 ;;
  esac
done
log "done in $((SECONDS - total))s; binaries in $BIN"
