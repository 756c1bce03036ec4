//! hierarchy-executor: every resource of a Project → Cluster → VirtualCluster → Application
//! hierarchy has an executor that aligns its real objects with its spec, triggers its
//! children, and rolls their readiness up into its own `Ready` condition (Vamp Kubist's
//! executors; Vitess-style templates on the Project).
//!
//! [`registry`] says which executors this controller claims; [`plan`] is the pure core.

pub mod controller;
pub mod gateway;
pub mod plan;
pub mod registry;

pub use controller::run;
