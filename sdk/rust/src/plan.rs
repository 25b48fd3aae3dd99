//! The deadlines of a shutdown the sidecar does not drive to its end (docs/protocol.md §6):
//! arithmetic on Unix milliseconds, with no clock and no I/O.

use std::time::Duration;

/// Time kept back from a budget for SIGTERM → exit, as the sidecar does (never more than
/// half of the budget).
pub(crate) const EXIT_RESERVE: Duration =
    Duration::from_millis(lameduck_proto::timing::DEFAULT_EXIT_RESERVE_MILLIS);
/// What the preStop hook waits when it cannot reach the sidecar, unless
/// `LAMEDUCK_FALLBACK_DELAY_MILLIS` says otherwise (the hook's own default).
pub(crate) const DEFAULT_HOOK_FALLBACK: Duration =
    Duration::from_millis(lameduck_proto::timing::DEFAULT_FALLBACK_DELAY_MILLIS);
/// The hook never waits longer than this, whatever the environment says.
pub(crate) const MAX_HOOK_FALLBACK: Duration =
    Duration::from_millis(lameduck_proto::timing::MAX_FALLBACK_DELAY_MILLIS);

/// `start + budget − min(2 s, budget / 2)`: the end of a budget with the exit reserve kept.
pub(crate) fn reserve_deadline(start_unix_ms: u64, budget: Duration) -> u64 {
    let usable = budget - EXIT_RESERVE.min(budget / 2);
    start_unix_ms.saturating_add(millis(usable))
}

/// The deadline of a drain the application starts itself (a signal, or
/// [`Lameduck::shutdown`](crate::Lameduck::shutdown) before any drain).
///
/// After a `deregister` it is the sequence's deadline, never before `now`. Before one, the
/// grace period counts from `now`, less what the preStop hook already spent: `hook_spent`
/// is its fallback delay when the SDK has no sidecar, as the hook could not reach one
/// either, and zero otherwise.
pub(crate) fn local_deadline(
    now_unix_ms: u64,
    grace: Duration,
    plan: Option<&DeregisterPlan>,
    hook_spent: Duration,
) -> u64 {
    match plan {
        Some(plan) => plan.drain_deadline(grace).max(now_unix_ms),
        None => reserve_deadline(now_unix_ms, grace.saturating_sub(hook_spent)),
    }
}

/// What the sidecar's `deregister` said about the rest of the sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DeregisterPlan {
    /// When the first `deregister` arrived.
    pub(crate) received_unix_ms: u64,
    /// The latest end of the deregister phase; `None` from sidecars that predate it.
    pub(crate) phase_end_unix_ms: Option<u64>,
    /// The sequence's hard deadline; `None` from sidecars that predate it.
    pub(crate) deadline_unix_ms: Option<u64>,
}

/// What to do after losing the sidecar while deregistering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AfterLoss {
    /// Keep serving, and reconnecting, until then.
    Hold { until_unix_ms: u64 },
    /// Drain now, with this deadline.
    Drain { deadline_unix_ms: u64 },
}

impl DeregisterPlan {
    /// The deadline of a drain the SDK starts itself: the one the sidecar announced, or
    /// (an older sidecar) the grace period counted from the `deregister`.
    pub(crate) fn drain_deadline(&self, grace: Duration) -> u64 {
        self.deadline_unix_ms
            .unwrap_or_else(|| reserve_deadline(self.received_unix_ms, grace))
    }

    /// The sidecar was lost at `now`: the deregister phase goes on until its planned end
    /// (never past the deadline), since the endpoints may still route traffic here. Without
    /// a planned end there is nothing to wait for: drain at once.
    pub(crate) fn after_loss(&self, now_unix_ms: u64, grace: Duration) -> AfterLoss {
        let deadline = self.drain_deadline(grace);
        match self.phase_end_unix_ms.map(|end| end.min(deadline)) {
            Some(until) if until > now_unix_ms => AfterLoss::Hold {
                until_unix_ms: until,
            },
            _ => AfterLoss::Drain {
                deadline_unix_ms: deadline.max(now_unix_ms),
            },
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: u64 = 1_800_000_000_000;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn the_reserve_is_two_seconds_or_half_the_budget() {
        assert_eq!(reserve_deadline(T, secs(30)), T + 28_000);
        assert_eq!(reserve_deadline(T, secs(3)), T + 1_500);
        assert_eq!(reserve_deadline(T, Duration::ZERO), T);
    }

    #[test]
    fn without_a_plan_the_hook_s_fallback_comes_off_the_grace_period() {
        // G 10 s, F 4 s: 6 s left, 2 s of them kept back.
        assert_eq!(local_deadline(T, secs(10), None, secs(4)), T + 4_000);
        assert_eq!(
            local_deadline(T, secs(30), None, Duration::ZERO),
            T + 28_000
        );
        // A fallback longer than the grace period: drain with no time left, never before now.
        assert_eq!(local_deadline(T, secs(5), None, secs(60)), T);
    }

    #[test]
    fn after_a_deregister_the_sequence_deadline_counts() {
        let plan = DeregisterPlan {
            received_unix_ms: T,
            phase_end_unix_ms: Some(T + 5_000),
            deadline_unix_ms: Some(T + 28_000),
        };
        assert_eq!(
            local_deadline(T + 1_000, secs(30), Some(&plan), secs(5)),
            T + 28_000
        );
        assert_eq!(
            local_deadline(T + 40_000, secs(30), Some(&plan), secs(5)),
            T + 40_000,
            "never before now"
        );
        let old = DeregisterPlan {
            phase_end_unix_ms: None,
            deadline_unix_ms: None,
            ..plan
        };
        assert_eq!(
            local_deadline(T + 1_000, secs(10), Some(&old), Duration::ZERO),
            T + 8_000,
            "an older sidecar: G counted from the deregister"
        );
    }

    #[test]
    fn losing_the_sidecar_holds_until_the_planned_end() {
        let plan = DeregisterPlan {
            received_unix_ms: T,
            phase_end_unix_ms: Some(T + 5_000),
            deadline_unix_ms: Some(T + 28_000),
        };
        assert_eq!(
            plan.after_loss(T + 1_000, secs(30)),
            AfterLoss::Hold {
                until_unix_ms: T + 5_000
            }
        );
        assert_eq!(
            plan.after_loss(T + 5_000, secs(30)),
            AfterLoss::Drain {
                deadline_unix_ms: T + 28_000
            },
            "the planned end came: drain with the deadline counted from T0"
        );
        let late = DeregisterPlan {
            phase_end_unix_ms: Some(T + 40_000),
            ..plan
        };
        assert_eq!(
            late.after_loss(T + 1_000, secs(30)),
            AfterLoss::Hold {
                until_unix_ms: T + 28_000
            },
            "never past the deadline"
        );
    }

    #[test]
    fn losing_an_older_sidecar_drains_at_once() {
        let old = DeregisterPlan {
            received_unix_ms: T,
            phase_end_unix_ms: None,
            deadline_unix_ms: None,
        };
        assert_eq!(
            old.after_loss(T + 1_000, secs(10)),
            AfterLoss::Drain {
                deadline_unix_ms: T + 8_000
            }
        );
        let deadline_only = DeregisterPlan {
            deadline_unix_ms: Some(T + 6_000),
            ..old
        };
        assert_eq!(
            deadline_only.after_loss(T + 1_000, secs(10)),
            AfterLoss::Drain {
                deadline_unix_ms: T + 6_000
            }
        );
    }
}
