package lameduck_test

import (
	"bytes"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"
)

// checkGoroutines fails t if goroutines started during the test are still running when
// it ends (after a short grace for goroutines that are on their way out). It compares the
// goroutine ids in runtime.Stack before and after; use it only in tests that do not run
// in parallel.
func checkGoroutines(t *testing.T) {
	t.Helper()
	before := goroutines()
	countBefore := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(3 * time.Second)
		for {
			leaked, kept := newGoroutines(before)
			// NumGoroutine double-checks the stacks (it also counts goroutines whose
			// stack was not captured).
			if len(leaked) == 0 && runtime.NumGoroutine() <= countBefore+kept {
				return
			}
			if time.Now().After(deadline) {
				t.Errorf("%d goroutines leaked (NumGoroutine %d before, %d after):\n\n%s",
					len(leaked), countBefore, runtime.NumGoroutine(), strings.Join(leaked, "\n\n"))
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
}

var goroutineHeader = regexp.MustCompile(`^goroutine (\d+) `)

// goroutines returns the stack of every goroutine, by id.
func goroutines() map[string]string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	stacks := make(map[string]string)
	for _, stack := range bytes.Split(buf, []byte("\n\n")) {
		if m := goroutineHeader.FindSubmatch(stack); m != nil {
			stacks[string(m[1])] = string(stack)
		}
	}
	return stacks
}

// newGoroutines returns the stacks of goroutines absent from before, except the ones the
// runtime and the testing package keep for themselves, and how many of those it kept.
func newGoroutines(before map[string]string) (leaked []string, kept int) {
	for id, stack := range goroutines() {
		if _, ok := before[id]; ok {
			continue
		}
		switch {
		case strings.Contains(stack, "os/signal.signal_recv"), // started once by signal.Notify
			strings.Contains(stack, "lameduck_test.newGoroutines"), // this check
			strings.Contains(stack, "testing.(*T).Run"),
			strings.Contains(stack, "testing.runTests"):
			kept++
			continue
		}
		leaked = append(leaked, stack)
	}
	return leaked, kept
}
