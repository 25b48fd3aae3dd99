//! The leader's working copies of the policies' statuses, keyed by policy; followers
//! queue their observations here too.

use std::collections::HashMap;
use std::time::Duration;

use super::PolicyRecord;
use super::metrics::PolicyLabels;

/// How long a follower keeps an observation: the leader records observations every few
/// seconds, so anything older was recorded by it (or its successor saw it as a follower).
pub(crate) const FOLLOWER_RETENTION: Duration = Duration::from_secs(120);

/// A policy's namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PolicyKey {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl PolicyKey {
    pub(crate) fn labels(&self) -> PolicyLabels {
        PolicyLabels {
            namespace: self.namespace.clone(),
            policy: self.name.clone(),
        }
    }
}

impl std::fmt::Display for PolicyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The leader's working copies of the policies' statuses.
#[derive(Debug, Default)]
pub struct StatusBook {
    records: HashMap<PolicyKey, PolicyRecord>,
}

impl StatusBook {
    /// The record of one policy, created empty (it loads the status at the next write).
    pub fn entry(&mut self, namespace: String, name: String) -> &mut PolicyRecord {
        self.records
            .entry(PolicyKey { namespace, name })
            .or_default()
    }

    /// Drops queued observations of pods that finished before `unix_ms`, and the records
    /// left with nothing (followers: they only queue).
    pub fn prune_before(&mut self, unix_ms: i64) {
        self.records.retain(|_, record| {
            record.prune_before(unix_ms);
            record.is_loaded() || record.has_pending()
        });
    }

    /// Forgets the queued counts of unobserved pods (on taking the lease).
    pub fn forget_unobserved(&mut self) {
        for record in self.records.values_mut() {
            record.forget_unobserved();
        }
    }

    /// Forgets what describes objects that are gone: everything in a namespace being
    /// deleted, the record of a policy that no longer exists (what it queued included), and
    /// observations that waited [`FOLLOWER_RETENTION`] for a policy that never appeared.
    pub fn retain(
        &mut self,
        exists: impl Fn(&PolicyKey) -> bool,
        namespace_terminating: impl Fn(&str) -> bool,
        now_unix_ms: i64,
    ) {
        self.records.retain(|key, record| {
            if namespace_terminating(&key.namespace) {
                return false;
            }
            if exists(key) {
                return true;
            }
            if record.is_loaded() || record.is_closing() {
                return false;
            }
            record.prune_before(now_unix_ms - FOLLOWER_RETENTION.as_millis() as i64);
            record.has_pending_observations()
        });
    }

    /// Number of policies with a record (the memory the book holds).
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether no policy has a record.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}
