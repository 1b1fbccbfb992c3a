//go:build tools

// Package tools pins the Kubernetes commands the test bed builds:
// kube-apiserver and kubectl from the k8s.io/kubernetes module.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
