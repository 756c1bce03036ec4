//! `webhook`: a policy served over HTTP (Metacontroller-lambda style). Each run POSTs
//! `{input, observed, state, parameters}` as JSON to `url` and expects
//! `{output, state?, message?}` back; the answer is checked before it is used, and a slow or
//! garbled answer stops the pipeline with what is in force kept. It runs on every kind.
//! The call goes only where `--allowed-egress` allows, and an answer that is not a policy
//! result is reported as such, without any of its text.
//!
//! | parameter | meaning | default |
//! |---|---|---|
//! | `url` | where to POST | required |
//! | `timeout` | how long to wait, at most `30s` | `10s` |
//! | `values` | anything, passed on in `parameters` | none |

use crd_types::common::Parameters;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::policy::{Answer, Document, Failure, Interval, Outcome, Phase, Policy, Request, Step, as_json, parameters};

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // `values` reaches the webhook through `parameters`.
struct Raw {
    url: String,
    #[serde(default = "ten_seconds")]
    timeout: Interval,
    values: Option<Value>,
}

fn ten_seconds() -> Interval {
    Interval::seconds(10)
}

/// The parsed parameters.
#[derive(Clone, Debug)]
pub struct Webhook {
    raw: Raw,
    parameters: Value,
}

/// What a webhook must answer.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, bound = "D: Document")]
struct Reply<D> {
    output: D,
    state: Option<Value>,
    message: Option<String>,
}

/// Parses `webhook`'s parameters.
///
/// # Errors
///
/// Unknown parameters, a URL that is not http(s), or a timeout above 30 s.
pub fn parse<D: Document>(given: &Parameters) -> Result<Box<dyn Policy<D>>, Failure> {
    let raw: Raw = parameters(given)?;
    let valid = reqwest::Url::parse(&raw.url).is_ok_and(|url| matches!(url.scheme(), "http" | "https"));
    if !valid {
        return Err(Failure::new(
            "InvalidParameters",
            format!("url must be an http(s) URL, got {:?}", raw.url),
        ));
    }
    if raw.timeout > Interval::seconds(30) {
        return Err(Failure::new("InvalidParameters", "timeout must be at most 30s"));
    }
    Ok(Box::new(Webhook {
        raw,
        parameters: as_json(given),
    }))
}

impl<D: Document> Policy<D> for Webhook {
    fn needs(&self, step: &Step<'_, D>) -> Option<Request> {
        Some(Request::Post {
            url: self.raw.url.clone(),
            body: json!({
                "input": step.input,
                "observed": step.observed,
                "state": step.state,
                "parameters": self.parameters,
            }),
            timeout: self.raw.timeout.std(),
        })
    }

    fn run(&self, _: &Step<'_, D>, answer: Option<Answer>) -> Result<Outcome<D>, Failure> {
        let url = &self.raw.url;
        let answer = answer
            .unwrap_or_else(|| Err("not called".into()))
            .map_err(|error| Failure::new("WebhookFailed", format!("{url}: {error}")))?;
        // Not the serde error: it would quote the answer's field names.
        let reply: Reply<D> = serde_json::from_value(answer).map_err(|_| {
            Failure::new(
                "WebhookFailed",
                format!("{url}: the webhook's answer is not a valid policy result"),
            )
        })?;
        let message: String = reply
            .message
            .unwrap_or_else(|| format!("answered by {url}"))
            .chars()
            .take(1024)
            .collect();
        let mut outcome = Outcome::pass(reply.output, Phase::Succeeded, message);
        outcome.state = reply.state.filter(|s| !s.is_null());
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Control, split};
    use crate::testing::{answer, at, observed, params};
    use crd_types::hierarchy::TrafficDocument;

    fn webhook() -> Box<dyn Policy> {
        parse(&params(
            json!({"url": "http://hook.test/policy", "values": {"team": "a"}}),
        ))
        .unwrap()
    }

    #[test]
    fn posts_everything_and_uses_a_good_answer() {
        let policy = webhook();
        let world = observed(&[("v1", 1, 1), ("v2", 1, 1)], &[("v1", 100)]);
        let input = TrafficDocument::default();
        let step = Step {
            input: &input,
            observed: &world,
            state: None,
            now: at(0),
            control: Control::default(),
        };
        let Some(Request::Post { body, .. }) = policy.needs(&step) else {
            panic!("a webhook posts")
        };
        assert_eq!(body["parameters"]["values"]["team"], "a");
        assert_eq!(body["observed"]["application"], "shop");
        let reply = Ok(
            json!({"output": {"weights": [{"version": "v1", "weight": 70}, {"version": "v2", "weight": 30}]}, "state": {"n": 1}}),
        );
        let outcome = answer(&*policy, &input, &world, None, at(0), Control::default(), Some(reply)).unwrap();
        assert_eq!(outcome.output.weights, split("v1", "v2", 30));
        assert_eq!(outcome.state, Some(json!({"n": 1})));
    }

    #[test]
    fn a_timeout_or_garbage_stops_the_pipeline() {
        let policy = webhook();
        let world = observed(&[("v1", 1, 1)], &[("v1", 100)]);
        let input = TrafficDocument::default();
        let run =
            |reply: Answer| answer(&*policy, &input, &world, None, at(0), Control::default(), Some(reply)).unwrap_err();
        let timeout = run(Err("timed out after 10s".into()));
        assert_eq!(timeout.message, "http://hook.test/policy: timed out after 10s");
        let garbage = run(Ok(json!({"weights": [], "secretField": "x"})));
        assert_eq!(
            garbage.message, "http://hook.test/policy: the webhook's answer is not a valid policy result",
            "nothing of the answer is echoed"
        );
        assert!(parse::<TrafficDocument>(&params(json!({"url": "ftp://x"}))).is_err());
        assert!(parse::<TrafficDocument>(&params(json!({"url": "http://"}))).is_err());
        assert!(parse::<TrafficDocument>(&params(json!({"url": "http://x", "timeout": "1m"}))).is_err());
    }
}
