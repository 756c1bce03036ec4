//! Arbitrary parameters for every built-in policy of policy-runner and every executor of
//! hierarchy-executor. Parsing refuses bad ones with a message; what it accepts then runs a
//! step on an arbitrary observed Application (or spec document). Nothing may panic or run
//! for long.
//!
//! Input: a JSON object `{"policy": NAME, "parameters": {...}, "observed": {...},
//! "input": {...}, "state": ..., "answer": ..., "now": SECONDS, "promote": BOOL,
//! "abort": BOOL}`, every field optional. Without `policy`, every policy is tried.

#![no_main]

use crd_types::common::{Parameters, PluginRef};
use crd_types::hierarchy::TrafficDocument;
use hierarchy_executor::registry::Kind;
use jiff::Timestamp;
use libfuzzer_sys::fuzz_target;
use policy_runner::document::{SpecDocument, SpecObserved};
use policy_runner::observed::Observed;
use policy_runner::policy::{Control, Document, Step};
use serde_json::{Map, Value};

const EPOCH: i64 = 1_767_225_600; // 2026-01-01T00:00:00Z

fn field<T: serde::de::DeserializeOwned + Default>(input: &Map<String, Value>, name: &str) -> T {
    input
        .get(name)
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default()
}

fn step<D: Document>(
    parse: policy_runner::registry::Parse<D>,
    parameters: &Parameters,
    input: &D,
    observed: &D::Observed,
    state: Option<&Value>,
    answer: Option<&Value>,
    now: Timestamp,
    control: Control,
) {
    let Ok(policy) = parse(parameters) else {
        return;
    };
    let step = Step {
        input,
        observed,
        state,
        now,
        control,
    };
    let fetched = policy
        .needs(&step)
        .map(|_request| answer.cloned().ok_or_else(|| "no answer".to_owned()));
    if let Ok(outcome) = policy.run(&step, fetched) {
        let _ = outcome.output.check(observed);
        let _ = outcome.output.describe();
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(Value::Object(input)) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let parameters: Parameters = field(&input, "parameters");
    let now = input
        .get("now")
        .and_then(Value::as_i64)
        .and_then(|offset| EPOCH.checked_add(offset))
        .and_then(|s| Timestamp::from_second(s).ok())
        .unwrap_or_else(|| Timestamp::from_second(EPOCH).expect("2026"));
    let control = Control {
        promote: input.get("promote").and_then(Value::as_bool).unwrap_or(false),
        abort: input.get("abort").and_then(Value::as_bool).unwrap_or(false),
    };
    let state = input.get("state");
    let answer = input.get("answer");
    let named = input.get("policy").and_then(Value::as_str);

    // hierarchy-executor: the executor's parameters, for every kind, by any name.
    let registry = hierarchy_executor::registry::Registry::builtin();
    let reference = PluginRef {
        name: named.unwrap_or("default").to_owned(),
        parameters: Some(parameters.clone()),
    };
    for kind in [Kind::Project, Kind::Cluster, Kind::VirtualCluster, Kind::Application] {
        let _ = registry.claim(kind, Some(&reference));
    }

    // policy-runner: each built-in policy, on traffic and on spec documents.
    let observed: Observed = field(&input, "observed");
    let traffic: TrafficDocument = input
        .get("input")
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_else(|| TrafficDocument {
            weights: observed.weights.clone(),
            ..TrafficDocument::default()
        });
    let spec: SpecDocument = field(&input, "input");
    let spec_observed = SpecObserved {
        kind: "VirtualCluster",
        name: observed.application.clone(),
        generation: observed.generation,
        in_force: Some(spec.clone()),
        conditions: Vec::new(),
        fits: |_| Ok(()),
    };
    let policies = policy_runner::registry::Registry::builtin();
    let names: Vec<&str> = policies.names().collect();
    for name in names.into_iter().filter(|n| named.is_none_or(|named| named == *n)) {
        let Some(entry) = policies.get(name) else { continue };
        if let Some(parse) = entry.traffic {
            step(parse, &parameters, &traffic, &observed, state, answer, now, control);
        }
        if let Some(parse) = entry.spec {
            step(parse, &parameters, &spec, &spec_observed, state, answer, now, control);
        }
    }
});
