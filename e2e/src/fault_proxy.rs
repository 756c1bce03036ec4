//! A fault proxy between clients and the API server: Toxiproxy (a Go program, built once per
//! machine by `e2e/toxiproxy/fetch.sh`), driven over its HTTP API. Clients given
//! [`FaultProxy::config_for`] reach the API server through it; its toxics then reset their
//! connections, delay them, stall them, starve their bandwidth or cut their streams after a
//! number of bytes (a watch cut mid-event). TLS passes through untouched: the proxy listens on
//! 127.0.0.1, which the API server's certificate names.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use kube::Config;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::control_plane::cached_tool;
use crate::free_port;
use crate::process::KilledOnDrop;
use crate::wait::{Deadline, until};

/// The Toxiproxy server binary: `$ORRERY_TOXIPROXY`, or built (once, cached).
pub fn binary() -> anyhow::Result<PathBuf> {
    cached_tool("ORRERY_TOXIPROXY", "toxiproxy/fetch.sh")
}

/// The name of the one proxy: to the API server.
const PROXY: &str = "api-server";

/// How long a change to the proxy may take before the run gives up on Toxiproxy.
const CHANGE_PATIENCE: Duration = Duration::from_secs(300);

/// A network fault, as one Toxiproxy toxic on the connections to the API server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Toxic {
    /// Every connection reset (TCP RST) as soon as it carries data.
    ResetPeer,
    /// Each chunk delayed 300 ms ± 200 ms on its way back.
    Latency,
    /// Nothing gets through, and connections close after 3 s: a half-open network.
    Timeout,
    /// Responses trickle at 16 KB/s.
    Bandwidth,
    /// Each connection cut after its first 8 KiB back: a watch stream ends mid-event.
    LimitData,
    /// Responses sliced into small packets, each a little delayed.
    Slicer,
}

impl Toxic {
    /// Every kind of toxic.
    pub const ALL: [Toxic; 6] = [
        Toxic::ResetPeer,
        Toxic::Latency,
        Toxic::Timeout,
        Toxic::Bandwidth,
        Toxic::LimitData,
        Toxic::Slicer,
    ];

    /// Its name in Toxiproxy's API, and how a report names it.
    pub fn name(self) -> &'static str {
        match self {
            Toxic::ResetPeer => "reset_peer",
            Toxic::Latency => "latency",
            Toxic::Timeout => "timeout",
            Toxic::Bandwidth => "bandwidth",
            Toxic::LimitData => "limit_data",
            Toxic::Slicer => "slicer",
        }
    }

    fn body(self) -> Value {
        let (stream, attributes) = match self {
            Toxic::ResetPeer => ("upstream", json!({"timeout": 0})),
            Toxic::Latency => ("downstream", json!({"latency": 300, "jitter": 200})),
            Toxic::Timeout => ("upstream", json!({"timeout": 3000})),
            Toxic::Bandwidth => ("downstream", json!({"rate": 16})),
            Toxic::LimitData => ("downstream", json!({"bytes": 8192})),
            Toxic::Slicer => (
                "downstream",
                json!({"average_size": 64, "size_variation": 32, "delay": 2000}),
            ),
        };
        json!({
            "name": self.name(),
            "type": self.name(),
            "stream": stream,
            "toxicity": 1.0,
            "attributes": attributes,
        })
    }
}

/// A running Toxiproxy with one proxy to the API server; killed when dropped.
#[derive(Debug)]
pub struct FaultProxy {
    _toxiproxy: KilledOnDrop,
    api: String,
    listen: SocketAddr,
    http: reqwest::Client,
}

impl FaultProxy {
    /// Starts Toxiproxy with a proxy to the API server `config` names, its log in `log`.
    pub async fn start(config: &Config, log: &std::path::Path) -> anyhow::Result<Self> {
        let upstream = config
            .cluster_url
            .authority()
            .context("the API server URL has no host and port")?
            .to_string();
        let port = free_port()?;
        let log = std::fs::File::create(log)?;
        let child = Command::new(binary()?)
            .args(["-host", "127.0.0.1", "-port", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting toxiproxy")?;
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
        let mut proxy = FaultProxy {
            _toxiproxy: child.into(),
            api: format!("http://127.0.0.1:{port}"),
            listen: "127.0.0.1:0".parse()?,
            http,
        };
        until("toxiproxy to answer", Deadline(Duration::from_secs(30)), || async {
            proxy
                .call(reqwest::Method::GET, "/version", None)
                .await
                .map_err(|e| e.to_string())
        })
        .await?;
        let listen = format!("127.0.0.1:{}", free_port()?);
        let created = proxy
            .call(
                reqwest::Method::POST,
                "/proxies",
                Some(json!({"name": PROXY, "listen": listen, "upstream": upstream, "enabled": true})),
            )
            .await?;
        proxy.listen = created["listen"]
            .as_str()
            .unwrap_or(&listen)
            .parse()
            .context("toxiproxy's listen address")?;
        Ok(proxy)
    }

    /// The API server's URL through this proxy.
    pub fn url(&self) -> String {
        format!("https://{}", self.listen)
    }

    /// `config` with its API server reached through this proxy.
    pub fn config_for(&self, config: &Config) -> anyhow::Result<Config> {
        let mut config = config.clone();
        let path = config
            .cluster_url
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_default();
        config.cluster_url = format!("{}{path}", self.url()).parse()?;
        Ok(config)
    }

    /// Puts `toxic` on every connection, new and open.
    pub async fn add(&self, toxic: Toxic) -> anyhow::Result<()> {
        let path = format!("/proxies/{PROXY}/toxics");
        self.change(reqwest::Method::POST, &path, Some(toxic.body()), StatusCode::CONFLICT)
            .await
    }

    /// Takes `toxic` away again.
    pub async fn remove(&self, toxic: Toxic) -> anyhow::Result<()> {
        let path = format!("/proxies/{PROXY}/toxics/{}", toxic.name());
        self.change(reqwest::Method::DELETE, &path, None, StatusCode::NOT_FOUND)
            .await
    }

    /// Cuts every connection and refuses new ones (`false`), or lets them through again.
    pub async fn set_enabled(&self, enabled: bool) -> anyhow::Result<()> {
        let path = format!("/proxies/{PROXY}");
        let body = json!({"enabled": enabled});
        self.change(reqwest::Method::POST, &path, Some(body), StatusCode::OK)
            .await
    }

    /// Makes a change, trying again until it is made: Toxiproxy's API can hang while a toxic
    /// is taken off a stalled connection (its issue #558) and answer a later try. A first try
    /// that timed out may have made the change: an answer of `done_already` (409 to a toxic
    /// added again, 404 to one removed again) means it did.
    async fn change(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        done_already: StatusCode,
    ) -> anyhow::Result<()> {
        let tries = AtomicUsize::new(0);
        let what = format!("toxiproxy to take {method} {path}");
        until(&what, Deadline(CHANGE_PATIENCE), || async {
            tries.fetch_add(1, Ordering::Relaxed);
            match self.send(method.clone(), path, body.clone()).await {
                Ok((status, _)) if status.is_success() || status == done_already => Ok(()),
                Ok((status, text)) => Err(format!("{status}: {text}")),
                Err(err) => Err(format!("{err:#}")),
            }
        })
        .await?;
        let tries = tries.into_inner();
        if tries > 1 {
            eprintln!("chaos: {what} took {tries} tries");
        }
        Ok(())
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let (status, text) = self.send(method.clone(), path, body).await?;
        if !status.is_success() {
            bail!("toxiproxy {method} {path}: {status}: {text}");
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(StatusCode, String)> {
        let mut request = self.http.request(method, format!("{}{path}", self.api));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        Ok((response.status(), response.text().await?))
    }
}
