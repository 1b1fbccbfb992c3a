// Command argocd-health runs an Argo CD resource health script on one
// Kubernetes object, as Argo CD does: in gopher-lua (Lua 5.1), with the
// object as the global `obj`, and prints the table the script returns as
// JSON ({"status": ..., "message": ...}).
//
//	argocd-health health.lua object.json
//
// A test harness for the project's health check, never shipped.
package main

import (
	"encoding/json"
	"fmt"
	"os"

	lua "github.com/yuin/gopher-lua"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: argocd-health HEALTH.lua OBJECT.json")
		os.Exit(2)
	}
	script, err := os.ReadFile(os.Args[1])
	if err != nil {
		fail("read the health script: %v", err)
	}
	raw, err := os.ReadFile(os.Args[2])
	if err != nil {
		fail("read the object: %v", err)
	}
	var object map[string]any
	if err := json.Unmarshal(raw, &object); err != nil {
		fail("the object is not JSON: %v", err)
	}

	// Argo CD opens only the safe standard libraries; so does this.
	state := lua.NewState(lua.Options{SkipOpenLibs: true})
	defer state.Close()
	for _, open := range []struct {
		name string
		fn   lua.LGFunction
	}{
		{lua.LoadLibName, lua.OpenPackage},
		{lua.BaseLibName, lua.OpenBase},
		{lua.TabLibName, lua.OpenTable},
		{lua.StringLibName, lua.OpenString},
		{lua.MathLibName, lua.OpenMath},
	} {
		state.Push(state.NewFunction(open.fn))
		state.Push(lua.LString(open.name))
		state.Call(1, 0)
	}
	state.SetGlobal("obj", toLua(state, object))
	if err := state.DoString(string(script)); err != nil {
		fail("the health script failed: %v", err)
	}
	result, ok := state.Get(-1).(*lua.LTable)
	if !ok {
		fail("the health script returned %s, not a table", state.Get(-1).Type())
	}
	out, _ := json.Marshal(map[string]string{
		"status":  result.RawGetString("status").String(),
		"message": result.RawGetString("message").String(),
	})
	fmt.Println(string(out))
}

// toLua turns decoded JSON into Lua values: objects and arrays become
// tables (arrays indexed from 1), numbers numbers, null nil.
func toLua(state *lua.LState, value any) lua.LValue {
	switch v := value.(type) {
	case map[string]any:
		table := state.NewTable()
		for key, item := range v {
			table.RawSetString(key, toLua(state, item))
		}
		return table
	case []any:
		table := state.NewTable()
		for _, item := range v {
			table.Append(toLua(state, item))
		}
		return table
	case string:
		return lua.LString(v)
	case float64:
		return lua.LNumber(v)
	case bool:
		return lua.LBool(v)
	default:
		return lua.LNil
	}
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "argocd-health: "+format+"\n", args...)
	os.Exit(1)
}
