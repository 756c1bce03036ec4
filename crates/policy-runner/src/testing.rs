//! Builders for unit tests of policies.

use crd_types::common::Parameters;
use crd_types::hierarchy::VersionWeight;
use jiff::Timestamp;
use serde_json::Value;

use crate::observed::{Observed, ObservedVersion};
use crate::policy::{Answer, Control, Failure, Outcome, Policy, Step};

/// Seconds after a fixed instant.
pub fn at(seconds: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + seconds).expect("a valid instant")
}

/// Parameters from JSON.
pub fn params(value: Value) -> Parameters {
    serde_json::from_value(value).expect("parameters are an object")
}

/// An Application `shop` with versions `(name, replicas, ready)` and these weights in force.
pub fn observed(versions: &[(&str, i32, i32)], weights: &[(&str, i32)]) -> Observed {
    Observed {
        application: "shop".into(),
        namespace: "team-a".into(),
        generation: 1,
        versions: versions
            .iter()
            .map(|(name, replicas, ready)| ObservedVersion {
                name: (*name).into(),
                revision: format!("rev-{name}"),
                replicas: *replicas,
                ready_replicas: *ready,
                restarts: 0,
            })
            .collect(),
        weights: weights
            .iter()
            .map(|(version, weight)| VersionWeight {
                version: (*version).into(),
                weight: *weight,
            })
            .collect(),
        ..Observed::default()
    }
}

/// Runs `policy` with the weights in force as its input.
pub fn run(
    policy: &dyn Policy,
    observed: &Observed,
    state: Option<&Value>,
    now: Timestamp,
) -> Result<Outcome, Failure> {
    run_with(policy, observed, state, now, false, false)
}

/// [`run`] with a promote or abort.
pub fn run_with(
    policy: &dyn Policy,
    observed: &Observed,
    state: Option<&Value>,
    now: Timestamp,
    promote: bool,
    abort: bool,
) -> Result<Outcome, Failure> {
    let input = crd_types::hierarchy::TrafficDocument {
        weights: observed.weights.clone(),
        ..Default::default()
    };
    answer(policy, &input, observed, state, now, Control { promote, abort }, None)
}

/// Runs `policy` on `input` with `answer` to what it needs.
pub fn answer(
    policy: &dyn Policy,
    input: &crd_types::hierarchy::TrafficDocument,
    observed: &Observed,
    state: Option<&Value>,
    now: Timestamp,
    control: Control,
    answer: Option<Answer>,
) -> Result<Outcome, Failure> {
    let step = Step {
        input,
        observed,
        state,
        now,
        control,
    };
    policy.run(&step, answer)
}
