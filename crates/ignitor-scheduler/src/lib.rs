//! ignitor-scheduler
