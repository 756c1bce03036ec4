//! What the plugin prints, as pure functions of what it read: tested without a cluster.

use crd_types::common::Condition;
use crd_types::hierarchy::VersionWeight;
use crd_types::workflow::{InitiatorKind, TaskRun, TaskRunPhase};
use jiff::{SignedDuration, Timestamp};

/// One resource of a Project's tree and its children.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
    pub ready: Option<Condition>,
    pub created: Option<Timestamp>,
    pub children: Vec<Node>,
}

/// The tree as kubectl-tree draws it: one row per resource, its `Ready` status and reason, and
/// the message of anything not ready (that is what the reader came for).
pub fn tree(root: &Node, now: Timestamp) -> String {
    let mut rows = vec![row(["NAMESPACE", "NAME", "READY", "REASON", "AGE", "MESSAGE"])];
    tree_rows(root, "", "", now, &mut rows);
    table(&rows)
}

fn tree_rows(node: &Node, lead: &str, child_lead: &str, now: Timestamp, rows: &mut Vec<Vec<String>>) {
    let ready = node.ready.as_ref();
    let status = ready.map_or("-", |c| c.status.as_str());
    let message = match ready {
        Some(c) if c.status != "True" => shorten(&c.message, 100),
        None => "no Ready condition yet: is its executor running?".to_owned(),
        Some(_) => String::new(),
    };
    rows.push(vec![
        node.namespace.clone().unwrap_or_else(|| "-".into()),
        format!("{lead}{}/{}", node.kind, node.name),
        status.to_owned(),
        ready.map_or("-".into(), |c| c.reason.clone()),
        node.created.map_or("-".into(), |t| age(now.duration_since(t))),
        message,
    ]);
    for (i, child) in node.children.iter().enumerate() {
        let last = i + 1 == node.children.len();
        let (branch, rest) = if last {
            ("└── ", "    ")
        } else {
            ("├── ", "│   ")
        };
        tree_rows(
            child,
            &format!("{child_lead}{branch}"),
            &format!("{child_lead}{rest}"),
            now,
            rows,
        );
    }
}

/// A Task's runs, oldest first, with how long each took and how it ended.
pub fn runs(task: &str, runs: &[TaskRun], now: Timestamp) -> String {
    if runs.is_empty() {
        return format!("Task {task} has no TaskRuns (yet, or its history limits removed them)\n");
    }
    let mut sorted: Vec<&TaskRun> = runs.iter().collect();
    sorted.sort_by_key(|r| {
        (
            r.metadata.creation_timestamp.as_ref().map(|t| t.0),
            r.metadata.name.clone(),
        )
    });
    let mut rows = vec![row([
        "NAME",
        "PHASE",
        "INITIATOR",
        "ATTEMPT",
        "STARTED",
        "DURATION",
        "EXIT",
        "MESSAGE",
    ])];
    for run in sorted {
        let status = run.status.clone().unwrap_or_default();
        let started = status.start_time.as_ref().map(|t| t.0);
        let finished = status.completion_time.as_ref().map(|t| t.0);
        let duration = match (started, finished) {
            (Some(start), Some(end)) => elapsed(end.duration_since(start)),
            (Some(start), None) => format!("{} so far", elapsed(now.duration_since(start))),
            _ => "-".into(),
        };
        let initiator = run.spec.initiator.as_ref().map_or("by hand".into(), |i| {
            let kind = match i.kind {
                InitiatorKind::Ignitor => "ignitor",
                InitiatorKind::Task => "task",
            };
            format!("{kind}/{}", i.name)
        });
        rows.push(vec![
            run.metadata.name.clone().unwrap_or_default(),
            phase(status.phase).to_owned(),
            initiator,
            // Counted from 1 for people; the status counts retries from 0.
            (status.attempt + 1).to_string(),
            started.map_or("-".into(), |t| format!("{} ago", age(now.duration_since(t)))),
            duration,
            status.exit_code.map_or("-".into(), |c| c.to_string()),
            shorten(status.message.as_deref().unwrap_or(""), 80),
        ]);
    }
    table(&rows)
}

fn phase(phase: Option<TaskRunPhase>) -> &'static str {
    match phase {
        None | Some(TaskRunPhase::Pending) => "Pending",
        Some(TaskRunPhase::Running) => "Running",
        Some(TaskRunPhase::Succeeded) => "Succeeded",
        Some(TaskRunPhase::Failed) => "Failed",
    }
}

/// Weights as the policy-runner's messages write them: `v1 80%, v2 20%`.
pub fn weights(weights: &[VersionWeight]) -> String {
    if weights.is_empty() {
        return "none yet".into();
    }
    weights
        .iter()
        .map(|w| format!("{} {}%", w.version, w.weight))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Columns padded to their widest cell, three spaces apart, as kubectl prints.
fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if c + 1 < row.len() {
                line.push_str(&" ".repeat(widths[c] - cell.chars().count() + 3));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn row<const N: usize>(cells: [&str; N]) -> Vec<String> {
    cells.iter().map(|c| (*c).to_owned()).collect()
}

/// An age as kubectl shows it: the largest unit only (`45s`, `12m`, `3h`, `2d`).
pub fn age(d: SignedDuration) -> String {
    let s = d.as_secs().max(0);
    match s {
        0..120 => format!("{s}s"),
        120..7_200 => format!("{}m", s / 60),
        7_200..172_800 => format!("{}h", s / 3_600),
        _ => format!("{}d", s / 86_400),
    }
}

/// A duration to the second: `42s`, `3m5s`, `1h2m3s`.
pub fn elapsed(d: SignedDuration) -> String {
    let s = d.as_secs().max(0);
    let (h, m, s) = (s / 3_600, s / 60 % 60, s % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m{s}s"),
        _ => format!("{h}h{m}m{s}s"),
    }
}

fn shorten(text: &str, max: usize) -> String {
    let line = text.lines().next().unwrap_or("");
    if line.chars().count() <= max {
        line.to_owned()
    } else {
        format!("{}…", line.chars().take(max - 1).collect::<String>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crd_types::common::MicroTime;
    use crd_types::workflow::{Initiator, TaskRef, TaskRunSpec, TaskRunStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    fn ready(status: &str, reason: &str, message: &str) -> Option<Condition> {
        Some(Condition {
            type_: "Ready".into(),
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
            last_transition_time: Time(at(0)),
            observed_generation: None,
        })
    }

    fn node(kind: &str, name: &str, ready: Option<Condition>, children: Vec<Node>) -> Node {
        Node {
            kind: kind.into(),
            namespace: (kind == "Application").then(|| "shop".to_owned()),
            name: name.into(),
            ready,
            created: Some(at(0)),
            children,
        }
    }

    #[test]
    fn the_tree_draws_branches_and_says_why_something_is_not_ready() {
        let root = node(
            "Project",
            "acme",
            ready("False", "ChildrenNotReady", "Cluster/local is not ready"),
            vec![node(
                "Cluster",
                "local",
                ready("False", "ChildrenNotReady", "VirtualCluster/dev is not ready"),
                vec![
                    node(
                        "VirtualCluster",
                        "dev",
                        ready("True", "Ready", "all ready"),
                        vec![node("Application", "web", None, vec![])],
                    ),
                    node("VirtualCluster", "prod", ready("True", "Ready", ""), vec![]),
                ],
            )],
        );
        let expected = "\
NAMESPACE   NAME                          READY   REASON             AGE   MESSAGE
-           Project/acme                  False   ChildrenNotReady   5m    Cluster/local is not ready
-           └── Cluster/local             False   ChildrenNotReady   5m    VirtualCluster/dev is not ready
-               ├── VirtualCluster/dev    True    Ready              5m
shop            │   └── Application/web   -       -                  5m    no Ready condition yet: is its executor running?
-               └── VirtualCluster/prod   True    Ready              5m
";
        assert_eq!(tree(&root, at(300)), expected);
    }

    fn run(name: &str, created: i64, status: TaskRunStatus, initiator: Option<Initiator>) -> TaskRun {
        let mut run = TaskRun::new(
            name,
            TaskRunSpec {
                task_ref: TaskRef { name: "task1".into() },
                initiator,
                data: None,
                joined: vec![],
            },
        );
        run.metadata.creation_timestamp = Some(Time(at(created)));
        run.status = Some(status);
        run
    }

    #[test]
    fn runs_are_listed_oldest_first_with_durations_and_results() {
        let failed = TaskRunStatus {
            phase: Some(TaskRunPhase::Failed),
            start_time: Some(MicroTime(at(1))),
            completion_time: Some(MicroTime(at(66))),
            exit_code: Some(2),
            attempt: 0,
            message: Some("boom\nand more".into()),
            ..Default::default()
        };
        let running = TaskRunStatus {
            phase: Some(TaskRunPhase::Running),
            start_time: Some(MicroTime(at(100))),
            attempt: 0,
            ..Default::default()
        };
        let by_ignitor = Initiator {
            kind: InitiatorKind::Ignitor,
            name: "ignitor1".into(),
            run: None,
        };
        let printed = runs(
            "task1",
            &[
                run("task1-b", 99, running, None),
                run("task1-a", 0, failed, Some(by_ignitor)),
            ],
            at(130),
        );
        let expected = "\
NAME      PHASE     INITIATOR          ATTEMPT   STARTED   DURATION     EXIT   MESSAGE
task1-a   Failed    ignitor/ignitor1   1         2m ago    1m5s         2      boom
task1-b   Running   by hand            1         30s ago   30s so far   -
";
        assert_eq!(printed, expected);
        assert_eq!(
            runs("task1", &[], at(0)),
            "Task task1 has no TaskRuns (yet, or its history limits removed them)\n"
        );
    }

    #[test]
    fn ages_and_durations_read_like_kubectl() {
        assert_eq!(age(SignedDuration::from_secs(45)), "45s");
        assert_eq!(age(SignedDuration::from_secs(3 * 60 + 5)), "3m");
        assert_eq!(age(SignedDuration::from_secs(3 * 3600)), "3h");
        assert_eq!(age(SignedDuration::from_secs(3 * 86_400)), "3d");
        assert_eq!(age(SignedDuration::from_secs(-5)), "0s");
        assert_eq!(elapsed(SignedDuration::from_secs(3_723)), "1h2m3s");
        assert_eq!(shorten("abcdef", 4), "abc…");
        assert_eq!(
            weights(&[
                VersionWeight {
                    version: "v1".into(),
                    weight: 80
                },
                VersionWeight {
                    version: "v2".into(),
                    weight: 20
                }
            ]),
            "v1 80%, v2 20%"
        );
    }
}
