//! task-workflow runs Tasks, the ORCA way: a Task runs its pod template to completion when an
//! Ignitor in `startOnIgnition` fires, or a Task in `startOnSuccess`/`startOnFailure` finishes
//! that way. Each run is a TaskRun with a name derived from its trigger; its pod gets
//! `ORCA_INITIATOR` and `ORCA_DATA` (the predecessor's termination message or the Ignitor's
//! data). Beyond ORCA: joins, retries, a loop guard, deadlines, concurrency policies, history
//! limits, and success/failure actions.
//!
//! Pure planners decide ([`task_plan`], [`run_plan`], [`handoff`], [`gate`]); the
//! [`controller`] module does the I/O.

pub mod actions;
pub mod attempt_pod;
pub mod controller;
pub mod gate;
pub mod handoff;
pub mod naming;
pub mod pod;
pub mod recent;
pub mod run_plan;
pub mod task_plan;
pub mod triggers;

#[cfg(test)]
mod testing;

pub use controller::run;
