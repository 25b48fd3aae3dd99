package lameduck_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// ioTimeout bounds every read and accept of the fake sidecar.
const ioTimeout = 5 * time.Second

// quietLogger discards the SDK's log lines.
var quietLogger = slog.New(slog.NewTextHandler(io.Discard, nil))

// fakeSidecar listens on an application socket and plays the sidecar's side by hand.
type fakeSidecar struct {
	t    *testing.T
	path string
	ln   *net.UnixListener
}

func newFakeSidecar(t *testing.T) *fakeSidecar {
	t.Helper()
	// Not t.TempDir(): socket paths must stay under 108 bytes.
	dir, err := os.MkdirTemp("", "lameduck-sdk-")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "app.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeSidecar{t: t, path: path, ln: ln}
	t.Cleanup(func() {
		f.ln.Close()
		os.RemoveAll(dir)
	})
	return f
}

// stop stops listening, as a killed sidecar does: the socket file stays and connecting
// to it is refused. Connections already accepted are the test's to close.
func (f *fakeSidecar) stop() {
	f.ln.SetUnlinkOnClose(false)
	f.ln.Close()
}

// restart listens again on the same path, as a restarted sidecar does.
func (f *fakeSidecar) restart() {
	f.t.Helper()
	if err := os.Remove(f.path); err != nil {
		f.t.Fatal(err)
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: f.path, Net: "unix"})
	if err != nil {
		f.t.Fatal(err)
	}
	f.ln = ln
}

// accept waits for the SDK to connect.
func (f *fakeSidecar) accept() *peer {
	f.t.Helper()
	_ = f.ln.SetDeadline(time.Now().Add(ioTimeout))
	conn, err := f.ln.Accept()
	if err != nil {
		f.t.Fatalf("the SDK did not connect: %v", err)
	}
	f.t.Cleanup(func() { conn.Close() })
	return &peer{t: f.t, conn: conn, r: bufio.NewReader(conn)}
}

// peer is the fake sidecar's end of one connection.
type peer struct {
	t    *testing.T
	conn net.Conn
	r    *bufio.Reader
}

// read returns the next message from the SDK, skipping activity unless typ is
// "activity", and fails the test unless its type is typ.
func (p *peer) read(typ string) map[string]any {
	p.t.Helper()
	for {
		m, err := p.next()
		if err != nil {
			p.t.Fatalf("waiting for %s: %v", typ, err)
		}
		if m["type"] == "activity" && typ != "activity" {
			continue
		}
		if m["type"] != typ {
			p.t.Fatalf("got %v, want a %s message", m, typ)
		}
		return m
	}
}

func (p *peer) next() (map[string]any, error) {
	_ = p.conn.SetReadDeadline(time.Now().Add(ioTimeout))
	line, err := p.r.ReadBytes('\n')
	if err != nil {
		return nil, err
	}
	var m map[string]any
	d := json.NewDecoder(bytes.NewReader(line))
	d.UseNumber()
	if err := d.Decode(&m); err != nil {
		return nil, err
	}
	return m, nil
}

// handshake reads hello and answers welcome.
func (p *peer) handshake(graceSeconds int) map[string]any {
	p.t.Helper()
	hello := p.read("hello")
	p.sendf(`{"type":"welcome","v":1,"grace_seconds":%d}`, graceSeconds)
	return hello
}

func (p *peer) send(line string) {
	p.t.Helper()
	if _, err := io.WriteString(p.conn, line); err != nil {
		p.t.Fatalf("sending %q: %v", line, err)
	}
}

func (p *peer) sendf(format string, args ...any) {
	p.t.Helper()
	p.send(fmt.Sprintf(format, args...) + "\n")
}

// expectClosed reads until the SDK closes the connection, ignoring activity.
func (p *peer) expectClosed() {
	p.t.Helper()
	for {
		m, err := p.next()
		if errors.Is(err, io.EOF) {
			return
		}
		if err != nil {
			p.t.Fatalf("expected the SDK to close the connection: %v", err)
		}
		if m["type"] != "activity" {
			p.t.Fatalf("expected the SDK to close the connection, got %v", m)
		}
	}
}
