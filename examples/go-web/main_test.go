package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lameduck-dev/lameduck/sdk/go/lameducktest"
)

// The test runs this test binary again as the service, with envRunMain set.
const envRunMain = "GO_WEB_RUN_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(envRunMain) == "1" {
		main()
	}
	os.Exit(m.Run())
}

// A rolling restart under load: the pod is deleted while clients keep sending requests
// for a while, as they do until load balancers catch up. With the SDK no request fails
// and every acknowledged request's record reaches the disk.
func TestDrainUnderLoadLosesNothing(t *testing.T) {
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
		"RECORDS_DIR="+records, "HOSTNAME=go-web-test")
	app := pod.Start(cmd)
	addr := strings.TrimPrefix(app.WaitForOutput(t, "listening on ", 10*time.Second), "listening on ")

	term, load := pod.DeleteUnderLoad("http://"+addr+"/", 8, time.Second, 700*time.Millisecond)

	t.Logf("acknowledged %d requests, %d failed; %v", load.OK, load.Failed, term)
	if load.OK < 50 {
		t.Fatalf("only %d requests acknowledged: the load did not run", load.OK)
	}
	if load.Failed != 0 {
		t.Errorf("%d requests failed during the shutdown, e.g. %q", load.Failed, load.Errors)
	}
	written := readRecords(t, filepath.Join(records, "go-web-test.records"))
	acked := make([]string, 0, load.OK)
	for _, body := range load.Bodies {
		acked = append(acked, strings.TrimSpace(strings.TrimPrefix(body, "ok ")))
	}
	slices.Sort(acked)
	slices.Sort(written)
	if !slices.Equal(acked, written) {
		t.Errorf("%d requests acknowledged, %d records written: %d lost", len(acked), len(written), len(acked)-len(written))
	}
	if !app.HasOutput(fmt.Sprintf("flushed %d records", load.OK)) || !app.HasOutput("shutdown complete: ok") {
		t.Errorf("output:\n%s", app.Output())
	}
	if term.Killed || term.ExitCode != 0 || term.Report == nil || term.Report.Outcome != "acked" {
		t.Errorf("want a clean, acknowledged shutdown: %v", term)
	}
	if term.Report != nil && term.Report.LastAcceptMS == nil {
		t.Errorf("the report has no deregister lag: %s", term.ReportRaw)
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
