//! Samples the kernel view while a shutdown needs it, and feeds the samples to the state.
//!
//! At idle it sleeps on the state's change notifications with no timer: nothing is read
//! until a preStop hook starts a shutdown. Then it samples every [`INTERVAL`] until every
//! container that shut down has let go of its connections (its listeners closed, or its
//! drain ended). A sample that changes nothing a waiter cares about is applied without
//! waking anyone or rewriting the state file. Under load the counters alone often settle a
//! sample (`TrafficView::observe_counters`) and the socket table is not read.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::time::MissedTickBehavior;
use tracing::{debug, warn};

use super::{TrafficView, read_counters, read_sockets};
use crate::serve::Shared;
use crate::state::State;

/// How often the view is sampled during a shutdown: the detection latency of the last
/// connection is at most this plus the time one sample takes, which keeps the phase's end
/// within the quiet period + 100 ms of the last connection.
pub const INTERVAL: Duration = Duration::from_millis(90);

/// Runs until the sidecar stops.
pub async fn run(shared: Arc<Shared>, mut view: TrafficView, proc_net: PathBuf) {
    let mut changed = shared.changed.subscribe();
    loop {
        loop {
            changed.borrow_and_update();
            if shared.read(State::kernel_wanted) {
                break;
            }
            if changed.changed().await.is_err() {
                return;
            }
        }
        debug!("sampling the kernel view");
        // What changed while nobody looked is not news.
        view.reset();
        let mut tick = tokio::time::interval(INTERVAL);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut blind = false;
        loop {
            tick.tick().await;
            if !shared.read(State::kernel_wanted) {
                break;
            }
            let now = Instant::now();
            let counters = read_counters(&proc_net);
            if !shared.read(State::kernel_needs_table)
                && let Some(observation) = view.observe_counters(now, counters)
            {
                debug!(?observation, "kernel sample (counters only)");
                shared.update_if(|s| s.kernel_sample(&observation, counters, now));
                continue;
            }
            let sockets = if view.has_ports() {
                read_sockets(&proc_net)
            } else {
                Ok(Vec::new())
            };
            match sockets {
                Ok(sockets) => {
                    blind = false;
                    let observation = view.observe(now, &sockets, counters);
                    debug!(sockets = sockets.len(), ?observation, "kernel sample");
                    shared.update_if(|s| s.kernel_sample(&observation, counters, now));
                }
                Err(error) => {
                    if !blind {
                        warn!(
                            "cannot read the socket table ({error}): traffic is unknown, the deregister phases run to their planned end"
                        );
                        blind = true;
                    }
                    view.reset();
                    shared.update(|s| s.kernel_blind(now));
                }
            }
        }
        debug!("the kernel view is idle");
    }
}
