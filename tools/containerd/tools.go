//go:build tools

// Package tools pins containerd, the container runtime the test bed's node
// runs pods with: the daemon and `ctr`, which imports the locally built
// images (no registry is reachable from the test bed).
package tools

import (
	_ "github.com/containerd/containerd/v2/cmd/containerd"
	_ "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2"
	_ "github.com/containerd/containerd/v2/cmd/ctr"
)
