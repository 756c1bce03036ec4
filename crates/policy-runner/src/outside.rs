//! The pipeline's only I/O besides the API server: Prometheus queries and webhook calls.

use std::future::Future;

use serde_json::Value;

use crate::pipeline::Outside;
use crate::policy::{Answer, Request};

/// The most a webhook or Prometheus answer may weigh: a policy result is small.
const MAX_ANSWER_BYTES: usize = 1 << 20;

/// Fetches over HTTP with one shared connection pool.
#[derive(Clone, Debug, Default)]
pub struct Http {
    client: reqwest::Client,
}

impl Outside for Http {
    fn fetch(&self, request: Request) -> impl Future<Output = Answer> + Send {
        let client = self.client.clone();
        async move {
            let (builder, what) = match request {
                Request::Query {
                    address,
                    query,
                    timeout,
                } => (
                    client
                        .get(format!("{}/api/v1/query", address.trim_end_matches('/')))
                        .query(&[("query", query)])
                        .timeout(timeout),
                    "query",
                ),
                Request::Post { url, body, timeout } => (client.post(url).json(&body).timeout(timeout), "call"),
            };
            let response = builder.send().await.map_err(|error| describe(&error, what))?;
            let status = response.status();
            let bytes = response.bytes().await.map_err(|error| describe(&error, what))?;
            if bytes.len() > MAX_ANSWER_BYTES {
                return Err(format!(
                    "the answer is {} bytes, more than {MAX_ANSWER_BYTES}",
                    bytes.len()
                ));
            }
            let parsed: Result<Value, _> = serde_json::from_slice(&bytes);
            match parsed {
                // Prometheus answers errors as JSON with a 4xx/5xx status: keep its message.
                Ok(value) if status.is_success() || value.get("errorType").is_some() => Ok(value),
                _ if !status.is_success() => Err(format!("HTTP {status}")),
                Ok(value) => Ok(value),
                Err(error) => Err(format!("the answer is not JSON: {error}")),
            }
        }
    }
}

fn describe(error: &reqwest::Error, what: &str) -> String {
    if error.is_timeout() {
        format!("the {what} timed out")
    } else if error.is_connect() {
        format!(
            "cannot connect: {}",
            std::error::Error::source(error).map_or_else(|| error.to_string(), ToString::to_string)
        )
    } else {
        error.to_string()
    }
}
