//! Runs a hierarchy resource's pipeline and plans its `status.policy`.
//!
//! All or nothing: when every step runs, the new output and every step's new state are
//! written together; when a step cannot run (a policy nobody claims, bad parameters, a failed
//! fetch, an invalid output), the pipeline stops there, the condition says which step and
//! why, and the output and states stay as they were, so the traffic in force stays and no
//! canary step is lost or taken twice.

use std::future::Future;

use crd_types::common::{CONDITION_READY, seconds, set_condition};
use crd_types::hierarchy::{
    ABORT_ANNOTATION, PAUSE_ANNOTATION, PROMOTE_ANNOTATION, PolicyPipelineStatus, PolicyStepStatus,
};
use jiff::Timestamp;
use kube::ResourceExt;

use crate::policy::{Answer, Control, Document, Failure, Outcome, Phase, Request, Step};
use crate::registry::Registry;
use crate::subject::Subject;

/// How soon a step that failed outside is tried again.
const RETRY_AFTER: jiff::SignedDuration = jiff::SignedDuration::from_secs(10);

/// The phase of a step that failed (an error, not a policy's verdict).
pub const STEP_FAILED: &str = "Failed";

/// Performs what policies ask for: the only I/O a pipeline does.
pub trait Outside: Sync {
    /// Fetches `request`'s answer.
    fn fetch(&self, request: Request) -> impl Future<Output = Answer> + Send;
}

/// An Event to publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    /// Its reason.
    pub reason: String,
    /// Its message.
    pub message: String,
    /// A warning rather than a normal Event.
    pub warning: bool,
}

/// What a run concluded.
#[derive(Clone, Debug, PartialEq)]
pub struct Planned {
    /// The new `status.policy`.
    pub status: PolicyPipelineStatus,
    /// Run again at this time even if nothing changes.
    pub wake_at: Option<Timestamp>,
    /// Events for what changed.
    pub notices: Vec<Notice>,
}

/// Runs `subject`'s pipeline at `now`. `None` when there is nothing to do: the pipeline is
/// another runner's, or the executor has not reported on the current spec yet.
pub async fn plan<S: Subject>(
    subject: &S,
    registry: &Registry,
    now: Timestamp,
    outside: &impl Outside,
) -> Option<Planned> {
    let previous = subject.common().and_then(|s| s.policy.clone()).unwrap_or_default();
    let policies = subject.policies();
    let generation = subject.meta().generation;
    let names: Vec<&str> = policies.iter().map(|p| p.name.as_str()).collect();
    if !registry.claims(names.iter().copied(), previous.runner.as_deref()) {
        return None;
    }
    // Readiness is reported per spec generation: until the executor has seen this one, a gate
    // would judge the old versions. Its status update brings the pipeline back.
    if subject.common().and_then(|s| s.observed_generation) != generation {
        return None;
    }
    let unknown = names.iter().position(|name| registry.get(name).is_none());
    let now = seconds(now).0;
    let annotations = subject.annotations();
    let token = |key: &str, last: &Option<String>| {
        annotations
            .get(key)
            .filter(|value| Some(*value) != last.as_ref())
            .cloned()
    };
    let promote = token(PROMOTE_ANNOTATION, &previous.last_promote);
    let abort = token(ABORT_ANNOTATION, &previous.last_abort);
    let control = Control {
        promote: promote.is_some(),
        abort: abort.is_some(),
    };
    let paused = annotations.get(PAUSE_ANNOTATION).is_some_and(|v| v != "false");

    if let Some(index) = unknown {
        let known: Vec<&str> = registry.names().collect();
        let failure = Failure::new(
            "PolicyNotClaimed",
            format!(
                "no runner claims policy {:?} (policy-runner knows {})",
                names[index],
                known.join(", ")
            ),
        );
        return Some(stopped::<S::Document>(
            policies, generation, previous, index, &failure, now,
        ));
    }
    if paused && !control.promote && !control.abort {
        let mut status = previous.clone();
        status.paused = true;
        set_condition(
            &mut status.conditions,
            CONDITION_READY,
            false,
            "Paused",
            format!(
                "paused by the {PAUSE_ANNOTATION} annotation: {} stays",
                S::Document::IN_FORCE
            ),
            generation,
            seconds(now),
        );
        let notices = (!previous.paused)
            .then(|| notice("Paused", "the policy pipeline is paused", false))
            .into_iter()
            .collect();
        return Some(Planned {
            status,
            wake_at: None,
            notices,
        });
    }

    let observed = subject.observed();
    let mut document = subject.initial_document();
    let mut outcomes: Vec<Outcome<S::Document>> = Vec::with_capacity(names.len());
    for (index, reference) in policies.iter().enumerate() {
        let saved = saved_step(&previous.steps, policies, index).and_then(|s| s.state.as_ref());
        let result = run_step(registry, reference, &document, &observed, saved, now, control, outside).await;
        match result {
            Ok(outcome) => {
                document = outcome.output.clone();
                outcomes.push(outcome);
            }
            Err(failure) => {
                return Some(stopped::<S::Document>(
                    policies, generation, previous, index, &failure, now,
                ));
            }
        }
    }

    let mut notices = Vec::new();
    if previous.paused {
        notices.push(notice("Resumed", "the policy pipeline runs again", false));
    }
    let has_canary = names.contains(&"canary");
    if control.promote {
        notices.push(if has_canary {
            notice("Promoted", "promoted from kubectl", false)
        } else {
            notice(
                "NothingToPromote",
                "no canary in the pipeline: the promote changes nothing",
                true,
            )
        });
    }
    if control.abort {
        notices.push(if has_canary {
            notice("Aborted", "aborted from kubectl", true)
        } else {
            notice(
                "NothingToAbort",
                "no canary in the pipeline: the abort changes nothing",
                true,
            )
        });
    }
    let steps: Vec<PolicyStepStatus> = policies
        .iter()
        .zip(&outcomes)
        .enumerate()
        .map(|(index, (reference, outcome))| {
            let before = saved_step(&previous.steps, policies, index);
            let phase = outcome.phase.as_str();
            let changed = before.is_none_or(|b| b.phase != phase);
            if changed {
                notices.push(notice(
                    phase,
                    format!("step {} ({}): {}", index + 1, reference.name, outcome.message),
                    outcome.phase == Phase::RolledBack,
                ));
            }
            PolicyStepStatus {
                name: reference.name.clone(),
                phase: phase.to_owned(),
                message: Some(outcome.message.clone()),
                state: outcome.state.clone(),
                last_transition_time: match before {
                    Some(b) if !changed => b.last_transition_time.clone(),
                    _ => Some(seconds(now)),
                },
            }
        })
        .collect();
    let output = serde_json::to_value(&document).ok();
    let described = document.describe();
    let previous_output = previous
        .output
        .as_ref()
        .and_then(|o| serde_json::from_value::<S::Document>(o.clone()).ok());
    if previous_output.is_none_or(|p| p.describe() != described) {
        notices.push(notice(S::Document::CHANGED, described.clone(), false));
    }
    let summary = outcomes
        .iter()
        .map(|o| o.phase)
        .find(|p| *p == Phase::RolledBack)
        .or_else(|| outcomes.iter().map(|o| o.phase).find(|p| *p == Phase::Holding))
        .or_else(|| outcomes.iter().map(|o| o.phase).find(|p| *p == Phase::Progressing))
        .unwrap_or(Phase::Succeeded);
    let mut conditions = previous.conditions.clone();
    set_condition(
        &mut conditions,
        CONDITION_READY,
        true,
        summary.as_str(),
        described,
        generation,
        seconds(now),
    );
    Some(Planned {
        status: PolicyPipelineStatus {
            observed_generation: generation,
            runner: Some(registry.runner.to_owned()),
            complete: true,
            output,
            steps,
            paused: false,
            last_promote: promote.or(previous.last_promote),
            last_abort: abort.or(previous.last_abort),
            conditions,
        },
        wake_at: outcomes.iter().filter_map(|o| o.wake_at).min(),
        notices,
    })
}

/// Step `index`'s status from the last run: the same occurrence of the same policy name, so
/// adding or moving other policies keeps each one's state.
fn saved_step<'a>(
    previous: &'a [PolicyStepStatus],
    policies: &[crd_types::common::PluginRef],
    index: usize,
) -> Option<&'a PolicyStepStatus> {
    let name = &policies[index].name;
    let occurrence = policies[..index].iter().filter(|p| &p.name == name).count();
    previous.iter().filter(|s| &s.name == name).nth(occurrence)
}

/// One step: parse, fetch what it needs, run, check its output.
#[allow(clippy::too_many_arguments)]
async fn run_step<D: Document>(
    registry: &Registry,
    reference: &crd_types::common::PluginRef,
    input: &D,
    observed: &D::Observed,
    state: Option<&serde_json::Value>,
    now: Timestamp,
    control: Control,
    outside: &impl Outside,
) -> Result<Outcome<D>, Failure> {
    let entry = registry
        .get(&reference.name)
        .ok_or_else(|| Failure::new("PolicyNotClaimed", format!("no runner claims {:?}", reference.name)))?;
    let parse = D::parser(entry).ok_or_else(|| {
        let here: Vec<&str> = registry.names_for::<D>().collect();
        Failure::new(
            "PolicyNotApplicable",
            format!(
                "{:?} does not run on this kind of resource (these do: {})",
                reference.name,
                here.join(", ")
            ),
        )
    })?;
    let policy = parse(&reference.parameters.clone().unwrap_or_default())?;
    let step = Step {
        input,
        observed,
        state,
        now,
        control,
    };
    let answer = match policy.needs(&step) {
        Some(request) => Some(outside.fetch(request).await),
        None => None,
    };
    let outcome = policy.run(&step, answer)?;
    outcome.output.check(observed)?;
    Ok(outcome)
}

/// The status of a pipeline stopped at step `index`: what was in force stays.
fn stopped<D: Document>(
    policies: &[crd_types::common::PluginRef],
    generation: Option<i64>,
    previous: PolicyPipelineStatus,
    index: usize,
    failure: &Failure,
    now: Timestamp,
) -> Planned {
    let mut status = previous.clone();
    status.complete = false;
    status.paused = false;
    status.steps = policies
        .iter()
        .enumerate()
        .map(|(i, reference)| {
            let before = saved_step(&previous.steps, policies, i);
            if i == index {
                PolicyStepStatus {
                    name: reference.name.clone(),
                    phase: STEP_FAILED.into(),
                    message: Some(failure.message.clone()),
                    state: before.and_then(|b| b.state.clone()),
                    last_transition_time: match before {
                        Some(b) if b.phase == STEP_FAILED => b.last_transition_time.clone(),
                        _ => Some(seconds(now)),
                    },
                }
            } else {
                before.cloned().unwrap_or_else(|| PolicyStepStatus {
                    name: reference.name.clone(),
                    phase: "Pending".into(),
                    ..PolicyStepStatus::default()
                })
            }
        })
        .collect();
    let message = format!(
        "step {} ({}): {}; {} stays",
        index + 1,
        policies[index].name,
        failure.message,
        D::IN_FORCE
    );
    let ready = previous.conditions.iter().find(|c| c.type_ == CONDITION_READY);
    let news = ready.is_none_or(|c| c.reason != failure.reason || c.message != message);
    set_condition(
        &mut status.conditions,
        CONDITION_READY,
        false,
        failure.reason,
        message.clone(),
        generation,
        seconds(now),
    );
    // What fails outside (a server down, a webhook slow) is tried again; what the spec says
    // wrong waits for the spec to change.
    let transient = matches!(failure.reason, "MetricsUnavailable" | "WebhookFailed");
    Planned {
        status,
        wake_at: transient.then(|| now.saturating_add(RETRY_AFTER).unwrap_or(now)),
        notices: news
            .then(|| notice(failure.reason, message, true))
            .into_iter()
            .collect(),
    }
}

fn notice(reason: &str, message: impl Into<String>, warning: bool) -> Notice {
    Notice {
        reason: reason.to_owned(),
        message: message.into(),
        warning,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::split;
    use crate::testing::at;
    use crd_types::hierarchy::{Application, TrafficDocument, VirtualCluster};
    use serde_json::{Value, json};
    use std::sync::Mutex;

    /// Answers every request with the same canned answer, and counts them.
    struct Canned {
        answer: Answer,
        asked: Mutex<Vec<Request>>,
    }

    impl Canned {
        fn new(answer: Answer) -> Self {
            Canned {
                answer,
                asked: Mutex::new(Vec::new()),
            }
        }
    }

    impl Outside for Canned {
        fn fetch(&self, request: Request) -> impl Future<Output = Answer> + Send {
            self.asked.lock().unwrap().push(request);
            let answer = self.answer.clone();
            async move { answer }
        }
    }

    fn app(policies: Value, status: Value) -> Application {
        serde_json::from_value(json!({
            "metadata": {"name": "shop", "namespace": "team-a", "generation": 2},
            "spec": {"versions": [{"name": "v1", "image": "shop:1"}, {"name": "v2", "image": "shop:2"}], "policies": policies},
            "status": status,
        }))
        .unwrap()
    }

    fn ready(weights: Value) -> Value {
        json!({"observedGeneration": 2, "weights": weights, "versions": [
            {"name": "v1", "replicas": 1, "readyReplicas": 1}, {"name": "v2", "replicas": 1, "readyReplicas": 1}]})
    }

    fn run(app: &Application, now: i64) -> Option<Planned> {
        run_with(app, now, &Canned::new(Err("no outside here".into())))
    }

    fn run_with(app: &Application, now: i64, outside: &Canned) -> Option<Planned> {
        futures::executor::block_on(plan(app, &Registry::builtin(), at(now), outside))
    }

    fn weights_of(planned: &Planned) -> Vec<crd_types::hierarchy::VersionWeight> {
        serde_json::from_value::<TrafficDocument>(planned.status.output.clone().unwrap())
            .unwrap()
            .weights
    }

    #[test]
    fn each_step_takes_the_previous_output_and_order_matters() {
        let status = ready(json!([{"version": "v1", "weight": 100}]));
        let capped = app(
            json!([{"name": "canary", "parameters": {"stepWeight": 60, "maxWeight": 100}}, {"name": "weight-cap", "parameters": {"maxWeight": 30}}]),
            status.clone(),
        );
        let planned = run(&capped, 0).unwrap();
        assert!(planned.status.complete);
        assert_eq!(weights_of(&planned), split("v1", "v2", 30));
        assert_eq!(planned.status.observed_generation, Some(2));
        assert_eq!(
            planned.status.steps[1].message.as_deref(),
            Some("v2 capped at 30% (asked 60%); 30% to v1")
        );

        let reversed = app(
            json!([{"name": "weight-cap", "parameters": {"maxWeight": 30, "version": "v2"}}, {"name": "canary", "parameters": {"stepWeight": 60, "maxWeight": 100}}]),
            status,
        );
        assert_eq!(weights_of(&run(&reversed, 0).unwrap()), split("v1", "v2", 60));
    }

    #[test]
    fn a_second_run_on_the_same_world_plans_the_same_status() {
        let mut app = app(
            json!([{"name": "canary"}]),
            ready(json!([{"version": "v1", "weight": 100}])),
        );
        let first = run(&app, 0).unwrap();
        app.status.as_mut().unwrap().common.policy = Some(first.status.clone());
        let second = run(&app, 5).unwrap();
        assert_eq!(second.status, first.status, "nothing to write: steady state");
        assert!(second.notices.is_empty(), "{:?}", second.notices);
    }

    #[test]
    fn an_unknown_policy_stops_before_anything_runs_and_keeps_the_output() {
        let previous = json!({"observedGeneration": 1, "runner": "policy-runner", "complete": true,
            "output": {"weights": [{"version": "v1", "weight": 90}, {"version": "v2", "weight": 10}]},
            "steps": [{"name": "canary", "phase": "Progressing", "state": {"keep": "me"}}]});
        let mut status = ready(json!([]));
        status["policy"] = previous;
        let app = app(json!([{"name": "canary"}, {"name": "flagger-magic"}]), status);
        let planned = run(&app, 0).unwrap();
        let status = &planned.status;
        assert!(!status.complete);
        assert_eq!(
            status.observed_generation,
            Some(1),
            "the output in force is from generation 1"
        );
        assert_eq!(status.steps[0].state, Some(json!({"keep": "me"})));
        assert_eq!(status.steps[1].phase, "Failed");
        let ready = &status.conditions[0];
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "PolicyNotClaimed")
        );
        assert!(
            ready
                .message
                .starts_with("step 2 (flagger-magic): no runner claims policy \"flagger-magic\""),
            "{}",
            ready.message
        );
        assert!(planned.notices[0].warning);
    }

    #[test]
    fn another_runners_pipeline_is_left_alone() {
        let mut status = ready(json!([]));
        status["policy"] = json!({"runner": "acme-runner"});
        assert_eq!(run(&app(json!([{"name": "acme-special"}]), status), 0), None);
    }

    #[test]
    fn bad_parameters_name_the_step() {
        let app = app(
            json!([{"name": "canary", "parameters": {"stepWieght": 5}}]),
            ready(json!([])),
        );
        let planned = run(&app, 0).unwrap();
        let ready = &planned.status.conditions[0];
        assert_eq!(ready.reason, "InvalidParameters");
        assert!(
            ready.message.starts_with("step 1 (canary): unknown field `stepWieght`"),
            "{}",
            ready.message
        );
    }

    #[test]
    fn a_failed_fetch_keeps_every_state_as_it_was() {
        let policies = json!([
            {"name": "canary", "parameters": {"interval": "10s"}},
            {"name": "metric-analysis", "parameters": {"address": "http://p:9090", "query": "up", "successCondition": "result > 0.0", "interval": "10s"}},
        ]);
        let mut app = app(policies, ready(json!([{"version": "v1", "weight": 100}])));
        let up = Canned::new(Ok(
            json!({"status": "success", "data": {"resultType": "scalar", "result": [0, "1"]}}),
        ));
        let first = run_with(&app, 0, &up).unwrap();
        assert_eq!(weights_of(&first), split("v1", "v2", 10));
        app.status.as_mut().unwrap().common.policy = Some(first.status.clone());
        app.status.as_mut().unwrap().weights = split("v1", "v2", 10);
        // The route carries 10%: the canary's interval and the analysis' first wait begin.
        let carried = run_with(&app, 5, &up).unwrap();
        assert!(up.asked.lock().unwrap().is_empty(), "nothing to measure yet");
        app.status.as_mut().unwrap().common.policy = Some(carried.status.clone());

        // Both due at 15 s: the canary would step, but the analysis cannot measure.
        let down = Canned::new(Err("connection refused".into()));
        let failed = run_with(&app, 20, &down).unwrap();
        assert_eq!(down.asked.lock().unwrap().len(), 1);
        assert!(!failed.status.complete);
        assert_eq!(failed.status.output, carried.status.output);
        assert_eq!(
            failed.status.steps[0].state, carried.status.steps[0].state,
            "the canary did not step"
        );
        assert_eq!(failed.status.steps[1].state, carried.status.steps[1].state);
        assert_eq!(failed.status.conditions[0].reason, "MetricsUnavailable");
        assert!(failed.wake_at.is_some(), "a server down is tried again");

        let back = run_with(&app, 30, &up).unwrap();
        assert_eq!(weights_of(&back), split("v1", "v2", 20));
    }

    #[test]
    fn a_steps_state_follows_its_policy_when_others_are_added_before_it() {
        let mut app = app(
            json!([{"name": "canary"}]),
            ready(json!([{"version": "v1", "weight": 100}])),
        );
        let first = run(&app, 0).unwrap();
        app.status.as_mut().unwrap().common.policy = Some(first.status.clone());
        app.spec.policies.insert(0, serde_json::from_value(json!({"name": "freeze", "parameters": {"windows": [{"start": at(1000).to_string(), "end": at(2000).to_string()}]}})).unwrap());
        let second = run(&app, 1).unwrap();
        assert_eq!(second.status.steps[1].state, first.status.steps[0].state);
    }

    #[test]
    fn nothing_runs_until_the_executor_has_seen_the_spec() {
        let mut status = ready(json!([{"version": "v1", "weight": 100}]));
        status["observedGeneration"] = json!(1);
        assert_eq!(run(&app(json!([{"name": "canary"}]), status), 0), None);
    }

    #[test]
    fn a_match_without_conditions_or_with_a_bad_name_is_refused() {
        for (matches, complaint) in [
            (json!([{"version": "v2"}]), "would take every request"),
            (
                json!([{"version": "v2", "headers": [{"name": "x beta", "value": "1"}]}]),
                "not a header or cookie name",
            ),
        ] {
            let expression = format!("{{'weights': [{{'version': 'v1', 'weight': 100}}], 'matches': {matches}}}");
            let app = app(
                json!([{"name": "cel", "parameters": {"expression": expression}}]),
                ready(json!([])),
            );
            let planned = run(&app, 0).unwrap();
            assert_eq!(planned.status.conditions[0].reason, "InvalidOutput");
            assert!(
                planned.status.conditions[0].message.contains(complaint),
                "{}",
                planned.status.conditions[0].message
            );
        }
    }

    #[test]
    fn pause_holds_and_promote_and_abort_count_once_per_token() {
        let mut app = app(
            json!([{"name": "canary"}]),
            ready(json!([{"version": "v1", "weight": 100}])),
        );
        let first = run(&app, 0).unwrap();
        app.status.as_mut().unwrap().common.policy = Some(first.status.clone());
        app.metadata.annotations = Some([(PAUSE_ANNOTATION.to_owned(), "true".to_owned())].into());
        let paused = run(&app, 100).unwrap();
        assert!(paused.status.paused);
        assert_eq!(paused.status.output, first.status.output);
        assert_eq!(paused.status.conditions[0].reason, "Paused");
        assert_eq!(paused.notices[0].reason, "Paused");

        app.metadata.annotations = Some([(PROMOTE_ANNOTATION.to_owned(), "1".to_owned())].into());
        let promoted = run(&app, 101).unwrap();
        assert_eq!(weights_of(&promoted), split("v1", "v2", 100));
        assert_eq!(promoted.status.last_promote.as_deref(), Some("1"));
        assert!(promoted.notices.iter().any(|n| n.reason == "Promoted"));
        app.status.as_mut().unwrap().common.policy = Some(promoted.status.clone());
        let again = run(&app, 102).unwrap();
        assert!(
            !again.notices.iter().any(|n| n.reason == "Promoted"),
            "the same token counts once"
        );

        app.metadata.annotations = Some([(ABORT_ANNOTATION.to_owned(), "x".to_owned())].into());
        let aborted = run(&app, 103).unwrap();
        assert_eq!(weights_of(&aborted), split("v1", "v2", 0));
        assert_eq!(aborted.status.summary_reason(), "RolledBack");
    }

    #[test]
    fn an_output_naming_an_unknown_version_is_refused() {
        let app = app(
            json!([{"name": "cel", "parameters": {"expression": "{'weights': [{'version': 'v9', 'weight': 100}]}"}}]),
            ready(json!([])),
        );
        let planned = run(&app, 0).unwrap();
        assert_eq!(planned.status.conditions[0].reason, "InvalidOutput");
        assert!(planned.status.conditions[0].message.contains("\"v9\""));
    }

    trait Summary {
        fn summary_reason(&self) -> &str;
    }
    impl Summary for PolicyPipelineStatus {
        fn summary_reason(&self) -> &str {
            &self.conditions[0].reason
        }
    }

    fn virtual_cluster(policies: Value, status: Value) -> VirtualCluster {
        serde_json::from_value(json!({
            "metadata": {"name": "team-a", "generation": 2},
            "spec": {"cluster": "local", "quota": {"pods": "10"}, "policies": policies},
            "status": status,
        }))
        .unwrap()
    }

    fn plan_spec(vc: &VirtualCluster, now: i64) -> Planned {
        let outside = Canned::new(Err("no outside here".into()));
        futures::executor::block_on(plan(vc, &Registry::builtin(), at(now), &outside)).unwrap()
    }

    #[test]
    fn a_virtual_clusters_pipeline_computes_its_spec_document() {
        let cel = json!([{"name": "cel", "parameters": {"expression": "{'quota': {'pods': '20'}, 'labels': {'by': 'cel'}}"}}]);
        let planned = plan_spec(&virtual_cluster(cel, json!({"observedGeneration": 2})), 0);
        assert!(planned.status.complete);
        assert_eq!(
            planned.status.output,
            Some(json!({"quota": {"pods": "20"}, "labels": {"by": "cel"}}))
        );
        assert!(
            planned.notices.iter().any(|n| n.reason == "SpecChanged"),
            "{:?}",
            planned.notices
        );
    }

    #[test]
    fn a_freeze_holds_the_spec_in_force() {
        let window = json!({"windows": [{"start": at(0).to_string(), "end": at(100).to_string()}]});
        let in_force = json!({"observedGeneration": 2, "policy": {"runner": "policy-runner", "complete": true,
            "observedGeneration": 1, "output": {"quota": {"pods": "5"}}}});
        let frozen = plan_spec(
            &virtual_cluster(json!([{"name": "freeze", "parameters": window}]), in_force),
            50,
        );
        assert_eq!(frozen.status.output, Some(json!({"quota": {"pods": "5"}})));
        assert_eq!(frozen.status.steps[0].phase, "Holding");
        assert_eq!(
            frozen.status.steps[0].message.as_deref(),
            Some(format!("frozen until {}: the spec in force stays", at(100)).as_str())
        );
        assert_eq!(frozen.wake_at, Some(at(100)));
    }

    #[test]
    fn traffic_policies_and_outputs_that_do_not_fit_stop_a_spec_pipeline() {
        let status = json!({"observedGeneration": 2});
        let canary = plan_spec(&virtual_cluster(json!([{"name": "canary"}]), status.clone()), 0);
        let ready = &canary.status.conditions[0];
        assert_eq!(ready.reason, "PolicyNotApplicable");
        assert!(
            ready
                .message
                .contains("\"canary\" does not run on this kind of resource (these do: freeze, cel, webhook)"),
            "{}",
            ready.message
        );
        assert_eq!(canary.status.output, None, "nothing was ever in force");
        let wrong = json!([{"name": "cel", "parameters": {"expression": "{'templates': {}}"}}]);
        let misfit = plan_spec(&virtual_cluster(wrong, status), 0);
        assert_eq!(misfit.status.conditions[0].reason, "InvalidOutput");
        assert!(
            misfit.status.conditions[0]
                .message
                .contains("VirtualCluster: \"templates\" is not a field")
        );
    }
}
