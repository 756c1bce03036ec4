//! staged-binding
