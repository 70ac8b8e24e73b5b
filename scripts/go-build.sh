#!/bin/sh
# Build the Go programs tlsstorm runs beside its own services from their upstream
# modules, at the versions pinned in gobuild/<name>/go.mod (go.sum checks them).
# Usage: scripts/go-build.sh jaeger|kube|coredns|kube-router|local-path-provisioner|pause [...]   Output: .tools/bin
# The Go build and module caches are reused when present, so a second build is quick.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${TLSSTORM_GOBIN:-$root/.tools/bin}
mkdir -p "$bin"
# Static binaries: they run on the host and, copied alone, as container images.
export CGO_ENABLED=0
command -v go >/dev/null || { echo "go-build: needs Go >= 1.25 (https://go.dev/dl)" >&2; exit 1; }

module_version() {  # the version go.mod pins for module $2 in gobuild/$1
    (cd "$root/gobuild/$1" && go list -m -f '{{.Version}}' "$2")
}

module_dir() {  # the module's source, downloaded first (an empty module cache has none)
    (cd "$root/gobuild/$1" && go mod download "$2" && go list -m -f '{{.Dir}}' "$2")
}

build() {  # build DIR LDFLAGS MODULE: gobuild/DIR's `tool` packages into $bin
    local module
    module=$(cd "$root/gobuild/$1" && go list -m -f '{{.Path}}@{{.Version}}' "$3")
    echo "go-build: $1 ($module)"
    (cd "$root/gobuild/$1" && GOBIN=$bin GOFLAGS=-mod=readonly go install -trimpath \
        -ldflags "-s -w $2" tool)
}

for name in "$@"; do
    case $name in
    jaeger)
        v1=$(module_version jaeger github.com/jaegertracing/jaeger)
        # Jaeger's v1.x module tags carry the v2 binary; its CHANGELOG pairs them ("v1.74.0 / v2.11.0").
        v2=$(sed -n "s|^$v1 / \(v2[.0-9]*\).*|\1|p" "$(module_dir jaeger github.com/jaegertracing/jaeger)/CHANGELOG.md" | head -n1)
        [ -n "$v2" ] || { echo "go-build: no v2 version beside $v1 in Jaeger's CHANGELOG" >&2; exit 1; }
        build jaeger "-X github.com/jaegertracing/jaeger/internal/version.latestVersion=$v2" github.com/jaegertracing/jaeger ;;
    kube)
        v=$(module_version kube k8s.io/kubernetes)
        minor=$(echo "$v" | cut -d. -f2)
        flags=""
        for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
            flags="$flags -X $pkg.gitVersion=$v -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
        done
        build kube "$flags" k8s.io/kubernetes ;;
    coredns)
        build coredns "" github.com/coredns/coredns ;;
    kube-router)
        v=$(module_version kube-router github.com/cloudnativelabs/kube-router/v2)
        build kube-router "-X github.com/cloudnativelabs/kube-router/v2/pkg/version.Version=$v" \
            github.com/cloudnativelabs/kube-router/v2 ;;
    local-path-provisioner)
        v=$(module_version local-path-provisioner github.com/rancher/local-path-provisioner)
        build local-path-provisioner "-X main.VERSION=$v" github.com/rancher/local-path-provisioner ;;
    pause)
        # The pod sandbox's init process, from the pinned Kubernetes release's own source.
        src=$(module_dir kube k8s.io/kubernetes)/build/pause/linux/pause.c
        echo "go-build: pause ($src)"
        cc -Os -static -o "$bin/pause" -DVERSION="$(module_version kube k8s.io/kubernetes)" "$src" ;;
    *) echo "go-build: unknown program $name (jaeger, kube, coredns, kube-router, local-path-provisioner, pause)" >&2; exit 2 ;;
    esac
done
