//! The Prometheus harness itself: a real Prometheus scrapes the test's exporter, PromQL sees
//! what the test set, follows its changes, and everything stops when told to.

// A test that cannot proceed should stop right there, with the error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use orrery_e2e::prometheus::{Exporter, Prometheus};
use orrery_e2e::{Deadline, poll_until};

/// Polls `promql` until it returns `expected` (`None`: no series).
async fn wait_for(prometheus: &Prometheus, promql: &str, expected: Option<f64>) {
    poll_until(
        &format!("{promql} to be {expected:?}"),
        Deadline(Duration::from_secs(30)),
        || async {
            match prometheus.query(promql).await {
                Ok(value) if value == expected => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
}

#[tokio::test]
async fn prometheus_scrapes_the_exporter_and_follows_its_values() {
    let exporter = Exporter::start().await.unwrap();
    exporter.set("http_requests_error_ratio", &[("version", "v2")], 0.5);
    exporter.set("http_requests_error_ratio", &[("version", "v1")], 0.01);

    let started = Instant::now();
    let prometheus = Prometheus::start(&[exporter.addr()]).await.unwrap();
    eprintln!("Prometheus ready in {:?} at {}", started.elapsed(), prometheus.url());

    let v2 = r#"http_requests_error_ratio{version="v2"}"#;
    wait_for(&prometheus, v2, Some(0.5)).await;
    eprintln!("first sample visible {:?} after start", started.elapsed());
    wait_for(&prometheus, r#"up{job="orrery-e2e"}"#, Some(1.0)).await;

    // The query follows the exporter.
    exporter.set("http_requests_error_ratio", &[("version", "v2")], 0.25);
    wait_for(&prometheus, v2, Some(0.25)).await;
    wait_for(&prometheus, "sum(http_requests_error_ratio)", Some(0.26)).await;

    // A series the exporter stops reporting goes stale; one never reported is no series.
    exporter.remove("http_requests_error_ratio", &[("version", "v1")]);
    wait_for(&prometheus, r#"http_requests_error_ratio{version="v1"}"#, None).await;
    assert_eq!(prometheus.query("absent_metric_never_exported").await.unwrap(), None);

    // Several series and bad PromQL are errors, not a silently chosen value.
    exporter.set("http_requests_error_ratio", &[("version", "v3")], 0.0);
    wait_for(&prometheus, r#"http_requests_error_ratio{version="v3"}"#, Some(0.0)).await;
    let several = prometheus.query("http_requests_error_ratio").await.unwrap_err();
    assert!(several.to_string().contains("2 series"), "{several:#}");
    let bad = prometheus.query("sum(").await.unwrap_err();
    assert!(bad.to_string().contains("bad_data"), "{bad:#}");

    // A dropped exporter stops serving, kept-alive scrape connection included.
    drop(exporter);
    wait_for(&prometheus, r#"up{job="orrery-e2e"}"#, Some(0.0)).await;

    let url = prometheus.url().to_owned();
    prometheus.stop();
    let refused = reqwest::get(format!("{url}/-/ready"))
        .await
        .expect_err("a stopped Prometheus answers nothing");
    assert!(refused.is_connect(), "{refused:#}");
    eprintln!("whole test took {:?}", started.elapsed());
}
