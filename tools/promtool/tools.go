//go:build tools

// Package promtool pins Prometheus's promtool, which the project's tests run
// on the chart's alert rules (`promtool check rules`, `promtool test
// rules`). A test tool only, never shipped.
package promtool

import _ "github.com/prometheus/prometheus/cmd/promtool"
