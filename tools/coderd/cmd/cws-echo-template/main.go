// cws-echo-template writes an echo-provisioner template archive to stdout,
// for the real-coderd end-to-end tests. The echo provisioner replays
// provisioner responses stored in the archive instead of running Terraform,
// so a test chooses exactly which resources, agents, parameters and presets a
// template has, and whether its start fails.
//
// Input (stdin), JSON:
//
//	{
//	  "start": { ...provisioner.GraphComplete as protojson... },
//	  "failStart": "message"   // optional: every start build fails with it
//	}
//
// "start" is the graph of a start build (resources with their agents, rich
// parameters, presets). Every other transition, and the template import,
// get the same parameters and presets without resources: a stopped workspace
// has no agent.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/coder/coder/v2/provisioner/echo"
	"github.com/coder/coder/v2/provisionersdk/proto"
)

type spec struct {
	Start     json.RawMessage `json:"start"`
	FailStart string          `json:"failStart"`
}

func main() {
	if err := run(os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "cws-echo-template:", err)
		os.Exit(1)
	}
}

func run(in io.Reader, out io.Writer) error {
	var s spec
	if err := json.NewDecoder(in).Decode(&s); err != nil {
		return fmt.Errorf("read the spec: %w", err)
	}
	start := &proto.GraphComplete{}
	if len(s.Start) > 0 {
		if err := protojson.Unmarshal(s.Start, start); err != nil {
			return fmt.Errorf("read the start graph: %w", err)
		}
	}
	others := &proto.GraphComplete{Parameters: start.Parameters, Presets: start.Presets}
	graph := func(g *proto.GraphComplete) []*proto.Response {
		return []*proto.Response{{Type: &proto.Response_Graph{Graph: g}}}
	}
	responses := &echo.Responses{
		Parse:          echo.ParseComplete,
		ProvisionInit:  echo.InitComplete,
		ProvisionPlan:  echo.PlanComplete,
		ProvisionApply: echo.ApplyComplete,
		ProvisionGraph: graph(others),
		ProvisionGraphMap: map[proto.WorkspaceTransition][]*proto.Response{
			proto.WorkspaceTransition_START: graph(start),
		},
	}
	if s.FailStart != "" {
		responses.ProvisionApplyMap = map[proto.WorkspaceTransition][]*proto.Response{
			proto.WorkspaceTransition_START: {{Type: &proto.Response_Apply{Apply: &proto.ApplyComplete{Error: s.FailStart}}}},
		}
	}
	archive, err := echo.Tar(responses)
	if err != nil {
		return fmt.Errorf("build the archive: %w", err)
	}
	_, err = out.Write(archive)
	return err
}
