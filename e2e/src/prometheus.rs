//! A real Prometheus server for tests, and an [`Exporter`] whose gauges the test sets, so
//! metric-driven behaviour (analysis, alerts) is tested against real scraping and real PromQL.
//!
//! ```no_run
//! # async fn t() -> anyhow::Result<()> {
//! use orrery_e2e::prometheus::{Exporter, Prometheus};
//! let exporter = Exporter::start().await?;
//! exporter.set("http_requests_error_ratio", &[("version", "v2")], 0.5);
//! let prometheus = Prometheus::start(&[exporter.addr()]).await?; // scrapes every second
//! let ratio = prometheus.query(r#"http_requests_error_ratio{version="v2"}"#).await?;
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};

use crate::process::KilledOnDrop;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long [`Prometheus::start`] waits for readiness and first scrapes; both take about 5 s.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The Prometheus binary: `$ORRERY_PROMETHEUS`, or built (once, cached) by `prometheus/fetch.sh`.
pub fn binary() -> anyhow::Result<PathBuf> {
    crate::control_plane::cached_tool("ORRERY_PROMETHEUS", "prometheus/fetch.sh")
}

/// Series of one metric name: sorted label pairs to value.
type Series = BTreeMap<Vec<(String, String)>, f64>;

/// An HTTP server on 127.0.0.1 serving `/metrics` in the Prometheus text format, with gauges
/// the test sets: stands in for an application whose metrics a controller reads through
/// Prometheus. Stops when dropped.
#[derive(Debug)]
pub struct Exporter {
    addr: SocketAddr,
    gauges: Arc<Mutex<BTreeMap<String, Series>>>,
    // Dropping it tells the server to stop accepting and to close kept-alive connections
    // (Prometheus keeps its scrape connection open).
    shutdown: Option<oneshot::Sender<()>>,
    server: JoinHandle<()>,
}

impl Exporter {
    /// Starts serving on a free port of 127.0.0.1, with no gauges yet.
    pub async fn start() -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let gauges: Arc<Mutex<BTreeMap<String, Series>>> = Arc::default();
        let (shutdown, stopped) = oneshot::channel::<()>();
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get({
                let gauges = Arc::clone(&gauges);
                move || {
                    let text = render(&gauges.lock().unwrap_or_else(PoisonError::into_inner));
                    async move { ([("content-type", "text/plain; version=0.0.4; charset=utf-8")], text) }
                }
            }),
        );
        let server = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                let _ = stopped.await;
            });
            if let Err(err) = serve.await {
                tracing::warn!("test exporter on {addr} failed: {err}");
            }
        });
        Ok(Self {
            addr,
            gauges,
            shutdown: Some(shutdown),
            server,
        })
    }

    /// The address to scrape (`/metrics` on it).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sets gauge `name{labels}` to `value`; the next scrape sees it. Label order does not
    /// matter. Panics on a name or label Prometheus would reject, since that is a bug in the test.
    pub fn set(&self, name: &str, labels: &[(&str, &str)], value: f64) {
        let key = series_key(name, labels);
        self.lock().entry(name.to_owned()).or_default().insert(key, value);
    }

    /// Removes gauge `name{labels}`, so the series goes stale in Prometheus after the next
    /// scrape (the application stopped reporting it). Removing an unknown series does nothing.
    pub fn remove(&self, name: &str, labels: &[(&str, &str)]) {
        let key = series_key(name, labels);
        let mut gauges = self.lock();
        if let Some(series) = gauges.get_mut(name) {
            series.remove(&key);
            if series.is_empty() {
                gauges.remove(name);
            }
        }
    }

    /// The text `/metrics` currently serves.
    pub fn render(&self) -> String {
        render(&self.lock())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Series>> {
        self.gauges.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        drop(self.shutdown.take());
        // Stops accepting at once rather than when the server task next runs.
        self.server.abort();
    }
}

fn series_key(name: &str, labels: &[(&str, &str)]) -> Vec<(String, String)> {
    assert!(valid_name(name, true), "invalid metric name {name:?}");
    let mut key: Vec<(String, String)> = labels
        .iter()
        .map(|&(label, value)| {
            assert!(
                valid_name(label, false) && !label.starts_with("__"),
                "invalid label name {label:?} of {name}"
            );
            (label.to_owned(), value.to_owned())
        })
        .collect();
    key.sort();
    assert!(
        key.windows(2).all(|pair| pair[0].0 != pair[1].0),
        "duplicate label name in {name}{labels:?}"
    );
    key
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*` for metric names, the same without `:` for label names.
fn valid_name(name: &str, colon: bool) -> bool {
    let allowed = |c: char| c.is_ascii_alphanumeric() || c == '_' || (colon && c == ':');
    name.chars().next().is_some_and(|c| !c.is_ascii_digit()) && name.chars().all(allowed)
}

/// The Prometheus text exposition format (0.0.4) of `gauges`.
fn render(gauges: &BTreeMap<String, Series>) -> String {
    let mut text = String::new();
    for (name, series) in gauges {
        let _ = writeln!(text, "# TYPE {name} gauge");
        for (labels, value) in series {
            text.push_str(name);
            if !labels.is_empty() {
                let pairs: Vec<String> = labels
                    .iter()
                    .map(|(label, value)| format!("{label}=\"{}\"", escape_label_value(value)))
                    .collect();
                let _ = write!(text, "{{{}}}", pairs.join(","));
            }
            let _ = writeln!(text, " {}", format_value(*value));
        }
    }
    text
}

fn escape_label_value(value: &str) -> String {
    value.replace('\\', r"\\").replace('"', "\\\"").replace('\n', r"\n")
}

fn format_value(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_owned()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else {
        // Debug keeps full precision and uses exponents for large and small magnitudes.
        format!("{value:?}")
    }
}

/// A Prometheus server on a free port of 127.0.0.1, scraping given targets every second, with
/// its data and log in a temporary directory. Killed (and reaped) by [`Prometheus::stop`] or
/// on drop; a test binary killed outright leaves it running.
#[derive(Debug)]
pub struct Prometheus {
    process: KilledOnDrop,
    dir: tempfile::TempDir,
    url: String,
    http: reqwest::Client,
}

impl Prometheus {
    /// Starts Prometheus scraping `/metrics` of `targets` (job `orrery-e2e`) every second,
    /// evaluating rules every second, and returns once it is ready and has scraped every target
    /// once (successfully or not), so what the targets serve now is queryable. That takes about
    /// 5 s: Prometheus hands new targets to its scrapers at most every 5 s. Errors carry the end
    /// of its log.
    pub async fn start(targets: &[SocketAddr]) -> anyhow::Result<Self> {
        let targets: BTreeSet<String> = targets.iter().map(ToString::to_string).collect();
        let count = targets.len();
        let scrape_configs = serde_json::json!([{
            "job_name": "orrery-e2e",
            "static_configs": [{"targets": targets}],
        }]);
        Self::start_with(scrape_configs, count).await
    }

    /// Starts Prometheus with `scrape_configs` (as in its configuration file: service
    /// discovery, relabelling), scraping and evaluating every second, and returns once it is
    /// ready and has scraped `targets` active targets once each, as [`Prometheus::start`].
    pub async fn start_with(scrape_configs: serde_json::Value, targets: usize) -> anyhow::Result<Self> {
        let binary = binary()?;
        let config = serde_json::json!({
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "scrape_configs": scrape_configs,
        });
        let config = serde_yaml::to_string(&config)?;
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
        // The port is picked by binding and releasing it, so another process may take it before
        // Prometheus binds; that shows as an early exit, and a new port is tried.
        let mut attempt = 1;
        loop {
            let mut prometheus = Self::spawn(&binary, &config, http.clone())?;
            match prometheus.wait_scraping(targets).await {
                Ok(()) => return Ok(prometheus),
                Err(err) if attempt < 3 && prometheus.log().contains("address already in use") => {
                    tracing::debug!("Prometheus lost its port, retrying: {err:#}");
                    attempt += 1;
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// Starts Prometheus with `config` in a new temporary directory, on a free port.
    fn spawn(binary: &Path, config: &str, http: reqwest::Client) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("orrery-prometheus-").tempdir()?;
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config)?;
        let log = File::create(dir.path().join("prometheus.log"))?;
        let port = crate::free_port()?;
        let process = Command::new(binary)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            // Hidden flag: the scrapers take new targets every 5 s by default, on top of the
            // discovery's own 5 s throttle.
            .arg("--scrape.discovery-reload-interval=100ms")
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawning {}", binary.display()))?;
        Ok(Self {
            process: process.into(),
            dir,
            url: format!("http://127.0.0.1:{port}"),
            http,
        })
    }

    /// Waits until Prometheus is ready and has scraped each of its `targets` once.
    async fn wait_scraping(&mut self, targets: usize) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.process.try_wait()? {
                bail!(
                    "Prometheus exited with {status} before it was ready; log:\n{}",
                    self.log_tail()
                );
            }
            let last = match self.scraping(targets).await {
                Ok(()) => return Ok(()),
                Err(err) => format!("{err:#}"),
            };
            if started.elapsed() > READY_TIMEOUT {
                bail!(
                    "Prometheus not ready and scraping after {READY_TIMEOUT:?} (last: {last}); log:\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn scraping(&self, targets: usize) -> anyhow::Result<()> {
        self.http
            .get(format!("{}/-/ready", self.url))
            .send()
            .await?
            .error_for_status()?;
        let body: serde_json::Value = self
            .http
            .get(format!("{}/api/v1/targets?state=active", self.url))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let active = body["data"]["activeTargets"].as_array().map_or(&[][..], Vec::as_slice);
        // Health is "unknown" until the first scrape, then "up" or "down".
        let scraped = active.iter().filter(|target| target["health"] != "unknown").count();
        if active.len() != targets || scraped != targets {
            bail!("{} of {targets} targets known, {scraped} scraped", active.len());
        }
        Ok(())
    }

    /// Base URL of the HTTP API, e.g. `http://127.0.0.1:41234`: what a controller under test
    /// is configured with.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The value of instant query `promql` now (`/api/v1/query`): `None` when it selects no
    /// series, an error when it selects several, fails, or Prometheus is not answering.
    pub async fn query(&self, promql: &str) -> anyhow::Result<Option<f64>> {
        let response = self
            .http
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", promql)])
            .send()
            .await
            .with_context(|| format!("querying {promql}"))?;
        let status = response.status();
        let body: serde_json::Value = response
            .json()
            .await
            .with_context(|| format!("query {promql}: HTTP {status}, body not JSON"))?;
        if body["status"] != "success" {
            bail!("query {promql}: HTTP {status}: {} {}", body["errorType"], body["error"]);
        }
        let data = &body["data"];
        let sample = match data["resultType"].as_str() {
            Some("vector") => match data["result"].as_array().map(Vec::as_slice) {
                Some([]) => return Ok(None),
                Some([one]) => &one["value"],
                Some(many) => bail!("query {promql}: {} series, expected at most one: {data}", many.len()),
                None => bail!("query {promql}: result is not a list: {data}"),
            },
            Some("scalar") => &data["result"],
            _ => bail!("query {promql}: expected a vector or scalar result: {data}"),
        };
        // A sample is [unix time, "value"], the value a string so that NaN and ±Inf fit.
        let value = sample[1]
            .as_str()
            .ok_or_else(|| anyhow!("query {promql}: malformed sample {sample}"))?;
        let value = value
            .parse::<f64>()
            .with_context(|| format!("query {promql}: value {value:?}"))?;
        Ok(Some(value))
    }

    /// The log file (stdout and stderr of Prometheus).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("prometheus.log")
    }

    /// The whole log so far, for a failing test's message.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Kills Prometheus and waits for it to exit; its port refuses connections afterwards.
    pub fn stop(self) {
        drop(self);
    }

    fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_text_format() {
        let mut gauges = BTreeMap::new();
        gauges.insert(
            "ratio".to_owned(),
            BTreeMap::from([
                (series_key("ratio", &[("version", "v2"), ("app", "a\"b\\c\nd")]), 0.5),
                (series_key("ratio", &[]), f64::INFINITY),
            ]),
        );
        gauges.insert("up:sum".to_owned(), BTreeMap::from([(vec![], 1e300)]));
        assert_eq!(
            render(&gauges),
            "# TYPE ratio gauge\nratio +Inf\nratio{app=\"a\\\"b\\\\c\\nd\",version=\"v2\"} 0.5\n\
             # TYPE up:sum gauge\nup:sum 1e300\n"
        );
    }

    #[test]
    #[should_panic(expected = "invalid label name")]
    fn rejects_a_bad_label_name() {
        series_key("ratio", &[("1abc", "x")]);
    }
}
