// Command loadgen is the load generator of the demo, the rollout benchmark and the
// end-to-end tests when they run in a pod: the load then comes from a pod address, as a
// client's would, not from the node (whose address the kubelet's probes share), and it
// works on any cluster, with nothing to reach from outside.
//
//	loadgen attack -target URL -rate N [-duration D] [-timeout T] [-keepalive=false]
//	loadgen stop
//	loadgen get URL
//	loadgen admit -dns-name NAME [-addr :8443]
//
// attack sends GET requests at a constant rate (vegeta's attacker) until -duration has
// passed or it receives SIGINT or SIGTERM, then prints one JSON document on stdout:
// vegeta's report (requests, status_codes, errors, latencies…) and, under "loadgen", what
// the rollout figures need: failures by kind, per-second counts, the time of each failure,
// and the generator's own CPU time and latency (to show it was not the bottleneck).
// stop sends SIGINT to PID 1 (the attack, when it is the container's entrypoint: `kubectl
// exec POD -- /loadgen stop`). get fetches URL once and exits 0 on a 200. admit serves a
// no-op admission webhook, the baseline of the webhook's cost (admit.go).
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"sort"
	"syscall"
	"time"

	vegeta "github.com/tsenart/vegeta/v12/lib"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	switch os.Args[1] {
	case "attack":
		if err := attack(os.Args[2:], os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "loadgen attack:", err)
			os.Exit(1)
		}
	case "stop":
		if err := syscall.Kill(1, syscall.SIGINT); err != nil {
			fmt.Fprintln(os.Stderr, "loadgen stop: signalling PID 1:", err)
			os.Exit(1)
		}
	case "admit":
		runAdmit()
	case "get":
		if len(os.Args) != 3 {
			usage()
		}
		if err := get(os.Args[2]); err != nil {
			fmt.Fprintln(os.Stderr, "loadgen get:", err)
			os.Exit(1)
		}
	default:
		usage()
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: loadgen attack -target URL -rate N [-duration D] [-timeout T] [-keepalive=false] | loadgen stop | loadgen get URL | loadgen admit -dns-name NAME")
	os.Exit(2)
}

func get(url string) error {
	client := http.Client{Timeout: 2 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: status %d", url, resp.StatusCode)
	}
	return nil
}

// options are attack's flags.
type options struct {
	target    string
	rate      int
	duration  time.Duration
	timeout   time.Duration
	keepalive bool
}

func parse(args []string) (options, error) {
	var o options
	fs := flag.NewFlagSet("attack", flag.ContinueOnError)
	fs.StringVar(&o.target, "target", "", "URL to GET (required)")
	fs.IntVar(&o.rate, "rate", 50, "requests per second")
	fs.DurationVar(&o.duration, "duration", 0, "how long; 0: until SIGINT or SIGTERM")
	fs.DurationVar(&o.timeout, "timeout", 5*time.Second, "per-request timeout")
	fs.BoolVar(&o.keepalive, "keepalive", true, "reuse connections (as most clients do)")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if o.target == "" {
		return o, fmt.Errorf("-target is required")
	}
	if o.rate <= 0 {
		return o, fmt.Errorf("-rate must be positive, got %d", o.rate)
	}
	return o, nil
}

// attack runs the load and writes the result to out.
func attack(args []string, out io.Writer) error {
	o, err := parse(args)
	if err != nil {
		return err
	}
	attacker := vegeta.NewAttacker(vegeta.Timeout(o.timeout), vegeta.KeepAlive(o.keepalive))
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-stop
		attacker.Stop()
	}()

	targeter := vegeta.NewStaticTargeter(vegeta.Target{Method: http.MethodGet, URL: o.target})
	var metrics vegeta.Metrics
	tally := newTally()
	started := time.Now()
	cpuBefore := cpuTime()
	for res := range attacker.Attack(targeter, vegeta.Rate{Freq: o.rate, Per: time.Second}, o.duration, "loadgen") {
		metrics.Add(res)
		tally.add(res)
	}
	metrics.Close()
	return write(out, &metrics, tally.summary(o, time.Since(started), cpuTime()-cpuBefore))
}

// write prints vegeta's report with the generator's own figures under "loadgen", indented
// so that no line is long (container logs split long lines).
func write(out io.Writer, metrics *vegeta.Metrics, summary Summary) error {
	raw, err := json.Marshal(metrics)
	if err != nil {
		return err
	}
	var doc map[string]any
	if err := json.Unmarshal(raw, &doc); err != nil {
		return err
	}
	doc["loadgen"] = summary
	enc := json.NewEncoder(out)
	enc.SetIndent("", " ")
	return enc.Encode(doc)
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// maxFailureTimes bounds the failure timestamps kept (the counts stay exact).
const maxFailureTimes = 20000

// Summary is what the rollout figures need beyond vegeta's report.
type Summary struct {
	Target    string  `json:"target"`
	Rate      int     `json:"rate"`
	KeepAlive bool    `json:"keepalive"`
	Requests  uint64  `json:"requests"`
	OK        uint64  `json:"ok"`
	Failed    uint64  `json:"failed"`
	WallSecs  float64 `json:"wall_seconds"`
	// CPU time of the generator itself (user + system): against wall time, how close it
	// came to being the bottleneck.
	CPUSecs float64 `json:"cpu_seconds"`
	// Failed requests by kind: refused, reset, timeout, eof, http-<code>, other.
	FailuresByKind map[string]uint64 `json:"failures_by_kind"`
	// Per second since the Unix epoch: [second, sent, failed].
	Seconds [][3]int64 `json:"seconds"`
	// When each failure was sent: [unix milliseconds, kind], at most maxFailureTimes.
	Failures        [][2]any `json:"failures"`
	FailuresOmitted uint64   `json:"failures_omitted,omitempty"`
	// The generator's own request latency, ms.
	LatencyP50Ms float64 `json:"latency_p50_ms"`
	LatencyP99Ms float64 `json:"latency_p99_ms"`
	LatencyMaxMs float64 `json:"latency_max_ms"`
}

type tally struct {
	requests, ok, failed uint64
	byKind               map[string]uint64
	perSecond            map[int64]*[2]int64
	failures             [][2]any
	omitted              uint64
	latencies            []time.Duration
}

func newTally() *tally {
	return &tally{byKind: map[string]uint64{}, perSecond: map[int64]*[2]int64{}}
}

func (t *tally) add(res *vegeta.Result) {
	t.requests++
	sec := res.Timestamp.Unix()
	bucket := t.perSecond[sec]
	if bucket == nil {
		bucket = &[2]int64{}
		t.perSecond[sec] = bucket
	}
	bucket[0]++
	t.latencies = append(t.latencies, res.Latency)
	kind := classify(res.Code, res.Error)
	if kind == "" {
		t.ok++
		return
	}
	t.failed++
	bucket[1]++
	t.byKind[kind]++
	if len(t.failures) < maxFailureTimes {
		t.failures = append(t.failures, [2]any{res.Timestamp.UnixMilli(), kind})
	} else {
		t.omitted++
	}
}

func (t *tally) summary(o options, wall, cpu time.Duration) Summary {
	secs := make([]int64, 0, len(t.perSecond))
	for s := range t.perSecond {
		secs = append(secs, s)
	}
	sort.Slice(secs, func(i, j int) bool { return secs[i] < secs[j] })
	seconds := make([][3]int64, 0, len(secs))
	for _, s := range secs {
		b := t.perSecond[s]
		seconds = append(seconds, [3]int64{s, b[0], b[1]})
	}
	sort.Slice(t.latencies, func(i, j int) bool { return t.latencies[i] < t.latencies[j] })
	failures := t.failures
	if failures == nil {
		failures = [][2]any{}
	}
	return Summary{
		Target:          o.target,
		Rate:            o.rate,
		KeepAlive:       o.keepalive,
		Requests:        t.requests,
		OK:              t.ok,
		Failed:          t.failed,
		WallSecs:        wall.Seconds(),
		CPUSecs:         cpu.Seconds(),
		FailuresByKind:  t.byKind,
		Seconds:         seconds,
		Failures:        failures,
		FailuresOmitted: t.omitted,
		LatencyP50Ms:    ms(quantile(t.latencies, 0.50)),
		LatencyP99Ms:    ms(quantile(t.latencies, 0.99)),
		LatencyMaxMs:    ms(quantile(t.latencies, 1)),
	}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// quantile of sorted durations (nearest rank); 0 when there are none.
func quantile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q*float64(len(sorted))+0.5) - 1
	if i < 0 {
		i = 0
	}
	if i >= len(sorted) {
		i = len(sorted) - 1
	}
	return sorted[i]
}
