package lameduck_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// TestReadmeReplace runs the README's "Depending on it" commands in a new module next to a
// copy of the checkout's layout: go mod edit -require/-replace, then go build. A module
// that could not be built from a checkout this way fails here.
func TestReadmeReplace(t *testing.T) {
	sdk, err := filepath.Abs(".")
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	// The README's layout: the checkout at ../lameduck, relative to the user's module.
	if err := os.MkdirAll(filepath.Join(root, "lameduck", "sdk"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(sdk, filepath.Join(root, "lameduck", "sdk", "go")); err != nil {
		t.Fatal(err)
	}
	app := filepath.Join(root, "app")
	if err := os.MkdirAll(app, 0o755); err != nil {
		t.Fatal(err)
	}
	main := `package main

import (
	"context"
	"log"

	lameduck "github.com/lameduck-dev/lameduck/sdk/go"
)

func main() {
	sd, err := lameduck.Start(context.Background(), lameduck.Options{})
	if err != nil {
		log.Print(err)
	}
	sd.Defer(func(context.Context) error { return nil })
}
`
	if err := os.WriteFile(filepath.Join(app, "main.go"), []byte(main), 0o644); err != nil {
		t.Fatal(err)
	}
	goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
	for _, args := range [][]string{
		{"mod", "init", "example.com/app"},
		{"mod", "edit", "-require=github.com/lameduck-dev/lameduck/sdk/go@v0.0.0",
			"-replace=github.com/lameduck-dev/lameduck/sdk/go=../lameduck/sdk/go"},
		{"build", "./..."},
	} {
		cmd := exec.Command(goBin, args...)
		cmd.Dir = app
		// Nothing may come from the network: the replace is the whole point.
		cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod", "GOPROXY=off")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}
