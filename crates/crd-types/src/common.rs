//! Types shared by several kinds.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, MicroTime, Time};
use k8s_openapi::jiff::{Timestamp, Unit};

/// The condition every Orrery kind carries: is the object doing what its spec asks?
pub const CONDITION_READY: &str = "Ready";

/// The category every Orrery kind belongs to: `kubectl get orrery` lists them all.
pub const CATEGORY: &str = "orrery";

/// Free-form plugin parameters: each plugin declares and validates its own.
pub type Parameters = BTreeMap<String, serde_json::Value>;

/// A named plugin with its parameters: an executor, a policy, or a task action.
///
/// The name selects the implementation from the registry of the controller that claims it;
/// the parameters are checked against what that implementation declares.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PluginRef {
    /// Name of the plugin, e.g. `canary` or `http-post`.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-zA-Z0-9]([-a-zA-Z0-9_.]*[a-zA-Z0-9])?$")
    )]
    pub name: String,
    /// Plugin-specific parameters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::free_form_object")]
    pub parameters: Option<Parameters>,
}

impl PluginRef {
    /// A plugin reference with no parameters.
    pub fn named(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            parameters: None,
        }
    }
}

/// A reference to one key of a Secret.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Namespace of the Secret; defaults to the referring object's namespace where it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub namespace: Option<String>,
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key within the Secret's data.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// A `Time` as the API server stores it: whole seconds. Planning with the stored precision
/// keeps a re-read status equal to the planned one, so nothing is rewritten in a loop.
pub fn seconds(at: Timestamp) -> Time {
    Time(at.round(jiff_trunc(Unit::Second)).unwrap_or(at))
}

/// A `MicroTime` as stored: whole microseconds.
pub fn micros(at: Timestamp) -> MicroTime {
    MicroTime(at.round(jiff_trunc(Unit::Microsecond)).unwrap_or(at))
}

fn jiff_trunc(unit: Unit) -> k8s_openapi::jiff::TimestampRound {
    k8s_openapi::jiff::TimestampRound::new()
        .smallest(unit)
        .mode(k8s_openapi::jiff::RoundMode::Trunc)
}

/// Sets condition `type_` in `conditions`, keeping its `lastTransitionTime` when its status did
/// not change, so writing the same condition again changes nothing (steady state: no writes).
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
    observed_generation: Option<i64>,
    now: Time,
) {
    let status = if status { "True" } else { "False" };
    let message = message.into();
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(existing) => {
            if existing.status != status {
                existing.last_transition_time = now;
            }
            existing.status = status.into();
            existing.reason = reason.into();
            existing.message = message;
            existing.observed_generation = observed_generation;
        }
        None => conditions.push(Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message,
            observed_generation,
            last_transition_time: now,
        }),
    }
}

/// The condition `type_`, if present.
pub fn find_condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(seconds).expect("in range"))
    }

    #[test]
    fn stored_precision_round_trips() {
        let at: Timestamp = "2026-01-01T00:00:05.987654321Z".parse().unwrap();
        let time = seconds(at);
        let json = serde_json::to_value(&time).unwrap();
        assert_eq!(serde_json::from_value::<Time>(json).unwrap(), time);
        let micro = micros(at);
        let json = serde_json::to_value(&micro).unwrap();
        assert_eq!(json, serde_json::json!("2026-01-01T00:00:05.987654Z"));
        assert_eq!(serde_json::from_value::<MicroTime>(json).unwrap(), micro);
    }

    #[test]
    fn a_condition_keeps_its_transition_time_until_its_status_changes() {
        let mut conditions = Vec::new();
        set_condition(
            &mut conditions,
            CONDITION_READY,
            true,
            "Scheduled",
            "a",
            Some(1),
            at(10),
        );
        set_condition(
            &mut conditions,
            CONDITION_READY,
            true,
            "Scheduled",
            "b",
            Some(2),
            at(20),
        );
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0].last_transition_time, at(10));
        assert_eq!(conditions[0].message, "b");
        set_condition(
            &mut conditions,
            CONDITION_READY,
            false,
            "InvalidSchedule",
            "c",
            Some(3),
            at(30),
        );
        assert_eq!(conditions[0].last_transition_time, at(30));
        assert_eq!(
            find_condition(&conditions, CONDITION_READY).map(|c| c.status.as_str()),
            Some("False")
        );
    }
}
