//! What every controller's I/O repeats: writing status with server-side apply under a
//! resourceVersion precondition, deleting what may be gone already, and one error type for
//! these requests (each controller wraps it in its own, see [`crate::Failure`]).

use std::time::Duration;

use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object changed between our read and our write; it is read again.
    #[error("{0} changed while being written; retrying")]
    Conflict(String),
    /// The API server refused a request.
    #[error("{action}: {source}")]
    Api {
        /// What was being done.
        action: String,
        /// The server's answer.
        #[source]
        source: kube::Error,
    },
}

impl Error {
    /// Stable reason for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Conflict(_) => "Conflict",
            Error::Api { .. } => "ApiError",
        }
    }

    /// Whether the object changed between our read and our write (read it again at once).
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Conflict(_))
    }

    /// Wraps a failed request, saying what was being done.
    pub fn api(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
        let action = action.into();
        move |source| Error::Api { action, source }
    }

    /// Conflicts are read again at once; other failures after a pause. A fixed pause: prefer
    /// [`crate::Context::error_policy`], which backs off per object and names it in the log.
    pub fn requeue(&self) -> Action {
        match self {
            Error::Conflict(_) => Action::requeue(Duration::from_millis(50)),
            Error::Api { .. } => Action::requeue(Duration::from_secs(5)),
        }
    }
}

/// A 404: the object is already gone, which is what a delete wanted.
pub fn is_not_found(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(status) if status.code == 404)
}

/// Deletes `name` through `api` with `params`: an object already gone (404) is what a delete
/// wanted, so it succeeds and says `false`. A failed precondition (someone else's object under
/// that name now) is a [`Error::Conflict`].
pub async fn delete_if_exists<K>(api: &Api<K>, name: &str, params: &DeleteParams) -> Result<bool, Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, params).await {
        Ok(_) => Ok(true),
        Err(err) if is_not_found(&err) => Ok(false),
        Err(kube::Error::Api(status)) if status.code == 409 => Err(Error::Conflict(format!("{} {name}", K::kind(&())))),
        Err(source) => Err(Error::Api {
            action: format!("deleting {} {name}", K::kind(&())),
            source,
        }),
    }
}

/// Writes `status` of `object` with server-side apply as `manager`, only if the object is
/// still the one we read (its resourceVersion): two writers can never both act on one state.
/// Returns the object as written.
pub async fn apply_status<K>(api: &Api<K>, manager: &str, object: &K, status: &impl Serialize) -> Result<K, Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let patch = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "metadata": {"resourceVersion": object.resource_version()},
        "status": crate::failures::without_failure_condition(serde_json::to_value(status).map_err(|e| Error::Api {
            action: format!("encoding the status of {} {}", K::kind(&()), object.name_any()),
            source: kube::Error::SerdeError(e),
        })?),
    });
    let name = object.name_any();
    match api
        .patch_status(&name, &PatchParams::apply(manager).force(), &Patch::Apply(&patch))
        .await
    {
        Ok(written) => Ok(written),
        Err(kube::Error::Api(status)) if status.code == 409 => Err(Error::Conflict(format!("{} {name}", K::kind(&())))),
        Err(source) => Err(Error::Api {
            action: format!("writing the status of {} {name}", K::kind(&())),
            source,
        }),
    }
}

/// Whether `object` carries `finalizer`.
pub fn has_finalizer(object: &impl Resource, finalizer: &str) -> bool {
    object.meta().finalizers.iter().flatten().any(|f| f == finalizer)
}

/// Adds `finalizer` to `object` (no-op when present) or removes it, under the resourceVersion
/// we read: a list written whole must not drop another controller's entry added meanwhile.
pub async fn set_finalizer<K>(api: &Api<K>, object: &K, finalizer: &str, present: bool) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    if has_finalizer(object, finalizer) == present {
        return Ok(());
    }
    let mut finalizers: Vec<&str> = object
        .meta()
        .finalizers
        .iter()
        .flatten()
        .map(String::as_str)
        .filter(|f| *f != finalizer)
        .collect();
    if present {
        finalizers.push(finalizer);
    }
    let patch = json!({"metadata": {"finalizers": finalizers, "resourceVersion": object.resource_version()}});
    let name = object.name_any();
    match api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => Err(Error::Conflict(format!("{} {name}", K::kind(&())))),
        // Gone already: nothing left to hold.
        Err(err) if is_not_found(&err) => Ok(()),
        Err(source) => Err(Error::Api {
            action: format!("updating the finalizers of {} {name}", K::kind(&())),
            source,
        }),
    }
}
