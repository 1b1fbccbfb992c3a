//go:build tools

// Package tools pins the Kubernetes commands the test bed builds from the
// k8s.io/kubernetes module: kube-apiserver and kubectl for the control plane,
// and kubelet, kube-scheduler, kube-controller-manager and kube-proxy for the
// node the in-cluster tests run the operator's pods on.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
