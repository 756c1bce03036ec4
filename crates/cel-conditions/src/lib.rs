//! cel-conditions
