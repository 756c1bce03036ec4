//! Publishing Events (`events.k8s.io/v1`) as a controller.
//!
//! Like kube's recorder, a repeat of an event (same object, type, reason and action) within a
//! few minutes is counted on the first Event's `series` instead of written anew. Unlike it,
//! only a hash of the event and the first Event's name are remembered, not the whole Event: a
//! controller that has just published thousands of Events holds a few hundred KiB, not MiBs.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event as K8sEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Patch, PatchParams, PostParams};
pub use kube::runtime::events::{Event, EventType};
use kube::{Api, Client};
use serde_json::json;

use crate::lock::Lock;

/// How long a published Event takes repeats into its series.
const SERIES_WINDOW: SignedDuration = SignedDuration::from_mins(6);

/// Publishes Events as one controller instance. Clones share their memory of series.
#[derive(Clone)]
pub struct Recorder {
    client: Client,
    controller: String,
    instance: String,
    /// Hash of (object, type, reason, action, related) → the series it counts into.
    series: Arc<Lock<HashMap<u64, Series>>>,
}

struct Series {
    namespace: Option<String>,
    name: String,
    count: i32,
    last: Timestamp,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("controller", &self.controller)
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

impl Recorder {
    /// A recorder reporting as `controller` (the Event's `reportingController`) and
    /// `instance` (its `reportingInstance`, e.g. the pod).
    pub fn new(client: Client, controller: &str, instance: String) -> Self {
        Recorder {
            client,
            controller: controller.to_owned(),
            instance,
            series: Arc::default(),
        }
    }

    /// Publishes a `Warning` (or `Normal`) event about `regarding` with [`publish`], and logs
    /// rather than returns a failure: an Event is never worth failing a reconcile for.
    ///
    /// [`publish`]: Recorder::publish
    pub async fn publish_or_log(
        &self,
        regarding: &ObjectReference,
        warning: bool,
        reason: &str,
        note: String,
        action: &str,
    ) {
        let event = Event {
            type_: if warning { EventType::Warning } else { EventType::Normal },
            reason: reason.to_owned(),
            note: Some(note),
            action: action.to_owned(),
            secondary: None,
        };
        if let Err(err) = self.publish(&event, regarding).await {
            tracing::warn!(
                object = ?regarding.name,
                namespace = ?regarding.namespace,
                reason,
                error = %err,
                "could not publish an Event"
            );
        }
    }

    /// Publishes `event` about `regarding`, in its namespace (`default` for cluster-scoped
    /// objects), or counts it on the same event published within the last few minutes.
    ///
    /// # Errors
    ///
    /// When the API server refuses the write (the caller logs it; an Event is never worth
    /// failing a reconcile for).
    pub async fn publish(&self, event: &Event, regarding: &ObjectReference) -> Result<(), kube::Error> {
        let now = Timestamp::now();
        let key = series_key(event, regarding);
        let repeat = {
            let mut series = self.series.lock();
            series.retain(|_, s| s.last + SERIES_WINDOW > now);
            series.get_mut(&key).map(|s| {
                s.count += 1;
                s.last = now;
                (s.namespace.clone(), s.name.clone(), s.count)
            })
        };
        if let Some((namespace, name, count)) = repeat {
            let api: Api<K8sEvent> = Api::namespaced(self.client.clone(), namespace.as_deref().unwrap_or("default"));
            let patch = json!({"series": {"count": count, "lastObservedTime": MicroTime(now)}});
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
            return Ok(());
        }
        let name = event_name(
            regarding.name.as_deref().unwrap_or(&self.controller),
            now.as_nanosecond(),
        );
        let k8s_event = K8sEvent {
            action: Some(event.action.clone()),
            reason: Some(event.reason.clone()),
            event_time: Some(MicroTime(now)),
            regarding: Some(regarding.clone()),
            note: event.note.as_deref().map(within_note_limit),
            metadata: ObjectMeta {
                namespace: regarding.namespace.clone(),
                name: Some(name.clone()),
                ..ObjectMeta::default()
            },
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            type_: Some(
                match event.type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .into(),
            ),
            related: event.secondary.clone(),
            ..K8sEvent::default()
        };
        let namespace = regarding.namespace.clone();
        let api: Api<K8sEvent> = Api::namespaced(self.client.clone(), namespace.as_deref().unwrap_or("default"));
        api.create(&PostParams::default(), &k8s_event).await?;
        self.series.lock().insert(
            key,
            Series {
                namespace,
                name,
                count: 1,
                last: now,
            },
        );
        Ok(())
    }
}

/// `<object>.<time in hex>`, as kubectl's Events are named, within the 253 characters of a
/// name: an object's name may take all of them, so it is cut (where it still ends in a letter
/// or digit) rather than the Event refused.
fn event_name(object: &str, nanos: i128) -> String {
    const MAX_NAME: usize = 253;
    let suffix = format!(".{nanos:x}");
    let mut end = object.len().min(MAX_NAME.saturating_sub(suffix.len()));
    while !object.is_char_boundary(end) {
        end -= 1;
    }
    let prefix = object[..end].trim_end_matches(['.', '-']);
    format!("{prefix}{suffix}")
}

/// The API server refuses a note over 1 KiB: longer ones are cut, on a character boundary.
fn within_note_limit(note: &str) -> String {
    const LIMIT: usize = 1024;
    let mut end = note.len().min(LIMIT);
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    note[..end].to_owned()
}

fn series_key(event: &Event, regarding: &ObjectReference) -> u64 {
    let mut hasher = DefaultHasher::new();
    let reference = |r: &ObjectReference, h: &mut DefaultHasher| {
        (&r.api_version, &r.kind, &r.namespace, &r.name, &r.uid).hash(h);
    };
    reference(regarding, &mut hasher);
    if let Some(related) = &event.secondary {
        reference(related, &mut hasher);
    }
    (matches!(event.type_, EventType::Warning), &event.reason, &event.action).hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(reason: &str, note: &str) -> Event {
        Event {
            type_: EventType::Normal,
            reason: reason.into(),
            note: Some(note.into()),
            action: "Reconcile".into(),
            secondary: None,
        }
    }

    fn object(name: &str) -> ObjectReference {
        ObjectReference {
            kind: Some("Task".into()),
            name: Some(name.into()),
            namespace: Some("ns".into()),
            uid: Some(format!("uid-{name}")),
            ..ObjectReference::default()
        }
    }

    #[test]
    fn event_names_fit_whatever_the_object_name() {
        let nanos = 1_798_000_000_000_000_000_i128;
        assert_eq!(event_name("web", nanos), format!("web.{nanos:x}"));
        let long = "i".repeat(253);
        let name = event_name(&long, nanos);
        assert_eq!(name.len(), 253);
        assert!(name.ends_with(&format!(".{nanos:x}")), "{name}");
        let dotted = format!("{}.{}", "a".repeat(235), "b".repeat(17));
        let name = event_name(&dotted, nanos);
        assert!(!name.contains(".."), "{name}");
    }

    #[test]
    fn long_notes_are_cut_to_the_limit_on_a_character_boundary() {
        assert_eq!(within_note_limit("short"), "short");
        let long = "é".repeat(600);
        let cut = within_note_limit(&long);
        assert!(cut.len() <= 1024 && cut.len() > 1020);
        assert!(long.starts_with(&cut));
    }

    #[test]
    fn repeats_share_a_key_whatever_the_note() {
        assert_eq!(
            series_key(&event("Started", "run 1"), &object("a")),
            series_key(&event("Started", "run 2"), &object("a"))
        );
    }

    #[test]
    fn other_objects_and_reasons_are_other_series() {
        let key = series_key(&event("Started", "x"), &object("a"));
        assert_ne!(key, series_key(&event("Started", "x"), &object("b")));
        assert_ne!(key, series_key(&event("Failed", "x"), &object("a")));
    }
}
