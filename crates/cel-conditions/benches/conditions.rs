//! Compile and evaluate times of the conditions Orrery evaluates.

use cel_conditions::Expression;
use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::{Value, json};
use std::hint::black_box;

/// The seed's condition (KubeStellar's workload stager example).
const SEED: &str = include_str!("../testdata/seed-condition.cel");

/// A CombinedStatus whose deployments-aggregator reports 1.
const COMBINED_STATUS: &str = include_str!("../testdata/combined-status.yaml");

/// A CombinedStatus of 100 results of 10 rows each, none of which matches,
/// so that `exists` visits every row.
fn large_status() -> Value {
    let results: Vec<Value> = (0..100)
        .map(|i| {
            let rows: Vec<Value> = (0..10)
                .map(|j| json!({"columns": [{"type": "Number", "float": format!("{}", i * 10 + j + 2)}]}))
                .collect();
            json!({"name": "deployments-aggregator", "columnNames": ["count"], "rows": rows})
        })
        .collect();
    json!({
        "apiVersion": "control.kubestellar.io/v1alpha1",
        "kind": "CombinedStatus",
        "metadata": {"name": "x", "namespace": "y"},
        "results": results,
    })
}

fn conditions(c: &mut Criterion) {
    c.bench_function("compile seed condition", |b| {
        b.iter(|| Expression::compile(black_box(SEED), &["combinedStatus"]).expect("compiles"))
    });

    let expr = Expression::compile(SEED, &["combinedStatus"]).expect("compiles");
    let small: Value = serde_yaml::from_str(COMBINED_STATUS).expect("valid YAML");
    assert_eq!(expr.evaluate_bool(&[("combinedStatus", &small)]), Ok(true));
    c.bench_function("evaluate seed condition, 1 result", |b| {
        b.iter(|| expr.evaluate_bool(&[("combinedStatus", black_box(&small))]))
    });

    let large = large_status();
    assert_eq!(expr.evaluate_bool(&[("combinedStatus", &large)]), Ok(false));
    c.bench_function("evaluate seed condition, 100 results x 10 rows", |b| {
        b.iter(|| expr.evaluate_bool(&[("combinedStatus", black_box(&large))]))
    });
    // The part of an evaluation spent checking the input and estimating its cost.
    c.bench_function("estimate cost only, 100 results x 10 rows", |b| {
        b.iter(|| expr.estimate_cost(&[("combinedStatus", black_box(&large))]))
    });
}

criterion_group!(benches, conditions);
criterion_main!(benches);
