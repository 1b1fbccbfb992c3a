#!/usr/bin/env bash
# Builds the test bed's real components into .tools/bin from their Go modules:
# kube-apiserver and kubectl (k8s.io/kubernetes), etcd (go.etcd.io/etcd), helm
# (helm.sh/helm), and coderd's `coder` binary with the echo-template fixture
# (github.com/coder/coder/v2, tools/coderd), and argocd-health, which runs the
# project's Argo CD health check in gopher-lua as Argo CD does
# (tools/argocd-health). Versions are pinned in tools/versions.env and in the
# wrapper modules beside this script. A binary is rebuilt only when its
# wrapper module changes, so a second run takes seconds; Go's own module and
# build caches make a rebuild after a change cheap as well.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bin="$root/.tools/bin"
stamps="$root/.tools/stamps"
mkdir -p "$bin" "$stamps"
# shellcheck source=versions.env
source "$root/tools/versions.env"

command -v go >/dev/null || { echo "make tools: Go is not installed; install Go 1.25 or newer" >&2; exit 1; }

export CGO_ENABLED=0
export GOFLAGS="${GOFLAGS:--buildvcs=false} -mod=mod"

# Kubernetes stamps its version at link time (upstream's hack/lib/version.sh);
# without it kubectl and kube-apiserver report v0.0.0-master, which breaks
# `kubectl version` and charts with a kubeVersion constraint.
k8s_version_ldflags() {
	local minor=${KUBERNETES_VERSION#v1.}
	minor=${minor%%.*}
	local pkg flags=""
	for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
		flags+=" -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
		flags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
	done
	echo "$flags"
}

# build NAME MODULE_DIR PACKAGE [LDFLAGS]
build() {
	local name=$1 dir=$2 pkg=$3 ldflags="-s ${4:-}"
	local stamp="$stamps/$name" want
	want="$(go env GOVERSION) $pkg $(echo "$ldflags" | sha256sum | cut -c1-8) $(cat "$root/tools/$dir/go.mod" "$root/tools/$dir/go.sum" | sha256sum | cut -c1-16)"
	if [[ -x "$bin/$name" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
		echo "tools: $name is up to date"
		return
	fi
	local start=$SECONDS
	echo "tools: building $name from $pkg (a cold build takes minutes on 2 cores)..."
	if ! (cd "$root/tools/$dir" && go build -trimpath -ldflags="$ldflags" -o "$bin/$name.tmp" "$pkg"); then
		echo "tools: building $name failed; see the Go errors above" >&2
		exit 1
	fi
	mv "$bin/$name.tmp" "$bin/$name"
	echo "$want" >"$stamp"
	echo "tools: built $name in $((SECONDS - start))s"
}

# A dependency's replace directives do not apply to the module that requires
# it, so tools/coderd/go.mod repeats coder's own; a version bump that forgets
# them builds a different coder (or fails far from the cause).
check_coder_replaces() {
	local upstream
	upstream=$(cd "$root/tools/coderd" && go mod download -json "github.com/coder/coder/v2@$CODER_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",*/\1/p')
	if ! diff <(grep -E '^replace ' "$upstream" | tr -s ' \t' ' ' | sort) \
		<(grep -E '^replace ' "$root/tools/coderd/go.mod" | tr -s ' \t' ' ' | sort) >/dev/null; then
		echo "tools: tools/coderd/go.mod's replace directives differ from coder $CODER_VERSION's go.mod ($upstream); copy them over" >&2
		exit 1
	fi
}

coder_ldflags() {
	echo "-w -X github.com/coder/coder/v2/buildinfo.tag=${CODER_VERSION#v}"
}

only=${1:-all}
case $only in
all | etcd) build etcd etcd ./cmd/etcd ;;&
all | kube-apiserver) build kube-apiserver k8s k8s.io/kubernetes/cmd/kube-apiserver "$(k8s_version_ldflags)" ;;&
all | kubectl) build kubectl k8s k8s.io/kubernetes/cmd/kubectl "$(k8s_version_ldflags)" ;;&
all | helm) build helm helm helm.sh/helm/v3/cmd/helm ;;&
all | coder) check_coder_replaces; build coder coderd ./cmd/coder "$(coder_ldflags)" ;;&
all | coder) build cws-echo-template coderd ./cmd/cws-echo-template ;;&
all | argocd-health) build argocd-health argocd-health . ;;&
all | etcd | kube-apiserver | kubectl | helm | coder | argocd-health) ;;
*) echo "usage: tools/build.sh [all|etcd|kube-apiserver|kubectl|helm|coder|argocd-health]" >&2; exit 2 ;;
esac
echo "tools: Kubernetes $KUBERNETES_VERSION, etcd $ETCD_VERSION, helm $HELM_VERSION, coder $CODER_VERSION in .tools/bin"
