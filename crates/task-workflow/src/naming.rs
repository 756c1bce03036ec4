//! Deterministic names: the same trigger always names the same TaskRun, so a replayed event
//! or a restarted controller finds the run it already created instead of starting another.

/// FNV-1a, 64 bits: stable across builds and platforms, unlike the standard library's hasher.
fn fnv1a(parts: &[&str]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in part.bytes().chain(std::iter::once(0)) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    hash
}

/// Longest task-name prefix kept in a run name: with the suffix it stays a valid label value
/// and pod hostname (63 characters) once the attempt number is added to the pod's name.
const PREFIX: usize = 45;

/// The TaskRun a trigger starts: `<task>-<10 hex digits of the trigger>`.
pub fn run_name(task: &str, trigger: &[&str]) -> String {
    let mut parts = vec![task];
    parts.extend_from_slice(trigger);
    let prefix: String = task.chars().take(PREFIX).collect();
    let prefix = prefix.trim_end_matches(['-', '.']);
    format!("{prefix}-{:010x}", fnv1a(&parts) & 0xff_ffff_ffff)
}

/// The pod of a run's attempt.
pub fn pod_name(run: &str, attempt: i32) -> String {
    format!("{run}-{attempt}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_stable_distinct_and_bounded() {
        let a = run_name("task1", &["Ignitor", "ignitor1", "1"]);
        assert_eq!(a, run_name("task1", &["Ignitor", "ignitor1", "1"]));
        assert_ne!(a, run_name("task1", &["Ignitor", "ignitor1", "2"]));
        // Part boundaries matter: ("ab","c") is not ("a","bc").
        assert_ne!(run_name("t", &["ab", "c"]), run_name("t", &["a", "bc"]));
        assert!(a.starts_with("task1-") && a.len() == "task1-".len() + 10);
        let long = run_name(&"x".repeat(200), &["Task", "y", "z"]);
        assert!(pod_name(&long, 100).len() <= 63, "{long}");
    }

    #[test]
    fn the_hash_does_not_change_between_builds() {
        // Pinned: a changed hash would rename runs and start tasks twice across an upgrade.
        assert_eq!(run_name("task1", &["Ignitor", "ignitor1", "1"]), "task1-ef99dc4563");
    }
}
