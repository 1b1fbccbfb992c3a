// The `coder` binary of the pinned release, AGPL edition: `coder server`,
// `coder agent` and the CLI. Test tooling only; nothing of it ships.
package main

import (
	"fmt"
	"os"
	_ "time/tzdata"

	tea "github.com/charmbracelet/bubbletea"

	"github.com/coder/coder/v2/agent/agentexec"
	_ "github.com/coder/coder/v2/buildinfo/resources"
	"github.com/coder/coder/v2/cli"
)

func main() {
	// The agent re-executes itself as `coder agent-exec` to run processes.
	if len(os.Args) > 1 && os.Args[1] == "agent-exec" {
		err := agentexec.CLI()
		_, _ = fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	tea.InitTerminal()

	var root cli.RootCmd
	root.RunWithSubcommands(root.AGPL())
}
