//! task-workflow
