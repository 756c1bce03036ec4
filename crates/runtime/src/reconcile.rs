//! What every reconcile loop repeats: a span naming the object, its failure counted under a
//! stable reason, retries backing off per object, the wake-up at a planned time, and the
//! results of `Controller::run` logged rather than dropped.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures::{Stream, StreamExt};
use kube::Resource;
use kube::core::DynamicObject;
use kube::runtime::controller::{Action, Error as ControllerError};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use tracing::Instrument;

use crate::lock::Lock;

/// A reconcile's error as the runtime sees it: a stable reason, the label of
/// `orrery_reconcile_failures`, and whether it is a conflict (read again soon, not counted as a
/// failure).
/// Each controller crate's error enum implements it, one reason per variant.
pub trait Failure: std::error::Error + Send + Sync + 'static {
    /// Stable reason for metrics and logs: the variant's name.
    fn reason(&self) -> &'static str;

    /// Whether the object changed between our read and our write: read again soon.
    fn is_conflict(&self) -> bool {
        false
    }

    /// Whether the API server refused a request it will refuse again (422 invalid, 403 from an
    /// admission policy or webhook): not retried until the object or its inputs change.
    fn is_refused(&self) -> bool
    where
        Self: Sized,
    {
        crate::failures::is_refused(self)
    }
}

impl Failure for crate::Error {
    fn reason(&self) -> &'static str {
        crate::Error::reason(self)
    }

    fn is_conflict(&self) -> bool {
        crate::Error::is_conflict(self)
    }
}

/// How soon a conflict is read again; each conflict in a row doubles it.
const CONFLICT_RETRY: Duration = Duration::from_millis(50);
/// The longest pause after conflicts in a row: a cache that lags (its watch backing off after
/// an API server restart) would otherwise have the same stale write sent 20 times a second.
const MAX_CONFLICT_RETRY: Duration = Duration::from_secs(5);
/// The first pause after a failure; each failure in a row doubles it.
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// The longest pause between two tries of one object.
const MAX_RETRY: Duration = Duration::from_secs(60);
/// Objects remembered as failing before those not seen failing for a while are forgotten.
const REMEMBERED: usize = 4096;

#[derive(Debug, Clone)]
struct Failing {
    in_a_row: u32,
    conflicts_in_a_row: u32,
    last: Instant,
    /// The failure shown on the object (reason, message), if one is.
    shown: Option<(&'static str, String)>,
}

impl Failing {
    fn new(now: Instant) -> Self {
        Failing {
            in_a_row: 0,
            conflicts_in_a_row: 0,
            last: now,
            shown: None,
        }
    }
}

/// The error policy every controller shares: a failed object is tried again after a pause that
/// doubles with each failure in a row (1 s, 2 s, 4 s … up to 60 s), per object, and starts over
/// once it succeeds. A conflict is read again soon (50 ms, doubling with each conflict in a row
/// up to 5 s) and is not counted as a failure; a request the API
/// server refused (422, an admission denial) is not tried again until the object or its inputs
/// change. Each
/// failure is logged naming the object.
#[derive(Clone, Debug, Default)]
pub struct Retries {
    failing: Arc<Lock<HashMap<ObjectRef<DynamicObject>, Failing>>>,
}

impl Retries {
    /// Records that `object` failed with `error` in `controller`, logs it, and says when to try
    /// again.
    pub fn failed<K, E>(&self, controller: &str, object: &K, error: &E) -> Action
    where
        K: Resource,
        K::DynamicType: Default,
        E: Failure,
    {
        let key = ObjectRef::from_obj(object).erase();
        let conflict = error.is_conflict();
        let now = Instant::now();
        let in_a_row = {
            let mut failing = self.failing.lock();
            if failing.len() >= REMEMBERED {
                failing.retain(|_, f| now.duration_since(f.last) < 2 * MAX_RETRY);
            }
            let entry = failing.entry(key.clone()).or_insert_with(|| Failing::new(now));
            entry.last = now;
            let count = if conflict {
                &mut entry.conflicts_in_a_row
            } else {
                &mut entry.in_a_row
            };
            *count = count.saturating_add(1);
            *count
        };
        if conflict {
            let pause = doubled(CONFLICT_RETRY, in_a_row, MAX_CONFLICT_RETRY);
            tracing::debug!(controller, object = %key, error = %error, conflicts = in_a_row, retry_in = ?pause, "conflict; reading again");
            return Action::requeue(pause);
        }
        // A refusal is given again for the same request: wait for a change instead.
        let pause = (!error.is_refused()).then(|| backoff(in_a_row));
        tracing::warn!(
            controller,
            object = %key,
            reason = error.reason(),
            error = %error,
            failures = in_a_row,
            retry_in = ?pause,
            "{}",
            if pause.is_some() { "reconcile failed" } else { "reconcile refused by the API server; waiting for a change" }
        );
        pause.map_or_else(Action::await_change, Action::requeue)
    }

    /// Records that `object` reconciled: its next failure pauses briefly again. Says whether a
    /// failure of it was shown on it (and should now be cleared).
    pub fn succeeded<K>(&self, object: &K) -> bool
    where
        K: Resource,
        K::DynamicType: Default,
    {
        let key = ObjectRef::from_obj(object).erase();
        let mut failing = self.failing.lock();
        if failing.is_empty() {
            return false;
        }
        failing.remove(&key).is_some_and(|f| f.shown.is_some())
    }

    /// Records that `object` shows the failure `(reason, message)`; says whether it did not
    /// show it already (and so it is to be written).
    pub(crate) fn show<K>(&self, object: &K, reason: &'static str, message: &str) -> bool
    where
        K: Resource,
        K::DynamicType: Default,
    {
        let key = ObjectRef::from_obj(object).erase();
        let mut failing = self.failing.lock();
        let entry = failing.entry(key).or_insert_with(|| Failing::new(Instant::now()));
        if entry.shown.as_ref().is_some_and(|(r, m)| *r == reason && m == message) {
            return false;
        }
        entry.shown = Some((reason, message.to_owned()));
        true
    }

    /// Failures in a row of `object` so far.
    pub fn failures<K>(&self, object: &K) -> u32
    where
        K: Resource,
        K::DynamicType: Default,
    {
        let key = ObjectRef::from_obj(object).erase();
        self.failing.lock().get(&key).map_or(0, |f| f.in_a_row)
    }
}

/// The pause before the next try after `in_a_row` failures in a row.
fn backoff(in_a_row: u32) -> Duration {
    doubled(FIRST_RETRY, in_a_row, MAX_RETRY)
}

/// `first`, doubled for each of `in_a_row` after the first, at most `max`.
fn doubled(first: Duration, in_a_row: u32, max: Duration) -> Duration {
    let doublings = in_a_row.saturating_sub(1).min(16);
    first.saturating_mul(1 << doublings).min(max)
}

/// How long until `at`; zero if it is past.
pub fn until(at: impl Into<SystemTime>) -> Duration {
    at.into().duration_since(SystemTime::now()).unwrap_or(Duration::ZERO)
}

/// Reconcile again at `at` (at once if it is past).
pub fn requeue_at(at: impl Into<SystemTime>) -> Action {
    Action::requeue(until(at))
}

/// Reconcile again at `at` if there is one, otherwise only when something changes.
pub fn requeue_at_or_await<T: Into<SystemTime>>(at: Option<T>) -> Action {
    at.map_or_else(Action::await_change, requeue_at)
}

/// Runs one reconcile of `object` in `controller` inside a span naming the object (kind,
/// namespace, name, resourceVersion), records it in the context's metrics, resets its backoff
/// when it succeeds, and shows a repeated or refused failure on the object (see
/// [`crate::failures`]).
pub(crate) async fn reconcile<K, T, E>(
    context: &crate::Context,
    controller: &str,
    object: &K,
    work: impl Future<Output = Result<T, E>>,
) -> Result<T, E>
where
    K: Resource + serde::Serialize,
    K::DynamicType: Default,
    E: Failure,
{
    let meta = object.meta();
    let span = tracing::info_span!(
        "reconcile",
        controller,
        kind = %K::kind(&K::DynamicType::default()),
        namespace = meta.namespace.as_deref().unwrap_or_default(),
        name = meta.name.as_deref().unwrap_or_default(),
        resource_version = meta.resource_version.as_deref().unwrap_or_default(),
    );
    async {
        let started = Instant::now();
        let result = work.await;
        context.metrics.observe(
            controller,
            started.elapsed(),
            result.as_ref().err().map(Failure::reason),
        );
        match &result {
            Ok(_) => {
                let was_shown = context.retries.succeeded(object);
                crate::failures::clear(context, controller, object, was_shown).await;
            }
            // This failure is counted by the error policy, which runs next.
            Err(failure) if crate::failures::shown(failure, context.retries.failures(object) + 1) => {
                crate::failures::show(context, controller, object, failure).await;
            }
            Err(_) => {}
        }
        result
    }
    .instrument(span)
    .await
}

/// Drives the stream `Controller::run` returns, logging what it yields: each reconcile at debug
/// level, and at warn level each watch error (a missing permission to list or watch shows here,
/// retried with backoff) and each object the queue named but the cache did not hold. Failed
/// reconciles were logged by the error policy ([`Retries::failed`]) already.
pub async fn log_results<K, E>(
    controller: &str,
    results: impl Stream<Item = Result<(ObjectRef<K>, Action), ControllerError<E, watcher::Error>>>,
) where
    K: Resource,
    K::DynamicType: std::fmt::Debug,
    E: std::error::Error + 'static,
{
    results
        .for_each(|result| {
            match result {
                Ok((object, action)) => tracing::debug!(controller, object = %object.erase(), ?action, "reconciled"),
                Err(ControllerError::ReconcilerFailed(error, object)) => {
                    tracing::debug!(controller, %object, %error, "reconcile failed");
                }
                Err(ControllerError::ObjectNotFound(object)) => {
                    tracing::debug!(controller, %object, "queued object no longer cached");
                }
                Err(ControllerError::QueueError(error)) => {
                    tracing::warn!(controller, %error, "watch failed; retrying with backoff");
                }
                Err(ControllerError::RunnerError(error)) => {
                    tracing::error!(controller, %error, "controller runner failed");
                }
            }
            std::future::ready(())
        })
        .await;
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::ObjectMeta;

    use super::*;

    fn config_map(name: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                ..ObjectMeta::default()
            },
            ..ConfigMap::default()
        }
    }

    #[test]
    fn failures_back_off_per_object_up_to_a_ceiling_and_start_over_after_a_success() {
        let retries = Retries::default();
        let (a, b) = (config_map("a"), config_map("b"));
        let failure = crate::Error::Api {
            action: "writing".into(),
            source: kube::Error::TlsRequired,
        };
        for secs in [1, 2, 4, 8, 16, 32, 60, 60, 60] {
            assert_eq!(
                retries.failed("test", &a, &failure),
                Action::requeue(Duration::from_secs(secs))
            );
        }
        // Another object starts from the first pause.
        assert_eq!(retries.failed("test", &b, &failure), Action::requeue(FIRST_RETRY));
        retries.succeeded(&a);
        assert_eq!(retries.failures(&a), 0);
        assert_eq!(retries.failed("test", &a, &failure), Action::requeue(FIRST_RETRY));
        // A conflict is read again soon and does not count as a failure; conflicts in a row
        // (a cache lagging behind) back off to their own ceiling, and start over after a success.
        let conflict = crate::Error::Conflict("ConfigMap a".into());
        for millis in [50, 100, 200, 400, 800, 1600, 3200, 5000, 5000] {
            assert_eq!(
                retries.failed("test", &a, &conflict),
                Action::requeue(Duration::from_millis(millis))
            );
        }
        assert_eq!(retries.failures(&a), 1);
        retries.succeeded(&a);
        assert_eq!(retries.failed("test", &a, &conflict), Action::requeue(CONFLICT_RETRY));
    }

    #[test]
    fn a_refused_request_waits_for_a_change_and_is_shown_once() {
        let retries = Retries::default();
        let a = config_map("a");
        let refused = crate::Error::Api {
            action: "creating TaskRun r".into(),
            source: kube::Error::Api(kube::core::Status::failure("invalid", "Invalid").with_code(422).boxed()),
        };
        assert_eq!(retries.failed("test", &a, &refused), Action::await_change());
        assert!(retries.show(&a, "ApiError", "invalid"), "shown the first time");
        assert!(!retries.show(&a, "ApiError", "invalid"), "not written again");
        assert!(retries.show(&a, "ApiError", "other words"), "a new message is");
        assert!(retries.succeeded(&a), "a shown failure is to be cleared");
        assert!(!retries.succeeded(&a));
    }

    #[test]
    fn a_time_past_requeues_at_once() {
        let past = SystemTime::now() - Duration::from_secs(10);
        assert_eq!(until(past), Duration::ZERO);
        let soon = SystemTime::now() + Duration::from_secs(30);
        assert!(until(soon) > Duration::from_secs(25));
        assert_eq!(requeue_at(past), Action::requeue(Duration::ZERO));
        assert_eq!(requeue_at_or_await(None::<SystemTime>), Action::await_change());
    }
}
