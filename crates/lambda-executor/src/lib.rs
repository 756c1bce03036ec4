//! lambda-executor: executors written outside Rust, the "lambda controllers" of the Vitess and
//! Metacontroller way. It claims two executor names for every hierarchy kind:
//!
//! - `webhook`: a sync hook speaking Metacontroller's CompositeController contract ([`hook`]),
//!   so an existing Metacontroller hook runs a Project, Cluster, VirtualCluster or Application
//!   unchanged;
//! - `template`: children written as manifests with CEL in `${...}` ([`template`]), rendered
//!   in the controller with cel-conditions' limits.
//!
//! Either way the desired children are checked ([`plan`]): only the kinds the resource
//! declares in `childResources` (each an admission check of its creator), only in its
//! namespace, never another's object. They are applied server-side with the resource's owner
//! label and reference, what is no longer desired is pruned (only what the resource owns), and
//! the hook's or template's status goes into `status.executorStatus`.

pub mod controller;
pub mod hook;
pub mod lambda;
pub mod plan;
pub mod template;

pub use controller::{FINALIZER, NAME, run};
