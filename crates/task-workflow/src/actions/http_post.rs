//! `http-post`: POST a JSON notification about the finished run.
//! Parameters: `url`, or `urlFrom: {secretKeyRef: {name, key}}` (a Secret in the run's
//! namespace); `timeoutSeconds` (default 10); `retries` (default 3, with doubling backoff
//! from 500 ms, on connection errors and 5xx answers).
//!
//! The POST goes only where `--allowed-egress` allows (a refusal is not retried). A URL read
//! from a Secret is never shown: not in errors, not in the result, whoever reads the run may
//! not be allowed to read the Secret. Nothing of the answer but its status is shown.

use std::time::Duration;

use crd_types::common::Parameters;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::Api;
use serde_json::json;

use orrery_runtime::egress::SendError;

use super::{Action, ActionContext, only_known, string_param};

pub struct HttpPost;

/// Where to POST.
enum Target {
    /// The Task's `url`, shown as it is.
    Given(reqwest::Url),
    /// A URL read from a Secret, shown only as where it came from.
    FromSecret {
        url: reqwest::Url,
        name: String,
        key: String,
    },
}

impl Target {
    /// The Task's URL, checked.
    fn given(text: &str) -> Result<Target, String> {
        match reqwest::Url::parse(text) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => Ok(Target::Given(url)),
            Ok(_) => Err(format!("url {text:?} is not an http(s) URL")),
            Err(error) => Err(format!("url {text:?} is not a valid URL: {error}")),
        }
    }

    /// The URL in `value`, the content of key `key` of Secret `name`; errors say nothing of it.
    fn from_secret(name: &str, key: &str, value: Vec<u8>) -> Result<Target, String> {
        let source = secret_source(name, key);
        let text = String::from_utf8(value).map_err(|_| format!("{source} is not UTF-8"))?;
        // Not the parser's error: it may quote part of the URL.
        let url = reqwest::Url::parse(text.trim()).map_err(|_| format!("{source} is not a valid URL"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("{source} is not an http(s) URL"));
        }
        Ok(Target::FromSecret {
            url,
            name: name.to_owned(),
            key: key.to_owned(),
        })
    }

    fn url(&self) -> &reqwest::Url {
        match self {
            Target::Given(url) | Target::FromSecret { url, .. } => url,
        }
    }

    /// How messages name it.
    fn shown(&self) -> String {
        match self {
            Target::Given(url) => url.to_string(),
            Target::FromSecret { name, key, .. } => secret_source(name, key),
        }
    }

    /// Why a POST failed, in words that carry neither a Secret's URL nor anything the remote
    /// end sent.
    fn failure(&self, error: &SendError) -> String {
        let shown = self.shown();
        match error {
            SendError::Refused(refused) => match self {
                Target::Given(_) => refused.to_string(),
                Target::FromSecret { .. } => refused.redacted(&shown),
            },
            SendError::Failed(error) if error.is_timeout() => format!("POST {shown}: timed out"),
            SendError::Failed(error) if error.is_connect() => format!("POST {shown}: cannot connect"),
            SendError::Failed(_) => format!("POST {shown}: the request failed"),
        }
    }
}

/// Shows what messages show, so no debug output carries a Secret's URL.
impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown())
    }
}

fn secret_source(name: &str, key: &str) -> String {
    format!("the URL from Secret {name} key {key}")
}

async fn target(context: &ActionContext<'_>, parameters: &Parameters) -> Result<Target, String> {
    if let Some(url) = string_param(parameters, "url")? {
        return Target::given(url);
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
    Target::from_secret(name, key, bytes.0)
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
            let target = target(context, parameters).await?;
            let shown = target.shown();
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
                let request = context.http.post(target.url().clone()).timeout(timeout).json(&body);
                match context.http.send(request).await {
                    Ok(response) if response.status().is_success() => {
                        return Ok(format!("POST {shown}: {}", response.status()));
                    }
                    Ok(response) if response.status().is_server_error() => {
                        last_error = format!("POST {shown}: {}", response.status());
                    }
                    // A 4xx (or a redirect, not followed) will not get better by asking again.
                    Ok(response) => return Err(format!("POST {shown}: {}", response.status())),
                    // Nor will an address that is not allowed.
                    Err(error @ SendError::Refused(_)) => return Err(target.failure(&error)),
                    Err(error) => last_error = target.failure(&error),
                }
            }
            Err(format!("{last_error} (after {} attempt(s))", retries + 1))
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use orrery_runtime::Egress;

    use super::*;

    const SECRET_URL: &str = "http://user:s3cret@hooks.internal.example:8443/t/abc123";

    #[test]
    fn a_bad_url_from_a_secret_is_reported_without_any_of_it() {
        for value in [
            "http://user:s3cret@exa mple.com/abc123",
            "http://s3cret:99999/abc123",
            "s3cret/abc123",
        ] {
            let error = Target::from_secret("hook", "url", value.as_bytes().to_vec()).unwrap_err();
            assert_eq!(error, "the URL from Secret hook key url is not a valid URL", "{value}");
        }
        let error = Target::from_secret("hook", "url", b"file:///s3cret".to_vec()).unwrap_err();
        assert_eq!(error, "the URL from Secret hook key url is not an http(s) URL");
        let error = Target::from_secret("hook", "url", vec![0xff, 0xfe]).unwrap_err();
        assert_eq!(error, "the URL from Secret hook key url is not UTF-8");
    }

    #[test]
    fn a_url_from_a_secret_is_shown_only_as_where_it_came_from() {
        let target = Target::from_secret("hook", "url", format!(" {SECRET_URL}\n").into_bytes()).unwrap();
        assert_eq!(target.url().as_str(), SECRET_URL);
        assert_eq!(target.shown(), "the URL from Secret hook key url");
        let given = Target::given("http://hooks.example/x").unwrap();
        assert_eq!(given.shown(), "http://hooks.example/x");
        assert!(Target::given("ftp://hooks.example/x").is_err());
    }

    #[tokio::test]
    async fn a_refused_url_from_a_secret_is_reported_without_its_host_or_address() {
        let target = Target::from_secret("hook", "url", b"http://169.254.169.254/s3cret".to_vec()).unwrap();
        let client = Egress::default().client().unwrap();
        let error = client.send(client.post(target.url().clone())).await.unwrap_err();
        assert_eq!(
            target.failure(&error),
            "egress to the host of the URL from Secret hook key url is not allowed: it is a link-local address; list it in --allowed-egress"
        );
        let given = Target::given("http://169.254.169.254/latest").unwrap();
        let error = client.send(client.post(given.url().clone())).await.unwrap_err();
        assert_eq!(
            given.failure(&error),
            "egress to 169.254.169.254 (169.254.169.254) is not allowed: it is a link-local address; list it in --allowed-egress"
        );
    }
}
