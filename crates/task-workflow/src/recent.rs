//! Tasks read recently, so a Task that is running is read from the API server once per change
//! rather than once per reconcile. Tasks are cached by metadata only (see [`crate::triggers`]);
//! the metadata's resourceVersion tells whether a copy held here is still current. Idle Tasks
//! are not kept, and a Task nothing has asked for in a while is forgotten.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crd_types::workflow::Task;
use kube::ResourceExt;
use orrery_runtime::Lock;

/// How long a Task nothing asks for is kept.
pub const KEPT_FOR: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct Copy {
    task: Arc<Task>,
    /// The resourceVersion our own status write replaced: until the watch shows the write,
    /// the cache still shows this one, and the copy is newer than the cache.
    written_over: Option<String>,
    used: Instant,
}

/// Copies of Tasks in use, by (namespace, name).
#[derive(Debug, Default)]
pub struct RecentTasks {
    copies: Lock<HashMap<(String, String), Copy>>,
}

impl RecentTasks {
    /// The copy of `name` in `namespace`, if it is at least as new as `cached_version`, the
    /// resourceVersion the Task cache holds.
    pub fn get(&self, namespace: &str, name: &str, cached_version: &str, now: Instant) -> Option<Arc<Task>> {
        let mut copies = self.lock();
        let copy = copies.get_mut(&(namespace.to_owned(), name.to_owned()))?;
        let current = copy.task.resource_version().as_deref() == Some(cached_version)
            || copy.written_over.as_deref() == Some(cached_version);
        if !current {
            return None;
        }
        copy.used = now;
        Some(copy.task.clone())
    }

    /// Keeps `task`, as read from the API server or returned by a status write that replaced
    /// `written_over`.
    pub fn keep(&self, mut task: Task, written_over: Option<String>, now: Instant) -> Arc<Task> {
        orrery_runtime::strip(&mut task);
        let task = Arc::new(task);
        let key = (task.namespace().unwrap_or_default(), task.name_any());
        let mut copies = self.lock();
        // Reading back our own write must not forget what it replaced.
        let written_over = written_over.or_else(|| {
            copies
                .get(&key)
                .filter(|copy| copy.task.resource_version() == task.resource_version())
                .and_then(|copy| copy.written_over.clone())
        });
        let copy = Copy {
            task: task.clone(),
            written_over,
            used: now,
        };
        copies.insert(key, copy);
        task
    }

    /// Drops the copy of a Task that is gone or no longer in use.
    pub fn forget(&self, namespace: &str, name: &str) {
        self.lock().remove(&(namespace.to_owned(), name.to_owned()));
    }

    /// Drops every copy nothing has asked for since [`KEPT_FOR`] before `now`.
    pub fn forget_unused(&self, now: Instant) {
        self.lock().retain(|_, copy| now.duration_since(copy.used) < KEPT_FOR);
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Copy>> {
        self.copies.lock()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::simple_task;

    fn at_version(name: &str, version: &str) -> Task {
        let mut task = simple_task(name);
        task.metadata.resource_version = Some(version.into());
        task
    }

    #[test]
    fn a_copy_serves_while_the_cache_shows_its_version_and_not_after() {
        let recent = RecentTasks::default();
        let now = Instant::now();
        recent.keep(at_version("a", "10"), None, now);
        assert_eq!(
            recent.get("ns", "a", "10", now).unwrap().resource_version().unwrap(),
            "10"
        );
        assert!(recent.get("ns", "a", "11", now).is_none(), "the Task changed since");
        assert!(recent.get("ns", "b", "10", now).is_none());
        assert!(recent.get("other", "a", "10", now).is_none(), "namespaces are apart");
    }

    #[test]
    fn a_status_write_serves_before_and_after_the_cache_sees_it_but_not_once_another_change_lands() {
        let recent = RecentTasks::default();
        let now = Instant::now();
        recent.keep(at_version("a", "11"), Some("10".into()), now);
        assert_eq!(
            recent.get("ns", "a", "10", now).unwrap().resource_version().unwrap(),
            "11"
        );
        assert!(recent.get("ns", "a", "11", now).is_some());
        assert!(
            recent.get("ns", "a", "12", now).is_none(),
            "someone else wrote after us"
        );

        recent.keep(at_version("a", "11"), None, now);
        assert!(
            recent.get("ns", "a", "10", now).is_some(),
            "read back, still newer than the cache"
        );
    }

    #[test]
    fn copies_nothing_asks_for_are_forgotten() {
        let recent = RecentTasks::default();
        let start = Instant::now();
        recent.keep(at_version("a", "1"), None, start);
        recent.keep(at_version("b", "1"), None, start);
        let later = start + KEPT_FOR - Duration::from_secs(1);
        assert!(recent.get("ns", "a", "1", later).is_some());
        recent.forget_unused(start + KEPT_FOR);
        assert_eq!(recent.len(), 1, "a was asked for since, b was not");
        assert!(recent.get("ns", "a", "1", later).is_some());
        recent.forget("ns", "a");
        assert!(recent.is_empty());
    }
}
