//! The bad-input corpus (`e2e/corpus/`, its README says how a case is written): every manifest
//! applied to the real control plane with every controller running cluster-wide, the pod
//! simulator as the kubelet and the KubeStellar simulator as KubeStellar. Each case's expected
//! outcome (refused at admission with the server's words, or a condition on an object within a
//! time) is checked; then that no controller stopped or panicked, and that once everything has
//! settled no controller is failing reconciles in a loop.

// A test that cannot proceed should stop right there, with the error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Event, Namespace};
use kube::api::{DynamicObject, ListParams, PostParams};
use kube::core::GroupVersionKind;
use kube::discovery::{ApiResource, Scope, pinned_kind};
use kube::{Api, Client};
use orrery_e2e::kubestellar_simulator::KubeStellarSimulator;
use orrery_e2e::pod_simulator::PodSimulator;
use orrery_e2e::{Deadline, InProcess, TestEnv, apply, stays, until, yaml_objects};
use orrery_runtime::{Context, ReconcileMetrics};

/// Where the cases are.
fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus")
}

/// What a case expects, read from its `# expect:` lines.
#[derive(Debug, Clone, PartialEq)]
enum Expect {
    /// The last document is refused by the API server with a message containing this; every
    /// document before it is admitted.
    Refused(String),
    /// Every document is admitted.
    Accepted,
    /// Every document is admitted, and `kind/name` has condition `type_` with `status` and
    /// `reason` (and a message containing `message`) within `within`.
    Condition {
        type_: String,
        status: String,
        reason: String,
        message: Option<String>,
        within: Duration,
        kind: String,
        name: String,
    },
    /// Every document is admitted, and within `within` an Event with `reason` (and a note
    /// containing `message`) is published about `kind/name`.
    Event {
        reason: String,
        message: Option<String>,
        within: Duration,
        kind: String,
        name: String,
    },
}

/// A double-quoted string at the start of `text` (`\"` and `\\` escaped) and the rest.
fn quoted(text: &str) -> Result<(String, &str), String> {
    let body = text
        .trim_start()
        .strip_prefix('"')
        .ok_or_else(|| format!("expected a quoted string at {text:?}"))?;
    let mut out = String::new();
    let mut chars = body.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => out.push(chars.next().ok_or("a quoted string ends in \\")?.1),
            '"' => return Ok((out, &body[i + 1..])),
            c => out.push(c),
        }
    }
    Err(format!("unterminated quoted string in {text:?}"))
}

/// Parses one expectation (what follows `# expect:`).
fn parse_expect(line: &str) -> Result<Expect, String> {
    let line = line.trim();
    if line == "accepted" {
        return Ok(Expect::Accepted);
    }
    if let Some(rest) = line.strip_prefix("refused ") {
        let (message, rest) = quoted(rest)?;
        if !rest.trim().is_empty() {
            return Err(format!("trailing text after refused: {rest:?}"));
        }
        return Ok(Expect::Refused(message));
    }
    if let Some(rest) = line.strip_prefix("event ") {
        let (reason, rest) = rest.trim_start().split_once(' ').ok_or("event without within")?;
        let (message, within, kind, name) = message_within_on(rest)?;
        return Ok(Expect::Event {
            reason: reason.to_owned(),
            message,
            within,
            kind,
            name,
        });
    }
    let rest = line
        .strip_prefix("condition ")
        .ok_or_else(|| format!("an expectation is accepted, refused, condition or event: {line:?}"))?;
    let (condition, rest) = rest.split_once(" reason ").ok_or("condition without reason")?;
    let (type_, status) = condition.split_once('=').ok_or("condition is <Type>=<Status>")?;
    let (reason, rest) = rest.trim_start().split_once(' ').ok_or("reason without within")?;
    let (message, within, kind, name) = message_within_on(rest)?;
    Ok(Expect::Condition {
        type_: type_.trim().to_owned(),
        status: status.trim().to_owned(),
        reason: reason.trim().to_owned(),
        message,
        within,
        kind,
        name,
    })
}

/// `[message "<text>"] within <N>s on <Kind>/<name>`.
fn message_within_on(mut rest: &str) -> Result<(Option<String>, Duration, String, String), String> {
    let mut message = None;
    if let Some(after) = rest.trim_start().strip_prefix("message ") {
        let (text, after) = quoted(after)?;
        message = Some(text);
        rest = after;
    }
    let rest = rest.trim_start().strip_prefix("within ").ok_or("no within <N>s")?;
    let (seconds, rest) = rest.split_once("s on ").ok_or("within <N>s on <Kind>/<name>")?;
    let within = Duration::from_secs(seconds.trim().parse().map_err(|e| format!("within {seconds:?}: {e}"))?);
    let (kind, name) = rest.trim().split_once('/').ok_or("on <Kind>/<name>")?;
    Ok((message, within, kind.to_owned(), name.to_owned()))
}

/// One case: a file, its documents and what it expects.
#[derive(Debug)]
struct Case {
    file: String,
    namespace: String,
    documents: Vec<DynamicObject>,
    expects: Vec<Expect>,
}

impl Case {
    fn read(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let stem = file.trim_end_matches(".yaml");
        let mut expects = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# expect:") {
                expects.push(parse_expect(rest).map_err(|e| format!("{file}: {e}"))?);
            }
        }
        if expects.is_empty() {
            return Err(format!("{file}: no `# expect:` line"));
        }
        let refusals = expects.iter().filter(|e| matches!(e, Expect::Refused(_))).count();
        if refusals > 0 && expects.len() > 1 {
            return Err(format!("{file}: a refused case expects nothing else"));
        }
        let documents = yaml_objects(&text).map_err(|e| format!("{file}: {e}"))?;
        if documents.is_empty() {
            return Err(format!("{file}: no documents"));
        }
        Ok(Case {
            namespace: format!("corpus-{stem}"),
            file,
            documents,
            expects,
        })
    }

    /// The kinds of its documents (the refused one is the last).
    fn kinds(&self) -> Vec<String> {
        self.documents
            .iter()
            .map(|d| d.types.as_ref().map(|t| t.kind.clone()).unwrap_or_default())
            .collect()
    }
}

/// The resource of an Orrery kind (or a core one a case may need).
async fn resource(client: &Client, kind: &str) -> (ApiResource, Scope) {
    let (group, version) = match kind {
        "Task" | "TaskRun" | "Ignitor" => ("workflow.orrery.dev", "v1alpha1"),
        "StagedBindingPolicy" => ("placement.orrery.dev", "v1alpha1"),
        "BindingPolicy" => ("control.kubestellar.io", "v1alpha1"),
        "Project" | "Cluster" | "VirtualCluster" | "Application" => ("hierarchy.orrery.dev", "v1alpha1"),
        _ => ("", "v1"),
    };
    let (resource, caps) = pinned_kind(client, &GroupVersionKind::gvk(group, version, kind))
        .await
        .unwrap_or_else(|err| panic!("no kind {kind}: {err}"));
    (resource, caps.scope)
}

/// Applies `case`'s documents in order; `None` if it went as expected, or what went wrong.
async fn apply_case(client: &Client, case: &Case) -> Option<String> {
    let refused = case.expects.iter().find_map(|e| match e {
        Expect::Refused(message) => Some(message.clone()),
        _ => None,
    });
    let last = case.documents.len() - 1;
    for (i, document) in case.documents.iter().enumerate() {
        let mut document = document.clone();
        if document.metadata.namespace.is_none() {
            document.metadata.namespace = Some(case.namespace.clone());
        }
        let result = apply(client, &document, false).await;
        match (&refused, i == last, result) {
            (Some(expected), true, Err(err)) => {
                let said = format!("{err:#}");
                return (!said.contains(expected.as_str()))
                    .then(|| format!("refused, but the message lacks {expected:?}: {said}"));
            }
            (Some(_), true, Ok(_)) => return Some("admitted, but expected to be refused".into()),
            (_, _, Err(err)) => return Some(format!("document {i} refused: {err:#}")),
            (_, _, Ok(_)) => {}
        }
    }
    None
}

/// Waits for an Event expectation; `None` if it came in time.
async fn check_event(client: &Client, expect: &Expect) -> Option<String> {
    let Expect::Event {
        reason,
        message,
        within,
        kind,
        name,
    } = expect
    else {
        return None;
    };
    let events: Api<Event> = Api::all(client.clone());
    let selector = format!("involvedObject.kind={kind},involvedObject.name={name}");
    let what = format!("an Event {reason} on {kind}/{name}");
    until(&what, Deadline(*within), || async {
        let list = events
            .list(&ListParams::default().fields(&selector))
            .await
            .map_err(|e| e.to_string())?;
        let seen: Vec<(String, String)> = list
            .items
            .iter()
            .map(|e| {
                (
                    e.reason.clone().unwrap_or_default(),
                    e.message.clone().unwrap_or_default(),
                )
            })
            .collect();
        if seen
            .iter()
            .any(|(r, m)| r == reason && message.as_ref().is_none_or(|t| m.contains(t.as_str())))
        {
            Ok(())
        } else {
            Err(format!("Events so far: {seen:?}"))
        }
    })
    .await
    .err()
    .map(|timed_out| timed_out.to_string())
}

/// Waits for a condition or Event expectation; `None` if it held in time.
async fn check_condition(client: &Client, case: &Case, expect: &Expect) -> Option<String> {
    if matches!(expect, Expect::Event { .. }) {
        return check_event(client, expect).await;
    }
    let Expect::Condition {
        type_,
        status,
        reason,
        message,
        within,
        kind,
        name,
    } = expect
    else {
        return None;
    };
    let (resource, scope) = resource(client, kind).await;
    let api: Api<DynamicObject> = match scope {
        Scope::Namespaced => Api::namespaced_with(client.clone(), &case.namespace, &resource),
        Scope::Cluster => Api::all_with(client.clone(), &resource),
    };
    let what = format!("{kind}/{name} {type_}={status} reason {reason}");
    until(&what, Deadline(*within), || async {
        let object = api.get(name).await.map_err(|e| e.to_string())?;
        let conditions = object.data["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let found = conditions
            .iter()
            .find(|c| c["type"] == type_.as_str())
            .ok_or_else(|| format!("no {type_} condition; conditions: {conditions:?}"))?;
        let said = found["message"].as_str().unwrap_or_default();
        if found["status"] == status.as_str()
            && found["reason"] == reason.as_str()
            && message.as_ref().is_none_or(|m| said.contains(m.as_str()))
        {
            Ok(())
        } else {
            Err(format!("{found}"))
        }
    })
    .await
    .err()
    .map(|timed_out| timed_out.to_string())
}

/// The controllers, and the names each records its reconciles under (task-workflow runs two).
const CONTROLLERS: [(&str, &[&str]); 6] = [
    (
        ignitor_scheduler::controller::NAME,
        &[ignitor_scheduler::controller::NAME],
    ),
    (task_workflow::controller::NAME, &["task", "taskrun"]),
    (staged_binding::controller::NAME, &[staged_binding::controller::NAME]),
    (
        hierarchy_executor::controller::NAME,
        &[hierarchy_executor::controller::NAME],
    ),
    (policy_runner::NAME, &[policy_runner::NAME]),
    (lambda_executor::NAME, &[lambda_executor::NAME]),
];

fn start(client: &Client, name: &str) -> (InProcess, ReconcileMetrics) {
    let (context, stop) = Context::standalone(client.clone(), name);
    let metrics = context.metrics.clone();
    let controller = match name {
        ignitor_scheduler::controller::NAME => InProcess::start_with(context, stop, ignitor_scheduler::run),
        task_workflow::controller::NAME => InProcess::start_with(context, stop, task_workflow::run),
        staged_binding::controller::NAME => InProcess::start_with(context, stop, staged_binding::run),
        hierarchy_executor::controller::NAME => InProcess::start_with(context, stop, hierarchy_executor::run),
        lambda_executor::NAME => InProcess::start_with(context, stop, lambda_executor::run),
        _ => InProcess::start_with(context, stop, policy_runner::controller::run),
    };
    (controller, metrics)
}

/// Failed reconciles and all reconciles, by the name they are recorded under.
fn counts(metrics: &[(&[&str], ReconcileMetrics)]) -> BTreeMap<String, (u64, u64)> {
    metrics
        .iter()
        .flat_map(|(names, m)| {
            names
                .iter()
                .map(move |name| ((*name).to_owned(), (m.failed_runs(name), m.runs(name))))
        })
        .collect()
}

/// The most reconciles of one controller in the quiet 10 s: periodic rechecks of what no watch
/// reports (a remote cluster every 15 s, a run whose Task is missing every 5 s) come to a few;
/// an object requeued or rewritten in a loop comes to hundreds.
const QUIET_RUNS: u64 = 30;

#[tokio::test]
async fn every_bad_input_gets_its_expected_outcome_and_nothing_loops() {
    let env = TestEnv::new().await;
    let client = env.client.clone();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    paths.sort();
    let cases: Vec<Case> = paths.iter().map(|p| Case::read(p).unwrap()).collect();
    assert!(cases.len() >= 80, "the corpus has {} cases", cases.len());

    // What the corpus covers, for the log.
    let mut per_kind: BTreeMap<String, usize> = BTreeMap::new();
    let mut per_outcome: BTreeMap<String, usize> = BTreeMap::new();
    for case in &cases {
        let kind = match case.expects.first() {
            Some(Expect::Condition { kind, .. } | Expect::Event { kind, .. }) => kind.clone(),
            _ => case.kinds().last().cloned().unwrap_or_default(),
        };
        *per_kind.entry(kind).or_default() += 1;
        for expect in &case.expects {
            let outcome = match expect {
                Expect::Refused(_) => "refused".to_owned(),
                Expect::Accepted => "accepted".to_owned(),
                Expect::Condition { type_, reason, .. } => format!("{type_} {reason}"),
                Expect::Event { reason, .. } => format!("Event {reason}"),
            };
            *per_outcome.entry(outcome).or_default() += 1;
        }
    }
    eprintln!(
        "{} cases; by kind {per_kind:?}; by outcome {per_outcome:?}",
        cases.len()
    );

    let _kubelet = PodSimulator::start(client.clone(), None).await.unwrap();
    let _kubestellar = KubeStellarSimulator::start_without_kubelets(client.clone())
        .await
        .unwrap();
    let (controllers, metrics): (Vec<InProcess>, Vec<(&[&str], ReconcileMetrics)>) = CONTROLLERS
        .iter()
        .map(|(name, recorded_as)| {
            let (controller, metrics) = start(&client, name);
            (controller, (*recorded_as, metrics))
        })
        .unzip();

    let namespaces: Api<Namespace> = Api::all(client.clone());
    for case in &cases {
        let namespace: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": case.namespace, "labels": {"orrery.dev/test": "true"}}
        }))
        .unwrap();
        namespaces.create(&PostParams::default(), &namespace).await.unwrap();
    }

    let started = Instant::now();
    let applied: Vec<(String, Option<String>)> = futures::stream::iter(&cases)
        .map(|case| {
            let client = client.clone();
            async move { (case.file.clone(), apply_case(&client, case).await) }
        })
        .buffered(8)
        .collect()
        .await;
    eprintln!("applied {} cases in {:?}", cases.len(), started.elapsed());
    let mut wrong: Vec<String> = applied
        .into_iter()
        .filter_map(|(file, problem)| problem.map(|p| format!("{file}: {p}")))
        .collect();

    let checks: Vec<(&Case, &Expect)> = cases
        .iter()
        .flat_map(|case| case.expects.iter().map(move |e| (case, e)))
        .filter(|(_, e)| matches!(e, Expect::Condition { .. } | Expect::Event { .. }))
        .collect();
    let checked: Vec<Option<String>> = futures::stream::iter(checks.iter())
        .map(|(case, expect)| {
            let client = client.clone();
            async move {
                check_condition(&client, case, expect)
                    .await
                    .map(|p| format!("{}: {p}", case.file))
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    eprintln!("checked {} conditions after {:?}", checks.len(), started.elapsed());
    wrong.extend(checked.into_iter().flatten());
    assert!(
        wrong.is_empty(),
        "{} of {} cases went otherwise:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );

    for (controller, (name, _)) in controllers.iter().zip(&CONTROLLERS) {
        assert!(controller.is_running(), "{name} stopped while the corpus was applied");
    }

    // Settled: no controller has failed a reconcile for 3 s.
    let mut last = (counts(&metrics), Instant::now());
    let settled = until(
        "the controllers to stop failing",
        Deadline(Duration::from_secs(60)),
        || {
            let now = counts(&metrics);
            let quiet = if now != last.0 {
                last = (now.clone(), Instant::now());
                false
            } else {
                last.1.elapsed() >= Duration::from_secs(3)
            };
            async move {
                if quiet {
                    Ok(now)
                } else {
                    Err(format!("(failed, runs) by controller: {now:?}"))
                }
            }
        },
    )
    .await
    .unwrap_or_else(|timed_out| panic!("{timed_out}"));
    eprintln!("settled after {:?}: (failed, runs) {settled:?}", started.elapsed());

    // Then nothing retries: not one failed reconcile in 10 s, and no more reconciles than
    // periodic rechecks make.
    stays("no reconcile failing or looping", Duration::from_secs(10), || {
        let now = counts(&metrics);
        let failing: Vec<String> = now
            .iter()
            .filter(|(name, (failed, runs))| {
                settled.get(*name).is_some_and(|(failed_before, runs_before)| {
                    failed > failed_before || runs - runs_before > QUIET_RUNS
                })
            })
            .map(|(name, counts)| format!("{name} {counts:?} (settled at {:?})", settled.get(name)))
            .collect();
        async move {
            if failing.is_empty() {
                Ok(())
            } else {
                Err(format!("failing or looping: {failing:?}"))
            }
        }
    })
    .await;
    eprintln!("after 10 s more: (failed, runs) {:?}", counts(&metrics));

    for (controller, (name, _)) in controllers.iter().zip(&CONTROLLERS) {
        assert!(controller.is_running(), "{name} stopped");
    }
    for controller in controllers {
        controller.stop().await;
    }
}
