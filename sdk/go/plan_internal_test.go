package lameduck

import (
	"testing"
	"time"
)

// t0 is an arbitrary instant in whole milliseconds, as the protocol's times are.
var t0 = time.UnixMilli(1_800_000_000_000)

func at(d time.Duration) time.Time { return t0.Add(d) }

func TestReserveDeadline(t *testing.T) {
	for budget, want := range map[time.Duration]time.Duration{
		30 * time.Second: 28 * time.Second,
		3 * time.Second:  1500 * time.Millisecond,
		0:                0,
		-time.Second:     0,
	} {
		if got := reserveDeadline(t0, budget); !got.Equal(at(want)) {
			t.Errorf("reserveDeadline(t0, %v) = t0+%v, want t0+%v", budget, got.Sub(t0), want)
		}
	}
}

func TestLocalDeadline(t *testing.T) {
	plan := &deregisterPlan{received: t0, phaseEnd: at(5 * time.Second), deadline: at(28 * time.Second)}
	older := &deregisterPlan{received: t0}
	cases := []struct {
		name      string
		now       time.Duration
		grace     time.Duration
		plan      *deregisterPlan
		hookSpent time.Duration
		want      time.Duration
	}{
		{"the hook's fallback comes off the grace period", 0, 10 * time.Second, nil, 4 * time.Second, 4 * time.Second},
		{"no fallback spent", 0, 30 * time.Second, nil, 0, 28 * time.Second},
		{"a fallback longer than the grace period: no time left", 0, 5 * time.Second, nil, time.Minute, 0},
		{"after a deregister, the sequence's deadline", time.Second, 30 * time.Second, plan, 5 * time.Second, 28 * time.Second},
		{"never before now", 40 * time.Second, 30 * time.Second, plan, 0, 40 * time.Second},
		{"an older sidecar: G from the deregister", time.Second, 10 * time.Second, older, 0, 8 * time.Second},
	}
	for _, c := range cases {
		if got := localDeadline(at(c.now), c.grace, c.plan, c.hookSpent); !got.Equal(at(c.want)) {
			t.Errorf("%s: t0+%v, want t0+%v", c.name, got.Sub(t0), c.want)
		}
	}
}

func TestAfterLoss(t *testing.T) {
	plan := deregisterPlan{received: t0, phaseEnd: at(5 * time.Second), deadline: at(28 * time.Second)}
	late := plan
	late.phaseEnd = at(40 * time.Second)
	older := deregisterPlan{received: t0}
	deadlineOnly := deregisterPlan{received: t0, deadline: at(6 * time.Second)}
	cases := []struct {
		name           string
		plan           deregisterPlan
		now            time.Duration
		grace          time.Duration
		hold, deadline time.Duration // hold -1: drain at once
	}{
		{"hold until the planned end", plan, time.Second, 30 * time.Second, 5 * time.Second, 28 * time.Second},
		{"the planned end came: drain with the deadline from T0", plan, 5 * time.Second, 30 * time.Second, -1, 28 * time.Second},
		{"never hold past the deadline", late, time.Second, 30 * time.Second, 28 * time.Second, 28 * time.Second},
		{"an older sidecar: at once, G from the deregister", older, time.Second, 10 * time.Second, -1, 8 * time.Second},
		{"a deadline but no planned end: at once", deadlineOnly, time.Second, 10 * time.Second, -1, 6 * time.Second},
		{"a deadline already past: never before now", older, 20 * time.Second, 10 * time.Second, -1, 20 * time.Second},
	}
	for _, c := range cases {
		hold, deadline := c.plan.afterLoss(at(c.now), c.grace)
		wantHold := time.Time{}
		if c.hold >= 0 {
			wantHold = at(c.hold)
		}
		if !hold.Equal(wantHold) || !deadline.Equal(at(c.deadline)) {
			t.Errorf("%s: hold %v, deadline t0+%v; want hold %v, deadline t0+%v", c.name, hold, deadline.Sub(t0), wantHold, c.deadline)
		}
	}
}
