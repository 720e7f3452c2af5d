#!/usr/bin/env bash
# Builds the test control plane (kube-apiserver + embedded etcd) to
# <repo>/.cache/bin/streampipe-controlplane, and the rest of the one-node test
# cluster (kubelet, kube-controller-manager, kube-scheduler, kube-proxy,
# cluster-dns; node/) to <repo>/.cache/bin/streampipe-node.
# `make controlplane` calls this.
# A no-op when the binary is newer than every input, so it is cheap to call
# before every test run. The first build compiles all of kube-apiserver
# (several minutes on 2 cores); keep GOCACHE and GOMODCACHE between runs.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${CONTROLPLANE_BIN:-$root/.cache/bin/streampipe-controlplane}
node_out=${NODE_BIN:-$(dirname "$out")/streampipe-node}

# compat/ (make compat's builds for other releases) is not an input of these.
stale() {
	[[ ! -x $1 || -n $(find "$here" -maxdepth 2 -path "$here/compat" -prune -o -type f \
		\( -name '*.go' -o -name go.mod -o -name go.sum -o -name build.sh \) \
		-newer "$1" -print -quit) ]]
}
if ! stale "$out" && ! stale "$node_out"; then
	exit 0
fi

cd "$here"
# kube-apiserver reports this as its version (/version, kubectl version);
# without it, it says v0.0.0-master. Read from go.mod, so it cannot drift.
k8s=$(go list -mod=readonly -m -f '{{.Version}}' k8s.io/kubernetes)
major=${k8s#v}; major=${major%%.*}
minor=${k8s#v*.}; minor=${minor%%.*}
pkg=k8s.io/component-base/version
# -s -w: no symbol table or DWARF, as in upstream release builds (stack traces
# still work); 108 MB instead of 154 MB, and a faster link.
ldflags="-s -w -X $pkg.gitVersion=$k8s -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"

mkdir -p "$(dirname "$out")"
echo "building $out (kube-apiserver $k8s)..." >&2
# -mod=readonly: go.mod and go.sum are committed and complete; a build must
# never rewrite them. -buildvcs=false: no git stamping (and no git needed).
# CGO_ENABLED=0: a static binary and no C compiler needed, as upstream builds
# kube-apiserver.
CGO_ENABLED=0 go build -mod=readonly -buildvcs=false -trimpath -ldflags "$ldflags" -o "$out.tmp" .
mv -f "$out.tmp" "$out"
# The node components share most packages with the API server, so this second
# build mostly links (about 2.5 min cold on 2 cores after the first).
echo "building $node_out (kubelet, controllers, kube-proxy $k8s)..." >&2
CGO_ENABLED=0 go build -mod=readonly -buildvcs=false -trimpath -ldflags "$ldflags" -o "$node_out.tmp" ./node
mv -f "$node_out.tmp" "$node_out"
