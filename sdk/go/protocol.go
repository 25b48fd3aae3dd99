package lameduck

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"unicode/utf8"
)

// protocolVersion is the version of the application protocol this package speaks.
const protocolVersion = 1

// maxLineBytes is the longest line either side accepts, without its newline.
const maxLineBytes = 64 * 1024

// maxErrorBytes bounds the error text sent in done; the sidecar shortens it further.
const maxErrorBytes = 1024

// Messages from the application to the sidecar (docs/protocol.md §2).

type helloMessage struct {
	Type      string `json:"type"`
	V         int    `json:"v"`
	Container string `json:"container"`
	PID       int    `json:"pid"`
}

type activityMessage struct {
	Type          string `json:"type"`
	AcceptedTotal uint64 `json:"accepted_total"`
	Inflight      uint64 `json:"inflight"`
}

type drainedMessage struct {
	Type            string `json:"type"`
	InflightAtStart uint64 `json:"inflight_at_start"`
}

type doneMessage struct {
	Type  string `json:"type"`
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
}

// sidecarMessage is a decoded message from the sidecar. Kind is "welcome", "deregister",
// "drain" or "" for a type this version does not know (to be ignored). In a deregister,
// PhaseEndUnixMS and DeadlineUnixMS are optional: zero when absent (older sidecars).
type sidecarMessage struct {
	Kind           string
	V              uint64
	GraceSeconds   uint64
	PhaseEndUnixMS uint64
	DeadlineUnixMS uint64
}

// errLineTooLong is returned by readLine for a line over maxLineBytes.
var errLineTooLong = fmt.Errorf("line longer than %d bytes", maxLineBytes)

// encodeLine serializes one message as a line: JSON and a newline.
func encodeLine(message any) []byte {
	line, err := json.Marshal(message)
	if err != nil {
		// The message types above only hold strings, integers and booleans.
		panic("lameduck: encoding a protocol message: " + err.Error())
	}
	return append(line, '\n')
}

// newLineReader returns a reader whose buffer holds exactly one maximal line.
func newLineReader(r io.Reader) *bufio.Reader {
	return bufio.NewReaderSize(r, maxLineBytes+1)
}

// readLine returns the next line without its newline (and without a \r before it).
// A line longer than maxLineBytes is errLineTooLong; an unterminated line at the end of
// the stream is io.ErrUnexpectedEOF.
func readLine(r *bufio.Reader) ([]byte, error) {
	line, err := r.ReadSlice('\n')
	switch {
	case errors.Is(err, bufio.ErrBufferFull):
		return nil, errLineTooLong
	case errors.Is(err, io.EOF) && len(line) > 0:
		return nil, io.ErrUnexpectedEOF
	case err != nil:
		return nil, err
	}
	line = line[:len(line)-1]
	if len(line) > maxLineBytes {
		return nil, errLineTooLong
	}
	line = bytes.TrimSuffix(line, []byte{'\r'})
	return line, nil
}

// decodeSidecarMessage decodes one line from the sidecar. Unknown types decode to a
// message with an empty Kind; unknown fields are ignored. Anything that is not a JSON
// object with a string "type", or a known type with a missing or mistyped field, is an
// error: the caller closes the connection.
func decodeSidecarMessage(line []byte) (sidecarMessage, error) {
	if !utf8.Valid(line) {
		return sidecarMessage{}, errors.New("line is not valid UTF-8")
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(line, &fields); err != nil || fields == nil {
		return sidecarMessage{}, errors.New("line is not a JSON object")
	}
	var kind string
	if raw, ok := fields["type"]; !ok || json.Unmarshal(raw, &kind) != nil {
		return sidecarMessage{}, errors.New(`message has no string "type"`)
	}
	m := sidecarMessage{Kind: kind}
	var err error
	switch kind {
	case "welcome":
		if m.V, err = uintField(fields, kind, "v"); err == nil {
			m.GraceSeconds, err = uintField(fields, kind, "grace_seconds")
		}
	case "deregister":
		if m.PhaseEndUnixMS, err = optionalUintField(fields, kind, "phase_end_unix_ms"); err == nil {
			m.DeadlineUnixMS, err = optionalUintField(fields, kind, "deadline_unix_ms")
		}
	case "drain":
		m.DeadlineUnixMS, err = uintField(fields, kind, "deadline_unix_ms")
	default:
		m.Kind = ""
	}
	return m, err
}

// uintField decodes a required non-negative integer field.
func uintField(fields map[string]json.RawMessage, kind, name string) (uint64, error) {
	raw, ok := fields[name]
	if !ok {
		return 0, fmt.Errorf("%s: missing field %q", kind, name)
	}
	n, err := strconv.ParseUint(string(bytes.TrimSpace(raw)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%s: field %q is not a non-negative integer", kind, name)
	}
	return n, nil
}

// optionalUintField decodes an optional non-negative integer field: absent or null is 0.
func optionalUintField(fields map[string]json.RawMessage, kind, name string) (uint64, error) {
	if raw, ok := fields[name]; !ok || bytes.Equal(bytes.TrimSpace(raw), []byte("null")) {
		return 0, nil
	}
	return uintField(fields, kind, name)
}

// shorten cuts s to at most n bytes without splitting a UTF-8 sequence.
func shorten(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n - len("…")
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}
