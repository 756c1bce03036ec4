//! What each resource's executor last applied, as a fingerprint: a reconcile whose desired
//! objects are the same as last time (and still there) applies nothing, so the many
//! reconciles a tree's readiness changes cause cost reads, not writes.

use orrery_runtime::Lock;
use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use serde::Serialize;

/// Resource uid (or `<Project uid>/<kind>/<namespace>/<name>` for a Project's children) →
/// fingerprint of the objects applied for it.
#[derive(Debug, Default)]
pub(super) struct Applied(Lock<HashMap<String, u64>>);

/// The fingerprint of `desired` (its JSON form: every field that would be sent).
pub(super) fn fingerprint(desired: &impl Serialize) -> u64 {
    let mut hasher = DefaultHasher::new();
    serde_json::to_vec(desired).unwrap_or_default().hash(&mut hasher);
    hasher.finish()
}

impl Applied {
    /// Whether `fingerprint` is what was last applied for `uid`.
    pub(super) fn is_current(&self, uid: &str, fingerprint: u64) -> bool {
        self.0.lock().get(uid) == Some(&fingerprint)
    }

    /// Records a successful apply.
    pub(super) fn record(&self, uid: &str, fingerprint: u64) {
        self.0.lock().insert(uid.to_owned(), fingerprint);
    }

    /// Forgets `uid`: the next reconcile applies everything (after a failure, or deletion).
    pub(super) fn forget(&self, uid: &str) {
        self.0.lock().remove(uid);
    }

    /// Forgets `uid` and every key under it.
    pub(super) fn forget_all(&self, uid: &str) {
        self.0.lock().retain(|key, _| !key.starts_with(uid));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_the_same_objects_are_current() {
        let applied = Applied::default();
        let first = fingerprint(&json!({"replicas": 1}));
        assert!(!applied.is_current("a", first));
        applied.record("a", first);
        assert!(applied.is_current("a", first));
        assert!(!applied.is_current("a", fingerprint(&json!({"replicas": 2}))));
        assert!(!applied.is_current("b", first));
        applied.forget("a");
        assert!(!applied.is_current("a", first));
        applied.record("a", first);
        applied.record("a/Application/ns/x", first);
        applied.record("b", first);
        applied.forget_all("a");
        assert!(!applied.is_current("a", first) && !applied.is_current("a/Application/ns/x", first));
        assert!(applied.is_current("b", first));
    }
}
