//! What starts each Task: the one part of a Task's spec looked up across Tasks (which Tasks an
//! Ignitor's firing or a Task's finishing concerns). Tasks are cached by metadata only, so this
//! index is all that stays of their specs between reconciles: a Task that nothing starts costs
//! nothing here.

use std::collections::HashMap;
use std::sync::RwLock;

use crd_types::workflow::{JoinMode, Task};
use kube::ResourceExt;
use kube::runtime::watcher::Event;

/// A Task's triggers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Starts {
    /// `startOnIgnition`.
    ignitors: Vec<String>,
    /// `startOnSuccess` and `startOnFailure`.
    tasks: Vec<String>,
    /// Whether it joins its predecessors (all of them, or a condition over their results).
    joins: bool,
}

impl Starts {
    fn of(task: &Task) -> Option<Starts> {
        let spec = &task.spec;
        let starts = Starts {
            ignitors: spec.start_on_ignition.clone(),
            tasks: spec
                .start_on_success
                .iter()
                .chain(&spec.start_on_failure)
                .cloned()
                .collect(),
            joins: spec
                .join
                .as_ref()
                .is_some_and(|j| j.mode != JoinMode::AnyOf || j.condition.is_some()),
        };
        (starts != Starts::default()).then_some(starts)
    }
}

/// (namespace, name) of a Task.
type Key = (String, String);

fn key(task: &Task) -> Key {
    (task.namespace().unwrap_or_default(), task.name_any())
}

#[derive(Debug, Default)]
struct Index {
    current: HashMap<Key, Starts>,
    /// Filled while the watch lists again; replaces `current` when the list is complete.
    relisting: Option<HashMap<Key, Starts>>,
}

/// The triggers of every Task that has one, kept up to date from the Task watch.
#[derive(Debug, Default)]
pub struct Triggers {
    index: RwLock<Index>,
}

impl Triggers {
    /// Follows one event of the Task watch, as a reflector's store does.
    pub fn apply(&self, event: &Event<Task>) {
        let mut index = self.index.write().unwrap_or_else(|p| p.into_inner());
        match event {
            Event::Apply(task) => set(&mut index.current, task),
            Event::Delete(task) => {
                index.current.remove(&key(task));
            }
            Event::Init => index.relisting = Some(HashMap::new()),
            Event::InitApply(task) => set(index.relisting.get_or_insert_default(), task),
            Event::InitDone => {
                if let Some(listed) = index.relisting.take() {
                    index.current = listed;
                }
            }
        }
    }

    /// The Tasks in `namespace` that `ignitor`'s firings start.
    pub fn started_by_ignitor(&self, namespace: &str, ignitor: &str) -> Vec<String> {
        self.matching(namespace, |starts| starts.ignitors.iter().any(|i| i == ignitor))
    }

    /// The Tasks in `namespace` that `task`'s finishing starts (on success or on failure).
    pub fn started_after(&self, namespace: &str, task: &str) -> Vec<String> {
        self.matching(namespace, |starts| starts.tasks.iter().any(|t| t == task))
    }

    /// Whether a Task in `namespace` that `task`'s finishing starts joins it with others: then
    /// every predecessor's result must be visible before any hands off.
    pub fn joined_after(&self, namespace: &str, task: &str) -> bool {
        let index = self.index.read().unwrap_or_else(|p| p.into_inner());
        index
            .current
            .iter()
            .any(|((ns, _), starts)| ns == namespace && starts.joins && starts.tasks.iter().any(|t| t == task))
    }

    fn matching(&self, namespace: &str, wanted: impl Fn(&Starts) -> bool) -> Vec<String> {
        let index = self.index.read().unwrap_or_else(|p| p.into_inner());
        let mut names: Vec<String> = index
            .current
            .iter()
            .filter(|((ns, _), starts)| ns == namespace && wanted(starts))
            .map(|((_, name), _)| name.clone())
            .collect();
        names.sort();
        names
    }
}

fn set(index: &mut HashMap<Key, Starts>, task: &Task) {
    match Starts::of(task) {
        Some(starts) => index.insert(key(task), starts),
        None => index.remove(&key(task)),
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::simple_task;

    fn task(name: &str, ignitors: &[&str], after: &[&str]) -> Task {
        let mut task = simple_task(name);
        task.spec.start_on_ignition = ignitors.iter().map(|s| s.to_string()).collect();
        task.spec.start_on_failure = after.iter().map(|s| s.to_string()).collect();
        task
    }

    #[test]
    fn tasks_are_found_by_what_starts_them_and_forgotten_when_nothing_does() {
        let triggers = Triggers::default();
        triggers.apply(&Event::Apply(task("b", &["nightly"], &["a"])));
        triggers.apply(&Event::Apply(task("c", &[], &["a"])));
        triggers.apply(&Event::Apply(task("idle", &[], &[])));
        assert_eq!(triggers.started_by_ignitor("ns", "nightly"), ["b"]);
        assert_eq!(triggers.started_after("ns", "a"), ["b", "c"]);
        assert!(!triggers.joined_after("ns", "a"));
        let mut join = task("d", &[], &["a", "x"]);
        join.spec.join = serde_json::from_value(serde_json::json!({"mode": "AllOf"})).unwrap();
        triggers.apply(&Event::Apply(join));
        assert!(triggers.joined_after("ns", "a") && triggers.joined_after("ns", "x"));
        triggers.apply(&Event::Delete(task("d", &[], &[])));
        assert!(triggers.started_after("other", "a").is_empty(), "namespaces are apart");

        triggers.apply(&Event::Apply(task("b", &[], &[])));
        triggers.apply(&Event::Delete(task("c", &[], &["a"])));
        assert!(triggers.started_after("ns", "a").is_empty());
        assert!(
            triggers.index.read().unwrap().current.is_empty(),
            "a Task nothing starts is not kept"
        );
    }

    #[test]
    fn a_relist_replaces_the_index_only_once_complete() {
        let triggers = Triggers::default();
        triggers.apply(&Event::Apply(task("gone", &["nightly"], &[])));
        triggers.apply(&Event::Init);
        triggers.apply(&Event::InitApply(task("new", &["nightly"], &[])));
        assert_eq!(triggers.started_by_ignitor("ns", "nightly"), ["gone"], "mid-list");
        triggers.apply(&Event::InitDone);
        assert_eq!(triggers.started_by_ignitor("ns", "nightly"), ["new"]);
    }
}
