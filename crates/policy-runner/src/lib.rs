//! policy-runner
