package lameducktest

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"sync"
	"time"
)

// Load is a bounded HTTP load on a loopback address: a few clients sending GET requests
// back to back, the way traffic keeps arriving at a pod that load balancers have not yet
// forgotten.
type Load struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu     sync.Mutex
	result LoadResult
}

// LoadResult counts the requests of a Load.
type LoadResult struct {
	// OK is the number of requests answered with 200 and a complete body.
	OK int
	// Bodies are the bodies of those responses.
	Bodies []string
	// Failed is the number of requests that got an error or another status.
	Failed int
	// Errors holds the first few failures.
	Errors []string
}

// StartLoad starts clients goroutines sending GET target until Stop. The target must be
// on a loopback address: this is for tests, never for load on anything else.
func StartLoad(target string, clients int) (*Load, error) {
	u, err := url.Parse(target)
	if err != nil {
		return nil, err
	}
	if ip := net.ParseIP(u.Hostname()); ip == nil || !ip.IsLoopback() {
		return nil, fmt.Errorf("lameducktest: load only targets loopback IP addresses, not %q", u.Host)
	}
	ctx, cancel := context.WithCancel(context.Background())
	l := &Load{cancel: cancel}
	transport := &http.Transport{MaxIdleConnsPerHost: clients}
	client := &http.Client{Transport: transport, Timeout: 10 * time.Second}
	for i := 0; i < clients; i++ {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for ctx.Err() == nil {
				l.record(get(client, target))
			}
		}()
	}
	go func() {
		l.wg.Wait()
		transport.CloseIdleConnections()
	}()
	return l, nil
}

// get sends one request. A request that is started is always completed, even if Stop
// is called meanwhile: in-flight requests are what a drain must finish.
func get(client *http.Client, target string) (string, error) {
	resp, err := client.Get(target)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", fmt.Errorf("reading the body: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("status %s: %q", resp.Status, body)
	}
	return string(body), nil
}

func (l *Load) record(body string, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err != nil {
		l.result.Failed++
		if len(l.result.Errors) < 10 {
			l.result.Errors = append(l.result.Errors, err.Error())
		}
		return
	}
	l.result.OK++
	l.result.Bodies = append(l.result.Bodies, body)
}

// Stop stops sending new requests, waits for the ones in flight and returns the counts.
func (l *Load) Stop() LoadResult {
	l.cancel()
	l.wg.Wait()
	return l.Snapshot()
}

// Snapshot returns the counts so far.
func (l *Load) Snapshot() LoadResult {
	l.mu.Lock()
	defer l.mu.Unlock()
	r := l.result
	r.Bodies = append([]string(nil), r.Bodies...)
	r.Errors = append([]string(nil), r.Errors...)
	return r
}

// DeleteUnderLoad sends load to target from clients for warmup, then deletes the pod (see
// [Pod.Delete]) while the load goes on for lbLag more, the time load balancers take to
// stop sending to a deleted pod, and then stops it. It returns what the deletion did and
// what the clients saw.
func (p *Pod) DeleteUnderLoad(target string, clients int, warmup, lbLag time.Duration) (*Termination, LoadResult) {
	p.t.Helper()
	load, err := StartLoad(target, clients)
	if err != nil {
		p.t.Fatal(err)
	}
	time.Sleep(warmup)
	terminated := make(chan *Termination, 1)
	go func() { terminated <- p.delete() }()
	time.Sleep(lbLag)
	result := load.Stop()
	return <-terminated, result
}
