//! Timing defaults that the sidecar, the operator and the SDKs must agree on (the Go SDK
//! mirrors them; docs/protocol.md states them).

/// Time the sidecar keeps back before the grace deadline for SIGTERM to end the app, in
/// ms (`LAMEDUCK_EXIT_RESERVE_MILLIS`); never more than half of the grace period.
pub const DEFAULT_EXIT_RESERVE_MILLIS: u64 = 2_000;

/// How long the preStop hook waits when it cannot reach the sidecar, in ms
/// (`LAMEDUCK_FALLBACK_DELAY_MILLIS`).
pub const DEFAULT_FALLBACK_DELAY_MILLIS: u64 = 5_000;

/// The longest fallback delay the hook accepts, in ms: a mistyped value must not hold a
/// pod's deletion for hours.
pub const MAX_FALLBACK_DELAY_MILLIS: u64 = 60_000;

/// The exit reserve for a grace period of `grace_millis`: the default, at most half of it.
pub fn exit_reserve_millis(grace_millis: u64) -> u64 {
    DEFAULT_EXIT_RESERVE_MILLIS.min(grace_millis / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_is_at_most_half_the_grace_period() {
        assert_eq!(exit_reserve_millis(30_000), 2_000);
        assert_eq!(exit_reserve_millis(3_000), 1_500);
        assert_eq!(exit_reserve_millis(0), 0);
    }
}
