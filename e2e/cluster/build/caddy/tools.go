//go:build tools

// Package tools pins the caddy command this module builds: an unmodified third-party
// server the no-SDK end-to-end test deploys with the lameduck annotation only.
package tools

import _ "github.com/caddyserver/caddy/v2/cmd/caddy"
