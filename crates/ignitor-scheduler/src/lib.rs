//! ignitor-scheduler fires Ignitors: `NOW` once on creation, an RFC 3339 time once, or a cron
//! schedule (5 fields, optional seconds, macros, IANA time zone) at each occurrence.
//!
//! Firing writes `status.lastIgnition {sequence, time, scheduledTime, data}` and nothing else;
//! task-workflow starts the Tasks that name the Ignitor. The decision is [`plan::plan`], a pure
//! function of the Ignitor and the time; the controller sleeps until the next firing.

pub mod controller;
pub mod plan;
pub mod schedule;

pub use controller::run;
