// Command kstatus prints what sigs.k8s.io/cli-utils' kstatus library (the
// status computation Flux's health checks and many CD tools use) makes of
// Kubernetes objects: one JSON line per object, {"name": ..., "status":
// "Current" | "InProgress" | "Failed" | ..., "reason": ..., "message": ...}.
//
//	kubectl get cws -o json | kstatus
//	kstatus < object.json
//
// It reads one object or a List (what `kubectl get -o json` prints) from
// stdin. A test harness for the project's kstatus conditions, never shipped.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

// source is the hash of this file, set by tools/build.sh so that an edit
// rebuilds the binary.
var source string

type line struct {
	Name   string `json:"name"`
	Status string `json:"status"`
	// Reason is the reason of the condition kstatus went by (Stalled's or
	// Reconciling's), empty when it went by none.
	Reason  string `json:"reason"`
	Message string `json:"message"`
}

func main() {
	if len(os.Args) != 1 {
		fmt.Fprintf(os.Stderr, "usage: kstatus < OBJECT-OR-LIST.json (source %s)\n", source)
		os.Exit(2)
	}
	raw, err := io.ReadAll(os.Stdin)
	if err != nil {
		fail("read stdin: %v", err)
	}
	// Unstructured's own decoding keeps integers int64, as kstatus expects.
	object := &unstructured.Unstructured{}
	if err := object.UnmarshalJSON(raw); err != nil {
		fail("stdin is not a Kubernetes object or list: %v", err)
	}
	objects := []unstructured.Unstructured{*object}
	if object.IsList() {
		list, err := object.ToList()
		if err != nil {
			fail("stdin is not a list of objects: %v", err)
		}
		objects = list.Items
	}
	out := json.NewEncoder(os.Stdout)
	for i := range objects {
		u := &objects[i]
		result, err := status.Compute(u)
		if err != nil {
			fail("kstatus could not compute the status of %s: %v", u.GetName(), err)
		}
		reason := ""
		if len(result.Conditions) > 0 {
			reason = result.Conditions[0].Reason
		}
		if err := out.Encode(line{Name: u.GetName(), Status: result.Status.String(), Reason: reason, Message: result.Message}); err != nil {
			fail("write: %v", err)
		}
	}
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "kstatus: "+format+"\n", args...)
	os.Exit(1)
}
