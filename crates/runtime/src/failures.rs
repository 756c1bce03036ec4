//! A failing reconcile shows on the object it concerns, not only in the log: a
//! `ReconcileFailed` condition (the failure's reason, the server's words) and a Warning Event,
//! once a failure repeats or the API server refused the request outright; the condition goes
//! when a reconcile succeeds again.
//!
//! The condition is written with server-side apply under a field manager of its own, so the
//! controller's status writes (which [`crate::apply_status`] keeps from ever carrying it) neither
//! own nor remove it.

use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use kube::{Api, Resource};
use serde::Serialize;
use serde_json::{Value, json};

use crate::Context;
use crate::reconcile::Failure;

/// The condition type a repeated or refused failure shows as.
pub const RECONCILE_FAILED: &str = "ReconcileFailed";

/// Failures in a row after which a failure that will be retried shows on its object: one alone
/// is usually a passing moment (a restart of the API server, a slow webhook).
const SHOWN_AFTER: u32 = 2;

/// The longest message a condition or Event carries: the server's words, cut at a character.
const MESSAGE_BYTES: usize = 1024;

/// Whether `failure`, the `in_a_row`-th failure of its object, shows on it.
pub(crate) fn shown(failure: &impl Failure, in_a_row: u32) -> bool {
    !failure.is_conflict() && (failure.is_refused() || in_a_row >= SHOWN_AFTER)
}

/// The field manager of `controller`'s failure conditions.
fn manager(controller: &str) -> String {
    format!("{controller}-failures")
}

/// `message` cut to at most `max` bytes at a character boundary, marked when cut.
pub fn within_bytes(message: &str, max: usize) -> String {
    if message.len() <= max {
        return message.to_owned();
    }
    const MARK: &str = " …";
    let mut end = max.saturating_sub(MARK.len());
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{MARK}", &message[..end])
}

/// The `ReconcileFailed` condition `object` shows now, as `(reason, message)`.
fn shown_condition(object: &impl Serialize) -> Option<(String, String)> {
    let value = serde_json::to_value(object).ok()?;
    let conditions = value.pointer("/status/conditions")?.as_array()?;
    let condition = conditions.iter().find(|c| c["type"] == RECONCILE_FAILED)?;
    Some((
        condition["reason"].as_str().unwrap_or_default().to_owned(),
        condition["message"].as_str().unwrap_or_default().to_owned(),
    ))
}

/// Removes every `ReconcileFailed` condition from a status about to be written by its
/// controller, so that controller never takes it over from the failure manager.
pub(crate) fn without_failure_condition(mut status: Value) -> Value {
    if let Some(conditions) = status.get_mut("conditions").and_then(Value::as_array_mut) {
        conditions.retain(|c| c["type"] != RECONCILE_FAILED);
    }
    status
}

fn api_for<K>(context: &Context, object: &K) -> Api<DynamicObject>
where
    K: Resource,
    K::DynamicType: Default,
{
    let resource = ApiResource::erase::<K>(&K::DynamicType::default());
    match object.meta().namespace.as_deref() {
        Some(namespace) => Api::namespaced_with(context.client.clone(), namespace, &resource),
        None => Api::all_with(context.client.clone(), &resource),
    }
}

/// Shows `failure` on `object` (unless it shows that already) and publishes a Warning Event.
/// A write that fails is logged: the failure is in the log and the metrics either way.
pub(crate) async fn show<K, E>(context: &Context, controller: &str, object: &K, failure: &E)
where
    K: Resource + Serialize,
    K::DynamicType: Default,
    E: Failure,
{
    let reason = failure.reason();
    let message = within_bytes(&failure.to_string(), MESSAGE_BYTES);
    // Known shown when this process showed it, or when the object (if its status is cached)
    // shows it.
    let on_object = shown_condition(object).is_some_and(|(r, m)| r == reason && m == message);
    if !context.retries.show(object, reason, &message) || on_object {
        return;
    }
    let dynamic = K::DynamicType::default();
    let name = object.meta().name.clone().unwrap_or_default();
    let mut condition = json!({
        "type": RECONCILE_FAILED,
        "status": "True",
        "reason": reason,
        "message": message,
        "lastTransitionTime": k8s_openapi::jiff::Timestamp::now(),
    });
    if let Some(generation) = object.meta().generation {
        condition["observedGeneration"] = generation.into();
    }
    let patch = json!({
        "apiVersion": K::api_version(&dynamic),
        "kind": K::kind(&dynamic),
        "metadata": {"name": name},
        "status": {"conditions": [condition]},
    });
    let params = PatchParams::apply(&manager(controller)).force();
    if let Err(error) = api_for(context, object)
        .patch_status(&name, &params, &Patch::Apply(&patch))
        .await
    {
        tracing::warn!(controller, name, %error, "could not show a failing reconcile on its object");
    }
    let note = if failure.is_refused() {
        format!("{message} (refused by the API server: not retried until the object or its inputs change)")
    } else {
        message
    };
    let reference = object.object_ref(&dynamic);
    context
        .recorder
        .publish_or_log(&reference, true, RECONCILE_FAILED, note, "Reconcile")
        .await;
}

/// After a successful reconcile: removes the `ReconcileFailed` condition `object` shows (as
/// its cached status says, or as this process `was_shown` it: a cache of metadata only has no
/// status), by applying nothing under the manager that wrote it.
pub(crate) async fn clear<K>(context: &Context, controller: &str, object: &K, was_shown: bool)
where
    K: Resource + Serialize,
    K::DynamicType: Default,
{
    if !was_shown && shown_condition(object).is_none() {
        return;
    }
    let dynamic = K::DynamicType::default();
    let name = object.meta().name.clone().unwrap_or_default();
    let patch = json!({
        "apiVersion": K::api_version(&dynamic),
        "kind": K::kind(&dynamic),
        "metadata": {"name": name},
    });
    let params = PatchParams::apply(&manager(controller)).force();
    if let Err(error) = api_for(context, object)
        .patch_status(&name, &params, &Patch::Apply(&patch))
        .await
    {
        tracing::warn!(controller, name, %error, "could not clear a failing reconcile's condition");
    }
}

/// Whether `error`, or an error it wraps, is the API server refusing a request it will refuse
/// again until the object changes: 422 (invalid), or 403 from an admission policy or webhook.
/// Any other 403 comes and goes without the object changing (RBAC granted later, or not yet
/// loaded by an API server just restarted; a quota raised; a namespace's deletion ending), so
/// it is retried with backoff.
pub fn is_refused(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(kube::Error::Api(status)) = error.downcast_ref::<kube::Error>() {
            return match status.code {
                422 => true,
                403 => is_admission_denial(&status.message),
                _ => false,
            };
        }
        next = error.source();
    }
    false
}

/// How the API server words a denial by a ValidatingAdmissionPolicy (`... denied request: ...`)
/// or an admission webhook (`admission webhook "x" denied the request`).
fn is_admission_denial(message: &str) -> bool {
    message.contains("denied request") || message.contains("denied the request")
}

/// How RBAC words a refusal: `User "x" cannot create resource "pods" ...`.
pub fn is_rbac_denial(message: &str) -> bool {
    message.contains(" cannot ") && message.contains(" resource ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error_saying(code: u16, message: &str) -> crate::Error {
        crate::Error::Api {
            action: "creating TaskRun x".into(),
            source: kube::Error::Api(kube::core::Status::failure(message, "Invalid").with_code(code).boxed()),
        }
    }

    fn api_error(code: u16) -> crate::Error {
        api_error_saying(code, "is invalid")
    }

    #[test]
    fn refusals_are_found_through_the_errors_they_are_wrapped_in() {
        assert!(is_refused(&api_error(422)));
        assert!(is_refused(&api_error_saying(
            403,
            "taskruns.workflow.orrery.dev \"x\" is forbidden: ValidatingAdmissionPolicy 'freeze' with binding 'freeze' denied request: frozen"
        )));
        assert!(is_refused(&api_error_saying(
            403,
            "admission webhook \"policy.example\" denied the request: no"
        )));
        assert!(!is_refused(&api_error(500)));
        assert!(!is_refused(&api_error(429)));
        assert!(!is_refused(&crate::Error::Conflict("x".into())));
    }

    #[test]
    fn a_403_that_can_pass_without_the_object_changing_is_retried() {
        for message in [
            "taskruns.workflow.orrery.dev \"x\" is forbidden: User \"orrery\" cannot patch resource \"taskruns/status\" in API group \"workflow.orrery.dev\"",
            "pods \"x\" is forbidden: exceeded quota: team, requested: pods=1, used: pods=10, limited: pods=10",
            "pods \"x\" is forbidden: unable to create new content in namespace team because it is being terminated",
        ] {
            assert!(!is_refused(&api_error_saying(403, message)), "{message}");
        }
    }

    #[test]
    fn a_failure_shows_when_it_repeats_or_is_refused_never_a_conflict() {
        assert!(!shown(&api_error(500), 1));
        assert!(shown(&api_error(500), 2));
        assert!(shown(&api_error(422), 1));
        assert!(!shown(&crate::Error::Conflict("x".into()), 5));
    }

    #[test]
    fn long_messages_are_cut_at_a_character() {
        assert_eq!(within_bytes("short", 10), "short");
        let cut = within_bytes(&"é".repeat(100), 11);
        assert!(cut.len() <= 11 && cut.ends_with(" …"), "{cut}");
        assert_eq!(cut, "ééé …");
    }

    #[test]
    fn a_controllers_status_never_carries_the_failure_condition() {
        let status = json!({"conditions": [{"type": "Ready"}, {"type": RECONCILE_FAILED}], "x": 1});
        assert_eq!(
            without_failure_condition(status),
            json!({"conditions": [{"type": "Ready"}], "x": 1})
        );
    }
}
