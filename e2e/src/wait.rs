//! Waiting on a real system: poll with a deadline, never sleep and hope.

use std::future::Future;
use std::time::{Duration, Instant};

/// How long a test waits for something the control plane or a controller should do.
#[derive(Clone, Copy, Debug)]
pub struct Deadline(pub Duration);

impl Default for Deadline {
    fn default() -> Self {
        Deadline(Duration::from_secs(30))
    }
}

/// How often every helper here looks again.
const EVERY: Duration = Duration::from_millis(50);

/// What was awaited did not happen in time.
#[derive(Debug, thiserror::Error)]
#[error("timed out after {waited:?} waiting for {what}; last observed: {last}")]
pub struct TimedOut {
    /// What was awaited.
    pub what: String,
    /// How long.
    pub waited: Duration,
    /// The last observation `check` reported.
    pub last: String,
}

/// Polls `check` every 50 ms until it returns `Ok`, and returns that; after `deadline`, the
/// last observation (`check`'s `Err`) as [`TimedOut`]. The one polling loop of the tests and
/// their harness: [`poll_until`] panics with it, library code returns it.
pub async fn until<T, F, Fut>(what: &str, deadline: Deadline, check: F) -> Result<T, TimedOut>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    until_every(what, deadline, EVERY, check).await
}

/// [`until`], looking every `every`: for a benchmark timing what it waits for.
pub async fn until_every<T, F, Fut>(
    what: &str,
    deadline: Deadline,
    every: Duration,
    mut check: F,
) -> Result<T, TimedOut>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    let mut last = String::from("not checked yet");
    while start.elapsed() < deadline.0 {
        match check().await {
            Ok(value) => return Ok(value),
            Err(observed) => last = observed,
        }
        tokio::time::sleep(every).await;
    }
    Err(TimedOut {
        what: what.to_owned(),
        waited: deadline.0,
        last,
    })
}

/// Polls `check` every 50 ms until it returns `Ok`, or panics with `what` and the last
/// observation after `deadline`.
pub async fn poll_until<T, F, Fut>(what: &str, deadline: Deadline, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    match until(what, deadline, check).await {
        Ok(value) => value,
        Err(timed_out) => panic!("{timed_out}"),
    }
}

/// Checks every 50 ms for all of `window` that `check` still holds, and panics with `what` and
/// the observation the first time it does not: for "nothing happens for N s", where there is no
/// event to wait for, only a time in which one must not come.
pub async fn stays<F, Fut>(what: &str, window: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let start = Instant::now();
    loop {
        if let Err(observed) = check().await {
            panic!("{what} stopped holding after {:?}: {observed}", start.elapsed());
        }
        if start.elapsed() >= window {
            return;
        }
        tokio::time::sleep(EVERY).await;
    }
}

/// The `Ready` condition of a hierarchy object, read fresh.
pub async fn ready_condition<K>(api: &kube::Api<K>, name: &str) -> Result<(String, String, String), String>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + serde::Serialize,
{
    let object = api.get(name).await.map_err(|e| e.to_string())?;
    let value = serde_json::to_value(&object).map_err(|e| e.to_string())?;
    let conditions: Vec<crd_types::common::Condition> =
        serde_json::from_value(value["status"]["conditions"].clone()).unwrap_or_default();
    crd_types::common::find_condition(&conditions, crd_types::common::CONDITION_READY)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
        .ok_or_else(|| "no Ready condition yet".to_owned())
}

/// Waits until `name` is Ready.
pub async fn wait_ready<K>(api: &kube::Api<K>, name: &str)
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + serde::Serialize,
{
    poll_until(
        &format!("{} {name} Ready", K::kind(&())),
        // A whole tree: namespaces, the Gateway API CRDs, pods.
        Deadline(std::time::Duration::from_secs(120)),
        || async {
            match ready_condition(api, name).await? {
                (status, _, _) if status == "True" => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
}

/// Waits until `name` is not Ready for `reason`; returns the message.
pub async fn wait_not_ready<K>(api: &kube::Api<K>, name: &str, reason: &str) -> String
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + serde::Serialize,
{
    poll_until(
        &format!("{} {name} not Ready: {reason}", K::kind(&())),
        Deadline::default(),
        || async {
            match ready_condition(api, name).await? {
                (status, r, message) if status == "False" && r == reason => Ok(message),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await
}

/// Waits until `name` no longer exists.
pub async fn wait_gone<K>(api: &kube::Api<K>, name: &str)
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    poll_until(
        &format!("{} {name} gone", K::kind(&())),
        // The garbage collector and namespace deletion take their time.
        Deadline(std::time::Duration::from_secs(150)),
        || async {
            match api.get_opt(name).await.map_err(|e| e.to_string())? {
                None => Ok(()),
                Some(_) => Err("still there".to_owned()),
            }
        },
    )
    .await;
}

/// The notes of the Warning Events with `reason` about `name`, once there are `count`.
pub async fn warnings_for(env: &crate::TestEnv, name: &str, reason: &str, count: usize) -> Vec<String> {
    poll_until(
        &format!("{count} {reason} Event(s) about {name}"),
        Deadline::default(),
        || async {
            let events = env
                .namespaced::<k8s_openapi::api::events::v1::Event>()
                .list(&kube::api::ListParams::default())
                .await
                .map_err(|e| e.to_string())?;
            let notes: Vec<String> = events
                .items
                .into_iter()
                .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
                .filter(|e| e.reason.as_deref() == Some(reason) && e.type_.as_deref() == Some("Warning"))
                .map(|e| e.note.unwrap_or_default())
                .collect();
            if notes.len() >= count {
                Ok(notes)
            } else {
                Err(format!("{notes:?}"))
            }
        },
    )
    .await
}
