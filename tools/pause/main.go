// Command pause is the node's pod sandbox process: it holds a pod's
// namespaces and does nothing else. The test bed builds it into a one-file
// image, since no registry is reachable to pull the upstream one from.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM)
	// As PID 1 of the pod, reap the orphans the pod's containers leave.
	signal.Ignore(syscall.SIGCHLD)
	<-signals
}
