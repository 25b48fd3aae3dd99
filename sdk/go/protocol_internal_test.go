package lameduck

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

func TestReadLineLimits(t *testing.T) {
	exact := strings.Repeat("x", maxLineBytes)
	cases := []struct {
		name  string
		input string
		line  string
		err   error
	}{
		{"plain", "{\"a\":1}\n", `{"a":1}`, nil},
		{"crlf", "{\"a\":1}\r\n", `{"a":1}`, nil},
		{"exactly the limit", exact + "\n", exact, nil},
		{"one byte over", exact + "y\n", "", errLineTooLong},
		{"over without newline", exact + "yz", "", errLineTooLong},
		{"unterminated", "{\"a\"", "", io.ErrUnexpectedEOF},
		{"empty stream", "", "", io.EOF},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			line, err := readLine(newLineReader(strings.NewReader(c.input)))
			if !errors.Is(err, c.err) {
				t.Fatalf("err = %v, want %v", err, c.err)
			}
			if string(line) != c.line {
				t.Fatalf("line = %.40q…, want %.40q…", line, c.line)
			}
		})
	}
}

func TestReadLineSplitsLines(t *testing.T) {
	r := newLineReader(strings.NewReader("a\nb\n"))
	for _, want := range []string{"a", "b"} {
		line, err := readLine(r)
		if err != nil || string(line) != want {
			t.Fatalf("readLine = %q, %v; want %q", line, err, want)
		}
	}
	if _, err := readLine(r); err != io.EOF {
		t.Fatalf("at the end: %v, want io.EOF", err)
	}
}

func TestDecodeSidecarMessage(t *testing.T) {
	good := map[string]sidecarMessage{
		`{"type":"welcome","v":1,"grace_seconds":30}`: {Kind: "welcome", V: 1, GraceSeconds: 30},
		`{"type":"deregister"}`:                       {Kind: "deregister"},
		`{"type":"deregister","phase_end_unix_ms":1700000001000,"deadline_unix_ms":1700000028000}`: {
			Kind: "deregister", PhaseEndUnixMS: 1700000001000, DeadlineUnixMS: 1700000028000,
		},
		`{"type":"deregister","phase_end_unix_ms":null,"deadline_unix_ms":5}`: {Kind: "deregister", DeadlineUnixMS: 5},
		`{"type":"drain","deadline_unix_ms":1700000000123,"x":[1]}`:           {Kind: "drain", DeadlineUnixMS: 1700000000123},
		`{"type":"future_message","x":[1,2,3]}`:                               {},
		`{"deadline_unix_ms":5, "type" : "drain"}`:                            {Kind: "drain", DeadlineUnixMS: 5},
	}
	for line, want := range good {
		got, err := decodeSidecarMessage([]byte(line))
		if err != nil || got != want {
			t.Errorf("decode(%s) = %+v, %v; want %+v", line, got, err, want)
		}
	}
	bad := []string{
		"}}}garbage{{{", "", "null", "[]", "42", `"drain"`, `{}`, `{"type":3}`,
		`{"type":"welcome","v":1}`,
		`{"type":"welcome","v":"1","grace_seconds":30}`,
		`{"type":"drain","deadline_unix_ms":-1}`,
		`{"type":"drain","deadline_unix_ms":1.5}`,
		`{"type":"drain"}`,
		`{"type":"deregister","phase_end_unix_ms":"soon"}`,
		`{"type":"deregister","deadline_unix_ms":-5}`,
		"{\"type\":\"deregister\",\"x\":\"\xff\"}",
	}
	for _, line := range bad {
		if got, err := decodeSidecarMessage([]byte(line)); err == nil {
			t.Errorf("decode(%q) = %+v, want an error", line, got)
		}
	}
}

func TestEncodeLine(t *testing.T) {
	cases := map[string]any{
		`{"type":"hello","v":1,"container":"web","pid":7}`:          helloMessage{Type: "hello", V: 1, Container: "web", PID: 7},
		`{"type":"activity","accepted_total":3,"inflight":1}`:       activityMessage{Type: "activity", AcceptedTotal: 3, Inflight: 1},
		`{"type":"drained","inflight_at_start":2}`:                  drainedMessage{Type: "drained", InflightAtStart: 2},
		`{"type":"done","ok":true}`:                                 doneMessage{Type: "done", OK: true},
		`{"type":"done","ok":false,"error":"flush: disk \"full\""}`: doneMessage{Type: "done", Error: `flush: disk "full"`},
	}
	for want, message := range cases {
		if got := encodeLine(message); !bytes.Equal(got, []byte(want+"\n")) {
			t.Errorf("encodeLine(%+v) = %s, want %s", message, got, want)
		}
	}
}

func TestShorten(t *testing.T) {
	if got := shorten("short", 10); got != "short" {
		t.Errorf("shorten kept %q", got)
	}
	long := strings.Repeat("é", 1000) // two bytes each
	got := shorten(long, 101)
	if len(got) > 101 || !strings.HasSuffix(got, "…") || !strings.HasPrefix(long, strings.TrimSuffix(got, "…")) {
		t.Errorf("shorten(…, 101) = %q (%d bytes)", got, len(got))
	}
}
