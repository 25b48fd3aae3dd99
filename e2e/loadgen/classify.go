package main

import (
	"fmt"
	"strings"
)

// classify names what went wrong with a request: "" for a 200, else refused (the port
// answered the SYN with a reset: nothing listening), reset (an open connection was
// aborted), timeout, eof (the server closed a kept-alive connection under the request),
// http-<code> or other. The first three tell where a shutdown lost a request: refused is
// traffic sent to a pod after it closed its listener, reset and eof are connections it
// closed under their requests.
func classify(code uint16, err string) string {
	if err == "" {
		if code == 200 {
			return ""
		}
		return fmt.Sprintf("http-%d", code)
	}
	e := strings.ToLower(err)
	switch {
	case strings.Contains(e, "connection refused"):
		return "refused"
	case strings.Contains(e, "connection reset"), strings.Contains(e, "broken pipe"):
		return "reset"
	case strings.Contains(e, "timeout"), strings.Contains(e, "deadline exceeded"):
		return "timeout"
	case strings.Contains(e, "eof"), strings.Contains(e, "server closed idle connection"):
		return "eof"
	case strings.Contains(e, "no route to host"), strings.Contains(e, "host is unreachable"):
		return "unreachable"
	default:
		return "other"
	}
}
