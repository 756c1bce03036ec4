//! The pipeline's only I/O besides the API server: Prometheus queries and webhook calls, sent
//! only where the operator allows (`--allowed-egress`, see [`orrery_runtime::egress`]).
//!
//! Nothing of an answer that is not what was asked for reaches a status: an error says the
//! HTTP status and a fixed description, never text from the body, as the address may be a
//! service the resource's author could not read from.

use std::future::Future;

use orrery_runtime::Egress;
use orrery_runtime::egress::HttpClient;

use crate::pipeline::Outside;
use crate::policy::{Answer, Request};

/// The most a webhook or Prometheus answer may weigh: a policy result is small.
const MAX_ANSWER_BYTES: usize = 1 << 20;

/// Fetches over HTTP with one shared connection pool.
#[derive(Clone, Debug)]
pub struct Http {
    client: HttpClient,
}

impl Http {
    /// A client that sends only where `egress` allows.
    ///
    /// # Errors
    ///
    /// The TLS backend could not start.
    pub fn new(egress: &Egress) -> Result<Self, reqwest::Error> {
        Ok(Http {
            client: egress.client()?,
        })
    }
}

impl Outside for Http {
    fn fetch(&self, request: Request) -> impl Future<Output = Answer> + Send {
        let client = self.client.clone();
        async move {
            let is_query = matches!(request, Request::Query { .. });
            let what = if is_query { "query" } else { "call" };
            let builder = match request {
                Request::Query {
                    address,
                    query,
                    timeout,
                } => client
                    .get(parse_url(&format!("{}/api/v1/query", address.trim_end_matches('/')))?)
                    .query(&[("query", query)])
                    .timeout(timeout),
                Request::Post { url, body, timeout } => client.post(parse_url(&url)?).json(&body).timeout(timeout),
            };
            let answer = client.fetch_json(builder, what, MAX_ANSWER_BYTES).await?;
            let status = answer.status;
            match answer.json {
                Some(value) if status.is_success() => Ok(value),
                // Prometheus answers a refused query as JSON with a 4xx/5xx status; its
                // errorType (a fixed word) is read from it, never its free text.
                Some(value) if is_query && value.get("errorType").is_some() => Ok(value),
                _ if !status.is_success() => Err(format!("HTTP {status}")),
                _ => Err("the answer is not JSON".into()),
            }
        }
    }
}

fn parse_url(text: &str) -> Result<reqwest::Url, String> {
    reqwest::Url::parse(text).map_err(|error| format!("not a valid URL: {error}"))
}
