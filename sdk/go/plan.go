package lameduck

// The deadlines of a shutdown the sidecar does not drive to its end (docs/protocol.md §6).
// Everything here is arithmetic on times it is given: no clock, no I/O.

import "time"

const (
	// exitReserve is kept back from a budget for the exit itself, as the sidecar does
	// (never more than half of the budget).
	exitReserve = 2 * time.Second
	// defaultHookFallback is what the preStop hook waits when it cannot reach the
	// sidecar, unless LAMEDUCK_FALLBACK_DELAY_MILLIS says otherwise (the hook's default).
	defaultHookFallback = 5 * time.Second
	// maxHookFallback bounds the hook's wait, whatever the environment says.
	maxHookFallback = 60 * time.Second
)

// reserveDeadline returns start + budget − min(exitReserve, budget/2): the end of a
// budget with the exit reserve kept back.
func reserveDeadline(start time.Time, budget time.Duration) time.Time {
	budget = max(budget, 0)
	return start.Add(budget - min(exitReserve, budget/2))
}

// deregisterPlan is what the sidecar's deregister said about the rest of the sequence.
type deregisterPlan struct {
	received time.Time // when the first deregister arrived
	phaseEnd time.Time // latest end of the deregister phase; zero from older sidecars
	deadline time.Time // the sequence's hard deadline; zero from older sidecars
}

// drainDeadline is the deadline of a drain the SDK starts itself: the one the sidecar
// announced, or (an older sidecar) the grace period counted from the deregister.
func (p deregisterPlan) drainDeadline(grace time.Duration) time.Time {
	if !p.deadline.IsZero() {
		return p.deadline
	}
	return reserveDeadline(p.received, grace)
}

// afterLoss says what to do when the sidecar was lost at now while deregistering: keep
// serving, and reconnecting, until hold (the phase's planned end, never past the
// deadline), since the endpoints may still route traffic here; or, when hold is zero,
// drain now with deadline. Without a planned end (an older sidecar) there is nothing to
// wait for.
func (p deregisterPlan) afterLoss(now time.Time, grace time.Duration) (hold, deadline time.Time) {
	deadline = p.drainDeadline(grace)
	if !p.phaseEnd.IsZero() {
		hold = p.phaseEnd
		if hold.After(deadline) {
			hold = deadline
		}
		if hold.After(now) {
			return hold, deadline
		}
	}
	return time.Time{}, later(deadline, now)
}

// localDeadline is the deadline of a drain the application starts itself (a signal or
// Terminate) at now. After a deregister it is the sequence's deadline, never before now.
// Before one, the grace period counts from now, less hookSpent: what the preStop hook
// already waited (its fallback delay when the SDK has no sidecar, as the hook could not
// reach one either).
func localDeadline(now time.Time, grace time.Duration, plan *deregisterPlan, hookSpent time.Duration) time.Time {
	if plan != nil {
		return later(plan.drainDeadline(grace), now)
	}
	return reserveDeadline(now, grace-hookSpent)
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
