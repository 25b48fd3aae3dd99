package lameduck_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	lameduck "github.com/lameduck-dev/lameduck/sdk/go"
)

// transcriptDir holds the shared test vectors (docs/protocol.md §8).
const transcriptDir = "../../proto/testdata"

// TestTranscripts replays every shared transcript meant for SDKs, with the test playing
// the sidecar.
func TestTranscripts(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(transcriptDir, "*.jsonl"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no transcripts in %s (%v): run the tests from sdk/go in a lameduck checkout", transcriptDir, err)
	}
	replayed := 0
	for _, file := range files {
		header, steps := loadTranscript(t, file)
		if !slices.Contains(header.For, "sdk") {
			continue
		}
		replayed++
		t.Run(header.Name, func(t *testing.T) { replay(t, steps) })
	}
	if replayed == 0 {
		t.Fatalf("no transcript in %s lists \"sdk\"", transcriptDir)
	}
}

// wildcardValues are sent for "*" in sidecar steps.
var wildcardValues = map[string]any{"grace_seconds": 30, "v": 1}

type transcriptHeader struct {
	Name  string   `json:"name"`
	About string   `json:"about"`
	For   []string `json:"for"`
}

// step is one line of a transcript: exactly one key.
type step map[string]json.RawMessage

func loadTranscript(t *testing.T, file string) (transcriptHeader, []step) {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var header transcriptHeader
	var steps []step
	scanner := bufio.NewScanner(bytes.NewReader(data))
	for n := 0; scanner.Scan(); n++ {
		line := scanner.Bytes()
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		if n == 0 {
			if err := json.Unmarshal(line, &header); err != nil || header.Name == "" {
				t.Fatalf("%s: bad header %s: %v", file, line, err)
			}
			continue
		}
		var s step
		if err := json.Unmarshal(line, &s); err != nil || len(s) != 1 {
			t.Fatalf("%s:%d: bad step %s: %v", file, n+1, line, err)
		}
		steps = append(steps, s)
	}
	return header, steps
}

// kind returns the step's only key.
func (s step) kind() string {
	for k := range s {
		return k
	}
	return ""
}

func replay(t *testing.T, steps []step) {
	checkGoroutines(t)
	sidecar := newFakeSidecar(t)
	deadline := time.Now().Add(10 * time.Second).UnixMilli()

	// The cleanup fails when the transcript expects done with ok false.
	failCleanup := false
	for _, s := range steps {
		var m map[string]any
		if json.Unmarshal(s["app"], &m) == nil && m["type"] == "done" && m["ok"] == false {
			failCleanup = true
		}
	}

	type started struct {
		sd  *lameduck.Shutdown
		err error
	}
	startc := make(chan started, 1)
	go func() {
		sd, err := lameduck.Start(context.Background(), lameduck.Options{Socket: sidecar.path, Container: "web", Logger: quietLogger})
		startc <- started{sd, err}
	}()
	var start *started
	var cleanups atomic.Int32
	waitStart := func() *started {
		if start == nil {
			select {
			case s := <-startc:
				start = &s
			case <-time.After(ioTimeout):
				t.Fatal("Start did not return")
			}
			start.sd.Defer(func(context.Context) error {
				cleanups.Add(1)
				if failCleanup {
					return errors.New("flush failed")
				}
				return nil
			})
		}
		return start
	}

	p := sidecar.accept()
	var closed bool
	for i, s := range steps {
		switch s.kind() {
		case "app":
			var want map[string]any
			mustUnmarshal(t, s["app"], &want)
			got := p.read(want["type"].(string))
			if err := matches(got, want); err != nil {
				t.Fatalf("step %d: %v", i+1, err)
			}
		case "sidecar":
			var m map[string]any
			mustUnmarshal(t, s["sidecar"], &m)
			for k, v := range m {
				switch {
				case v == "$deadline", v == "*" && k == "deadline_unix_ms":
					m[k] = deadline
				case v == "*":
					// The transcripts are also read by the sidecar's tests, where "*" in
					// a sidecar step matches any value; sent to an SDK it needs one.
					m[k] = wildcardValues[k]
				}
			}
			line, _ := json.Marshal(m)
			p.send(string(line) + "\n")
			if m["type"] == "welcome" {
				waitStart()
			}
		case "sidecar_raw":
			var raw string
			mustUnmarshal(t, s["sidecar_raw"], &raw)
			p.send(strings.ReplaceAll(raw, "$deadline", strconv.FormatInt(deadline, 10)))
		case "expect_closed":
			var who string
			mustUnmarshal(t, s["expect_closed"], &who)
			if who != "app" {
				t.Fatalf("step %d: expect_closed %q makes no sense against an SDK", i+1, who)
			}
			p.expectClosed()
			closed = true
		case "app_raw", "prestop", "outcome":
			// Sidecar-side steps (docs/protocol.md §8).
		default:
			t.Fatalf("step %d: unknown step %q", i+1, s.kind())
		}
	}

	st := waitStart()
	if closed {
		// The SDK rejected the sidecar: it must still shut down by itself.
		if st.err == nil && st.sd.Connected() {
			t.Error("the SDK closed the connection but reports being connected")
		}
	}
	st.sd.Terminate()
	ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
	defer cancel()
	err := st.sd.Wait(ctx)
	if failCleanup != (err != nil) {
		t.Errorf("Wait = %v, want an error: %v", err, failCleanup)
	}
	if n := cleanups.Load(); n != 1 {
		t.Errorf("the cleanup ran %d times, want once", n)
	}
}

func mustUnmarshal(t *testing.T, raw json.RawMessage, v any) {
	t.Helper()
	d := json.NewDecoder(bytes.NewReader(raw))
	d.UseNumber()
	if err := d.Decode(v); err != nil {
		t.Fatalf("bad step %s: %v", raw, err)
	}
}

// matches checks that got has every field of want, "*" matching any value.
func matches(got, want map[string]any) error {
	for k, w := range want {
		g, ok := got[k]
		if !ok {
			return errors.New("field " + strconv.Quote(k) + " missing in " + describe(got))
		}
		if w == "*" {
			continue
		}
		if !reflect.DeepEqual(g, w) {
			return errors.New("field " + strconv.Quote(k) + " differs: got " + describe(got) + ", want " + describe(want))
		}
	}
	return nil
}

func describe(m map[string]any) string {
	b, _ := json.Marshal(m)
	return string(b)
}
