//! The built-in policies, one module each. Adding one is a module with a `parse` function and
//! a line in [`crate::registry::Registry::builtin`].

pub mod canary;
pub mod cel;
pub mod experiment;
pub mod freeze;
pub mod health_gate;
pub mod metric_analysis;
pub mod webhook;
pub mod weight_cap;
