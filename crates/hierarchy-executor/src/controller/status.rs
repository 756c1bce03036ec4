//! The last step of every reconcile: the status written (unless it says what is there), an
//! Event when readiness changed or objects were repaired, and when to look again.

use orrery_runtime::Lock;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::runtime::controller::Action;
use orrery_runtime::apply_status;

use super::write::Written;
use super::{Error, NAME, State};
use crate::plan::Readiness;
use crate::plan::status::{Status, common_status, only_the_message_differs, was_ready};
use crate::plan::tenancy;

/// How often a status whose only change is its `Ready` message is written: while a tree
/// builds, every child's progress rewrites the messages of its parents up to the Project.
/// Changes of readiness or reason are written at once.
const MESSAGE_ONLY_EVERY: Duration = Duration::from_secs(5);

/// How often a resource refused for something outside it (a namespace without its owner's
/// consent, an object of someone else's in the way) looks again.
const REFUSED_RECHECK: Duration = Duration::from_secs(15);

/// What a reconcile concluded, before its status is written.
pub(super) struct Outcome {
    pub(super) readiness: Readiness,
    /// Look again after this long even if nothing changes.
    pub(super) recheck: Option<Duration>,
    /// Objects found deleted or changed and put back, described.
    pub(super) repaired: Vec<String>,
}

impl Outcome {
    pub(super) fn new(readiness: Readiness, recheck: Option<Duration>) -> Self {
        Outcome {
            readiness,
            recheck,
            repaired: Vec::new(),
        }
    }
}

/// Resource uid → when its status was last written, for [`MESSAGE_ONLY_EVERY`].
#[derive(Default)]
pub(super) struct StatusWrites(Lock<HashMap<String, Instant>>);

impl StatusWrites {
    /// How long to wait before writing `uid`'s status again, if it was written too recently.
    fn too_soon(&self, uid: &str) -> Option<Duration> {
        let writes = self.0.lock();
        let since = writes.get(uid)?.elapsed();
        MESSAGE_ONLY_EVERY.checked_sub(since).filter(|wait| !wait.is_zero())
    }

    fn wrote(&self, uid: String) {
        let mut writes = self.0.lock();
        // Only recent writes matter: older entries go, so the map stays small.
        if writes.len() > 1024 {
            writes.retain(|_, at| at.elapsed() < MESSAGE_ONLY_EVERY);
        }
        writes.insert(uid, Instant::now());
    }
}

/// Completes `status` with the outcome, writes it unless it says what is already there
/// (ignoring the policy field, which is policy-runner's), and publishes an Event when the
/// readiness changed or objects were repaired.
pub(super) async fn finish<K, S>(
    state: &State,
    object: &K,
    api: &Api<K>,
    previous: Option<&S>,
    mut status: S,
    outcome: Outcome,
) -> Result<Action, Error>
where
    K: Written,
    S: Status,
{
    *status.common_mut() = common_status(
        NAME,
        previous.map(Status::common),
        object.meta().generation,
        &outcome.readiness,
        &outcome.repaired,
        Timestamp::now(),
    );
    let recheck = outcome
        .recheck
        .or_else(|| tenancy::cleared_by_others(&outcome.readiness).then_some(REFUSED_RECHECK));
    let comparable = previous.cloned().map(|mut p| {
        p.common_mut().policy = None;
        p
    });
    if comparable.as_ref() != Some(&status) {
        let uid = object.meta().uid.clone().unwrap_or_default();
        if let Some(previous) = &comparable
            && only_the_message_differs(previous, &status)
            && let Some(wait) = state.status_writes.too_soon(&uid)
        {
            return Ok(Action::requeue(recheck.map_or(wait, |r| r.min(wait))));
        }
        apply_status(api, NAME, object, &status).await.map_err(Error::Status)?;
        state.status_writes.wrote(uid);
    }
    let reference = object.object_ref(&());
    if !outcome.repaired.is_empty() {
        let note = format!("restored {}", outcome.repaired.join(", "));
        (state.context.recorder)
            .publish_or_log(&reference, true, "Repaired", note, "Execute")
            .await;
    }
    let ready = matches!(outcome.readiness, Readiness::Ready);
    if was_ready(previous.map(Status::common)) != Some(ready) {
        let (warning, reason, note) = match &outcome.readiness {
            Readiness::Ready => (false, "Ready", "every part is ready".to_owned()),
            Readiness::NotReady { reason, message } => (true, reason.as_str(), message.clone()),
        };
        (state.context.recorder)
            .publish_or_log(&reference, warning, reason, note, "Execute")
            .await;
    }
    Ok(match recheck {
        Some(after) => Action::requeue(after),
        None => Action::await_change(),
    })
}
