//! The pure core: from a hierarchy resource and what was observed, the objects its executor
//! wants and its readiness. No I/O here.

pub mod application;
pub mod project;
pub mod virtual_cluster;

use std::collections::BTreeMap;

use crd_types::common::{CONDITION_READY, Condition, find_condition};
use crd_types::hierarchy::OWNER_LABEL;

/// A resource's readiness, rolled up from its own objects and its children.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// Everything is as the spec asks.
    Ready,
    /// Something is not: why, naming it.
    NotReady {
        /// A CamelCase reason.
        reason: String,
        /// What is not ready.
        message: String,
    },
}

/// The labels on every object an executor creates for the resource with uid `owner`: how it
/// finds them again to prune, on any cluster (owner references do not cross clusters).
pub fn owned_labels(owner: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (OWNER_LABEL.to_owned(), owner.to_owned()),
        ("app.kubernetes.io/managed-by".to_owned(), "orrery".to_owned()),
    ])
}

/// A child as its parent sees it: kind, name, and its `Ready` condition.
#[derive(Clone, Copy, Debug)]
pub struct Child<'a> {
    /// `Cluster`, `VirtualCluster` or `Application`.
    pub kind: &'a str,
    /// Its name (`namespace/name` for an Application).
    pub name: &'a str,
    /// Its conditions.
    pub conditions: &'a [Condition],
}

/// `own` combined with the children's readiness: Ready only when it and every child is. The
/// message names each child that is not, with the child's own message, so a Project's
/// message leads down to the Application at fault.
pub fn roll_up(own: Readiness, children: &[Child<'_>]) -> Readiness {
    if let Readiness::NotReady { .. } = own {
        return own;
    }
    let waiting: Vec<String> = children
        .iter()
        .filter_map(|child| match find_condition(child.conditions, CONDITION_READY) {
            Some(c) if c.status == "True" => None,
            Some(c) if !c.message.is_empty() => Some(format!("{} {}: {}", child.kind, child.name, c.message)),
            _ => Some(format!("{} {}: not ready yet", child.kind, child.name)),
        })
        .collect();
    if waiting.is_empty() {
        Readiness::Ready
    } else {
        Readiness::NotReady {
            reason: "ChildrenNotReady".into(),
            message: waiting.join("; "),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crd_types::common::Time;
    use k8s_openapi::jiff::Timestamp;

    fn ready(status: bool, message: &str) -> Vec<Condition> {
        vec![Condition {
            type_: CONDITION_READY.into(),
            status: if status { "True" } else { "False" }.into(),
            reason: "Test".into(),
            message: message.into(),
            observed_generation: None,
            last_transition_time: Time(Timestamp::UNIX_EPOCH),
        }]
    }

    #[test]
    fn ready_when_itself_and_every_child_is() {
        let (a, b) = (ready(true, ""), ready(true, ""));
        let children = [
            Child {
                kind: "VirtualCluster",
                name: "a",
                conditions: &a,
            },
            Child {
                kind: "VirtualCluster",
                name: "b",
                conditions: &b,
            },
        ];
        assert_eq!(roll_up(Readiness::Ready, &children), Readiness::Ready);
    }

    #[test]
    fn the_message_leads_to_the_child_at_fault() {
        let (a, b, none) = (
            ready(true, ""),
            ready(false, "Application team-a/shop: version v2 has 0/2 replicas ready"),
            vec![],
        );
        let children = [
            Child {
                kind: "VirtualCluster",
                name: "a",
                conditions: &a,
            },
            Child {
                kind: "VirtualCluster",
                name: "b",
                conditions: &b,
            },
            Child {
                kind: "VirtualCluster",
                name: "c",
                conditions: &none,
            },
        ];
        assert_eq!(
            roll_up(Readiness::Ready, &children),
            Readiness::NotReady {
                reason: "ChildrenNotReady".into(),
                message: "VirtualCluster b: Application team-a/shop: version v2 has 0/2 replicas ready; VirtualCluster c: not ready yet".into()
            }
        );
    }

    #[test]
    fn its_own_trouble_comes_first() {
        let own = Readiness::NotReady {
            reason: "Unreachable".into(),
            message: "connection refused".into(),
        };
        assert_eq!(roll_up(own.clone(), &[]), own);
    }
}
