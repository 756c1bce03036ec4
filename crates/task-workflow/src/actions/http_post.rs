//! `http-post`: POST a JSON notification about the finished run.
//! Parameters: `url`, or `urlFrom: {secretKeyRef: {name, key}}` (a Secret in the run's
//! namespace); `timeoutSeconds` (default 10); `retries` (default 3, with doubling backoff
//! from 500 ms, on connection errors and 5xx answers).

use std::time::Duration;

use crd_types::common::Parameters;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::Api;
use serde_json::json;

use super::{Action, ActionContext, only_known, string_param};

pub struct HttpPost;

async fn url(context: &ActionContext<'_>, parameters: &Parameters) -> Result<String, String> {
    if let Some(url) = string_param(parameters, "url")? {
        return Ok(url.to_owned());
    }
    let reference = parameters
        .get("urlFrom")
        .and_then(|u| u.get("secretKeyRef"))
        .ok_or("url or urlFrom.secretKeyRef is required")?;
    let name = reference
        .get("name")
        .and_then(|n| n.as_str())
        .ok_or("urlFrom.secretKeyRef.name is required")?;
    let key = reference
        .get("key")
        .and_then(|k| k.as_str())
        .ok_or("urlFrom.secretKeyRef.key is required")?;
    let secrets: Api<Secret> = Api::namespaced(context.client.clone(), &context.run.namespace().unwrap_or_default());
    let secret = secrets
        .get(name)
        .await
        .map_err(|err| format!("reading Secret {name}: {err}"))?;
    let bytes = secret
        .data
        .and_then(|d| d.get(key).cloned())
        .ok_or_else(|| format!("Secret {name} has no key {key:?}"))?;
    String::from_utf8(bytes.0)
        .map(|s| s.trim().to_owned())
        .map_err(|_| format!("Secret {name} key {key:?} is not UTF-8"))
}

fn number_param(parameters: &Parameters, key: &str, default: u64, max: u64) -> Result<u64, String> {
    match parameters.get(key) {
        None => Ok(default),
        Some(value) => value
            .as_u64()
            .filter(|n| *n <= max)
            .ok_or_else(|| format!("parameter {key:?} must be a whole number up to {max}")),
    }
}

impl Action for HttpPost {
    fn name(&self) -> &'static str {
        "http-post"
    }

    fn run<'a>(
        &'a self,
        context: &'a ActionContext<'a>,
        parameters: &'a Parameters,
    ) -> BoxFuture<'a, Result<String, String>> {
        Box::pin(async move {
            only_known(parameters, &["url", "urlFrom", "timeoutSeconds", "retries"])?;
            let timeout = Duration::from_secs(number_param(parameters, "timeoutSeconds", 10, 300)?.max(1));
            let retries = number_param(parameters, "retries", 3, 10)?;
            let url = url(context, parameters).await?;
            let status = context.run.status.clone().unwrap_or_default();
            let body = json!({
                "task": context.task.name_any(),
                "taskRun": context.run.name_any(),
                "namespace": context.run.namespace(),
                "phase": status.phase,
                "message": status.message,
                "exitCode": status.exit_code,
                "initiator": context.run.spec.initiator,
                "completionTime": status.completion_time,
            });
            let mut delay = Duration::from_millis(500);
            let mut last_error = String::new();
            for attempt in 0..=retries {
                if attempt > 0 {
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                match context.http.post(&url).timeout(timeout).json(&body).send().await {
                    Ok(response) if response.status().is_success() => {
                        return Ok(format!("POST {url}: {}", response.status()));
                    }
                    Ok(response) if response.status().is_server_error() => {
                        last_error = format!("POST {url}: {}", response.status());
                    }
                    // A 4xx will not get better by asking again.
                    Ok(response) => return Err(format!("POST {url}: {}", response.status())),
                    Err(err) => last_error = format!("POST {url}: {err}"),
                }
            }
            Err(format!("{last_error} (after {} attempt(s))", retries + 1))
        })
    }
}
