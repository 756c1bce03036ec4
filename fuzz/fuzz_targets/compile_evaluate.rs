//! Compiles and evaluates arbitrary text: `EXPRESSION`, optionally followed
//! by a NUL and a JSON document bound to `x`. Nothing may panic, abort, or
//! run for long: the cost estimate must stop what would.

#![no_main]

use cel_conditions::{Expression, Limits};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (source, document) = match text.split_once('\0') {
        Some((source, document)) => (source, Some(document)),
        None => (text, None),
    };
    let value = document
        .and_then(|d| serde_json::from_str::<Value>(d).ok())
        .unwrap_or(Value::Null);
    // A small budget keeps each run short; a slow run means the estimate
    // missed some work, which `-timeout` reports.
    let limits = Limits {
        cost_budget: 100_000,
        ..Limits::default()
    };
    if let Ok(expr) = Expression::compile_with_limits(source, &["x"], limits) {
        let _ = expr.evaluate(&[("x", &value)]);
        let _ = expr.evaluate_bool(&[("x", &value)]);
    }
});
