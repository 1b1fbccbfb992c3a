#!/usr/bin/env bash
# Builds the test bed's real components into .tools/bin from their Go modules:
# kube-apiserver and kubectl (k8s.io/kubernetes), etcd (go.etcd.io/etcd), helm
# (helm.sh/helm), and coderd's `coder` binary with the echo-template fixture
# (github.com/coder/coder/v2, tools/coderd), argocd-health, which runs the
# project's Argo CD health check in gopher-lua as Argo CD does
# (tools/argocd-health), kstatus, which prints what sigs.k8s.io/cli-utils'
# kstatus library computes for an object (tools/kstatus), Prometheus's
# promtool, which checks and unit-tests the chart's alert rules
# (tools/promtool), and the node the in-cluster tests run pods on: kubelet,
# kube-scheduler, kube-controller-manager and kube-proxy (the same
# k8s.io/kubernetes module), containerd and ctr (tools/containerd), plus runc,
# iptables, conntrack and the CNI plugins from Debian packages. Versions are
# pinned in tools/versions.env and in the
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

# build NAME MODULE_DIR PACKAGE [LDFLAGS] [TAGS]
build() {
	local name=$1 dir=$2 pkg=$3 ldflags="-s ${4:-}" tags=${5:-}
	local stamp="$stamps/$name" want
	want="$(go env GOVERSION) $pkg $(echo "$ldflags $tags" | sha256sum | cut -c1-8) $(cat "$root/tools/$dir/go.mod" "$root/tools/$dir/go.sum" | sha256sum | cut -c1-16)"
	if [[ -x "$bin/$name" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
		echo "tools: $name is up to date"
		return
	fi
	local start=$SECONDS
	echo "tools: building $name from $pkg (a cold build takes minutes on 2 cores)..."
	if ! (cd "$root/tools/$dir" && go build -trimpath -tags="$tags" -ldflags="$ldflags" -o "$bin/$name.tmp" "$pkg"); then
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

# containerd without the btrfs snapshotter (it needs cgo and btrfs headers)
# and without the CLI's man-page generator.
containerd_tags="no_btrfs urfave_cli_no_docs"
containerd_ldflags() {
	echo "-X github.com/containerd/containerd/v2/version.Version=$CONTAINERD_VERSION"
}

# The node's parts that come from the distribution: runc (it needs cgo and
# libseccomp), iptables and conntrack (kube-proxy), and the bridge and
# host-local CNI plugins. Installed when this runs as root; otherwise the
# in-cluster tests fail with this command.
node_packages="runc iptables conntrack containernetworking-plugins"
node_packages_missing() {
	[[ -x /usr/sbin/runc || -x /usr/bin/runc ]] || return 0
	command -v iptables >/dev/null || [[ -x /usr/sbin/iptables ]] || return 0
	command -v conntrack >/dev/null || [[ -x /usr/sbin/conntrack ]] || return 0
	[[ -x /usr/lib/cni/bridge && -x /usr/lib/cni/host-local && -x /usr/lib/cni/loopback ]] || return 0
	return 1
}
install_node_packages() {
	if ! node_packages_missing; then
		echo "tools: runc, iptables, conntrack and the CNI plugins are installed"
		return
	fi
	if [[ $(id -u) -ne 0 ]]; then
		echo "tools: the node for the in-cluster tests needs Debian packages; run as root:" >&2
		echo "  apt-get install -y --no-install-recommends $node_packages" >&2
		return
	fi
	echo "tools: installing $node_packages"
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $node_packages >/dev/null \
		|| { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $node_packages >/dev/null; }
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
# The helper's own source is part of the project, so its hash goes into the
# stamp (through ldflags) and an edit rebuilds it.
all | kstatus) build kstatus kstatus . "-X main.source=$(cat "$root"/tools/kstatus/*.go | sha256sum | cut -c1-16)" ;;&
all | promtool) build promtool promtool github.com/prometheus/prometheus/cmd/promtool ;;&
all | node | kubelet) build kubelet k8s k8s.io/kubernetes/cmd/kubelet "$(k8s_version_ldflags)" ;;&
all | node | kube-scheduler) build kube-scheduler k8s k8s.io/kubernetes/cmd/kube-scheduler "$(k8s_version_ldflags)" ;;&
all | node | kube-controller-manager) build kube-controller-manager k8s k8s.io/kubernetes/cmd/kube-controller-manager "$(k8s_version_ldflags)" ;;&
all | node | kube-proxy) build kube-proxy k8s k8s.io/kubernetes/cmd/kube-proxy "$(k8s_version_ldflags)" ;;&
all | node | containerd) build containerd containerd github.com/containerd/containerd/v2/cmd/containerd "$(containerd_ldflags)" "$containerd_tags" ;;&
all | node | containerd) build containerd-shim-runc-v2 containerd github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2 "$(containerd_ldflags)" "$containerd_tags" ;;&
all | node | containerd) build ctr containerd github.com/containerd/containerd/v2/cmd/ctr "$(containerd_ldflags)" "$containerd_tags" ;;&
all | node | pause) build pause pause . ;;&
all | node) install_node_packages ;;&
all | etcd | kube-apiserver | kubectl | helm | coder | argocd-health | kstatus | promtool | node | kubelet | kube-scheduler | kube-controller-manager | kube-proxy | containerd | pause) ;;
*) echo "usage: tools/build.sh [all|etcd|kube-apiserver|kubectl|helm|coder|argocd-health|kstatus|promtool|node|kubelet|kube-scheduler|kube-controller-manager|kube-proxy|containerd|pause]" >&2; exit 2 ;;
esac
echo "tools: Kubernetes $KUBERNETES_VERSION, etcd $ETCD_VERSION, helm $HELM_VERSION, coder $CODER_VERSION in .tools/bin"
