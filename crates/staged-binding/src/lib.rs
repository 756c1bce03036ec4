//! staged-binding moves a workload through stages of clusters, KubeStellar's
//! StagedBindingPolicy: each stage is a KubeStellar BindingPolicy, and the next takes over when
//! the stage's CEL `condition` holds for the CombinedStatus of every workload object its
//! `filter` picks. [`plan::plan`] decides; [`controller`] does the I/O.

pub mod controller;
pub mod expressions;
pub mod plan;

pub use controller::run;
