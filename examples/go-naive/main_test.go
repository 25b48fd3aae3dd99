package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lameduck-dev/lameduck/sdk/go/lameducktest"
)

// The test runs this test binary again as the service, with envRunMain set.
const envRunMain = "GO_NAIVE_RUN_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(envRunMain) == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// The baseline: the same rolling restart under load as examples/go-web's test, with the
// same sidecar (which, with no SDK connected, holds the preStop hook for its fixed delay).
// The requests succeed, but os.Exit skips the deferred flush: records are lost.
func TestDrainUnderLoadLosesRecords(t *testing.T) {
	pod := lameducktest.NewPod(t, lameducktest.Config{
		GracePeriod: 6 * time.Second,
		SidecarArgs: []string{
			"--delay-millis", "1500",
			"--min-delay-millis", "300", "--quiet-period-millis", "400", "--max-delay-millis", "3000",
		},
	})
	records := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envRunMain+"=1", "GORACE=atexit_sleep_ms=0",
		"LISTEN_ADDR=127.0.0.1:0", "REQUEST_MILLIS=20", "CLEANUP_MILLIS=500",
		"RECORDS_DIR="+records, "HOSTNAME=go-naive-test")
	app := pod.Start(cmd)
	addr := strings.TrimPrefix(app.WaitForOutput(t, "listening on ", 10*time.Second), "listening on ")

	term, load := pod.DeleteUnderLoad("http://"+addr+"/", 8, time.Second, 700*time.Millisecond)

	written := readRecords(t, filepath.Join(records, "go-naive-test.records"))
	lost := load.OK - len(written)
	t.Logf("acknowledged %d requests, %d failed, %d records written, %d lost; %v", load.OK, load.Failed, len(written), lost, term)
	if load.OK < 50 {
		t.Fatalf("only %d requests acknowledged: the load did not run", load.OK)
	}
	if lost <= 0 {
		t.Errorf("the naive service lost no records (%d acknowledged, %d written): the baseline is broken", load.OK, len(written))
	}
	if app.HasOutput("flushed") {
		t.Errorf("the deferred flush ran:\n%s", app.Output())
	}
	if term.Killed || term.ExitCode != 0 {
		t.Errorf("want os.Exit(0) on SIGTERM: %v", term)
	}
	if term.Report == nil || term.Report.Outcome != "no-app" {
		t.Errorf("want the sidecar to report no-app: %v", term)
	}
}

func readRecords(t *testing.T, path string) []string {
	t.Helper()
	data, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return strings.Fields(string(data))
}
