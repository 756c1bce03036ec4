//! Decisions every kind's executor shares: whether it runs a resource at all, what its status
//! says after a reconcile, when a status may wait to be written, and what a refused write means.

use crd_types::common::{CONDITION_READY, Parameters, PluginRef, Time, find_condition, set_condition};
use crd_types::hierarchy::{ApplicationStatus, ClusterStatus, HierarchyStatus, Repair, VirtualClusterStatus};
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use orrery_runtime::Failure;

use super::Readiness;
use crate::registry::{Claim, Kind, Registry};

/// What to do with a resource, given its executor.
#[derive(Debug, PartialEq)]
pub enum Execution {
    /// Another controller claimed it: none of our business.
    LeaveAlone,
    /// Report this and do nothing else (an unclaimed executor, bad parameters).
    Report(Readiness),
    /// Run our executor with these parameters.
    Run(Parameters),
}

/// Whether the controller `name` with `registry` runs a resource of `kind` naming `executor`;
/// `claimed_by` is its `status.executor`.
pub fn claim(
    registry: &Registry,
    name: &str,
    kind: Kind,
    executor: Option<&PluginRef>,
    claimed_by: Option<&str>,
) -> Execution {
    match registry.claim(kind, executor) {
        Claim::Claimed(parameters) => Execution::Run(parameters),
        Claim::InvalidParameters(message) => Execution::Report(Readiness::NotReady {
            reason: "InvalidParameters".into(),
            message,
        }),
        Claim::NotClaimed(_) if claimed_by.is_some_and(|c| c != name) => Execution::LeaveAlone,
        Claim::NotClaimed(executor) => Execution::Report(Readiness::NotReady {
            reason: "ExecutorNotClaimed".into(),
            message: format!("no controller runs executor {executor:?} for this kind"),
        }),
    }
}

/// A hierarchy kind's status: the shared part, and the kind's own fields.
pub trait Status: serde::Serialize + PartialEq + Clone + Default {
    /// The shared part.
    fn common(&self) -> &HierarchyStatus;
    /// The shared part.
    fn common_mut(&mut self) -> &mut HierarchyStatus;
}

impl Status for HierarchyStatus {
    fn common(&self) -> &HierarchyStatus {
        self
    }
    fn common_mut(&mut self) -> &mut HierarchyStatus {
        self
    }
}

macro_rules! status_with_common {
    ($($status:ty),*) => {$(
        impl Status for $status {
            fn common(&self) -> &HierarchyStatus {
                &self.common
            }
            fn common_mut(&mut self) -> &mut HierarchyStatus {
                &mut self.common
            }
        }
    )*};
}
status_with_common!(ClusterStatus, VirtualClusterStatus, ApplicationStatus);

/// The shared part of a status after a reconcile of the executor `executor` at `now`: its
/// `Ready` condition from `readiness`, and the objects it restored (`repaired`, if any, else
/// the last repair reported before).
pub fn common_status(
    executor: &str,
    previous: Option<&HierarchyStatus>,
    generation: Option<i64>,
    readiness: &Readiness,
    repaired: &[String],
    now: Timestamp,
) -> HierarchyStatus {
    let mut conditions = previous.map(|p| p.conditions.clone()).unwrap_or_default();
    let (ready, reason, message) = match readiness {
        Readiness::Ready => (true, "Ready", ""),
        Readiness::NotReady { reason, message } => (false, reason.as_str(), message.as_str()),
    };
    set_condition(
        &mut conditions,
        CONDITION_READY,
        ready,
        reason,
        message,
        generation,
        Time(now),
    );
    let last_repair = if repaired.is_empty() {
        previous.and_then(|p| p.last_repair.clone())
    } else {
        Some(Repair {
            time: crd_types::common::seconds(now),
            message: format!("restored {}", repaired.join(", ")),
        })
    };
    HierarchyStatus {
        observed_generation: generation,
        conditions,
        executor: Some(executor.into()),
        // policy-runner's field: never written here.
        policy: None,
        last_repair,
        // Executors of their own report there: nothing of this executor's.
        executor_status: None,
    }
}

/// How soon a refused write to a target cluster is tried again.
pub const WRITE_RETRY: Duration = Duration::from_secs(10);

/// A write to a target cluster the API server refused (a quota, a webhook, a field it
/// rejects): the resource's condition says so, and it is tried again after a pause. A
/// conflict is only a stale read: read again at once.
pub fn write_failed<E: Failure>(err: E, recheck: &mut Option<Duration>) -> Result<Readiness, E> {
    if err.is_conflict() {
        return Err(err);
    }
    *recheck = Some(WRITE_RETRY);
    Ok(Readiness::NotReady {
        reason: "WriteFailed".into(),
        message: err.to_string(),
    })
}

/// Whether `status` says `Ready`, if it says anything.
pub fn was_ready(status: Option<&HierarchyStatus>) -> Option<bool> {
    find_condition(&status?.conditions, CONDITION_READY).map(|c| c.status == "True")
}

/// Whether `next` differs from `previous` only in its `Ready` condition's message.
pub fn only_the_message_differs<S: Status>(previous: &S, next: &S) -> bool {
    let Some(before) = find_condition(&previous.common().conditions, CONDITION_READY) else {
        return false;
    };
    let mut masked = next.clone();
    if let Some(ready) = masked
        .common_mut()
        .conditions
        .iter_mut()
        .find(|c| c.type_ == CONDITION_READY)
    {
        ready.message.clone_from(&before.message);
    }
    masked == *previous
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(ready: bool, reason: &str, message: &str) -> HierarchyStatus {
        let mut conditions = Vec::new();
        let at = Time(Timestamp::UNIX_EPOCH);
        set_condition(&mut conditions, CONDITION_READY, ready, reason, message, Some(1), at);
        HierarchyStatus {
            observed_generation: Some(1),
            conditions,
            executor: Some("hierarchy-executor".into()),
            ..HierarchyStatus::default()
        }
    }

    #[test]
    fn a_new_message_alone_can_wait_but_a_new_reason_or_readiness_cannot() {
        let before = status(
            false,
            "ChildrenNotReady",
            "Application a/x: version v1 has 0/1 replicas ready",
        );
        let progress = status(
            false,
            "ChildrenNotReady",
            "Application a/y: version v1 has 0/1 replicas ready",
        );
        assert!(only_the_message_differs(&before, &progress));
        assert!(!only_the_message_differs(&before, &status(true, "Ready", "")));
        assert!(!only_the_message_differs(
            &before,
            &status(false, "WriteFailed", "refused")
        ));
        let mut newer = progress.clone();
        newer.observed_generation = Some(2);
        assert!(!only_the_message_differs(&before, &newer));
    }

    #[test]
    fn a_repair_is_reported_until_the_next_one() {
        let ready = status(true, "Ready", "");
        let now = Timestamp::UNIX_EPOCH;
        let repaired = ["Service shop-v2 (deleted)".to_owned()];
        let after = common_status("x", Some(&ready), Some(1), &Readiness::Ready, &repaired, now);
        let repair = after
            .last_repair
            .clone()
            .unwrap_or_else(|| panic!("no repair reported"));
        assert_eq!(repair.message, "restored Service shop-v2 (deleted)");
        let later = common_status("x", Some(&after), Some(1), &Readiness::Ready, &[], now);
        assert_eq!(later.last_repair, Some(repair));
    }

    #[test]
    fn an_executor_someone_else_claimed_is_left_to_them() {
        let registry = Registry::builtin();
        let other = PluginRef {
            name: "other".into(),
            ..PluginRef::default()
        };
        let leave = claim(&registry, "me", Kind::Application, Some(&other), Some("them"));
        assert_eq!(leave, Execution::LeaveAlone);
        let Execution::Report(Readiness::NotReady { reason, .. }) =
            claim(&registry, "me", Kind::Application, Some(&other), None)
        else {
            panic!("an executor nobody claimed is reported");
        };
        assert_eq!(reason, "ExecutorNotClaimed");
    }
}
