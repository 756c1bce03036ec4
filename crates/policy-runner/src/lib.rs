//! policy-runner: runs the policy pipelines of hierarchy resources (Vamp Kubist's policies).
//!
//! A resource's `spec.policies` run in order; each gets the previous one's output (an
//! Application's traffic document: weights, matches, which version is stable and which is the
//! canary; a Project's, Cluster's or VirtualCluster's spec document), the observed state, and
//! its own saved state, and returns the next document and state. The pipeline's result goes to
//! `status.policy` (this controller's field manager), stamped with the spec generation it was
//! computed from; hierarchy-executor applies it.
//!
//! - [`policy`]: what a policy is; [`policies`]: the built-in ones, each a pure function;
//! - [`document`]: what flows through a pipeline; [`subject`]: what each kind gives it;
//! - [`pipeline`]: runs a pipeline and plans the status (pure but for the fetches policies ask for);
//! - [`controller`]: the thin I/O around it.

pub mod controller;
pub mod document;
pub mod observed;
pub mod outside;
pub mod pipeline;
pub mod policies;
pub mod policy;
pub mod registry;
pub mod subject;
#[cfg(test)]
mod testing;

/// The controller's name: its field manager and event source.
pub const NAME: &str = "policy-runner";
