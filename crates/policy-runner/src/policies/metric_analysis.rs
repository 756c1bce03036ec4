//! `metric-analysis`: while the route carries some (not all) traffic to a canary, measures a
//! Prometheus query every `interval` (the first an interval after the traffic began) and
//! judges it with CEL; too many failed measurements roll back (for good, while the canary has
//! traffic), too many inconclusive ones hold until a measurement succeeds. Without canary
//! traffic, or once the canary has it all, it is idle and forgets its counts.
//!
//! | parameter | meaning | default |
//! |---|---|---|
//! | `address` | the Prometheus server, `http(s)://host[:port][/path-prefix]`, e.g. `http://prometheus.monitoring:9090` | required |
//! | `query` | PromQL; `{{application}}`, `{{namespace}}`, `{{canary}}`, `{{stable}}` are filled in | required |
//! | `successCondition` | CEL over `result` (a number) | required |
//! | `failureCondition` | CEL over `result`; when given, a measurement meeting neither is inconclusive | `!successCondition` |
//! | `interval` | time between measurements | `30s` |
//! | `failureLimit` | failed measurements since the last success tolerated | 0 |
//! | `inconclusiveLimit` | inconclusive measurements since the last success tolerated | 0 |
//! | `timeout` | how long a query may take | `10s` |
//!
//! A query that fails (Prometheus down, a bad query) stops the pipeline with
//! `MetricsUnavailable`: the traffic in force stays until it answers again. An empty result
//! is inconclusive. The query goes only where `--allowed-egress` allows, always to
//! `<address>/api/v1/query`; of Prometheus' error answers only the error type (`bad_data`,
//! `timeout`, ...) is shown, never their text.

use cel_conditions::Expression;
use crd_types::common::Parameters;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::policy::{
    Answer, Failure, Interval, Outcome, Phase, Policy, Request, Step, held, parameters, rolled_back, saved, weight_of,
};

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Raw {
    address: String,
    query: String,
    success_condition: String,
    failure_condition: Option<String>,
    #[serde(default = "thirty_seconds")]
    interval: Interval,
    #[serde(default)]
    failure_limit: u32,
    #[serde(default)]
    inconclusive_limit: u32,
    #[serde(default = "ten_seconds")]
    timeout: Interval,
}

fn thirty_seconds() -> Interval {
    Interval::seconds(30)
}
fn ten_seconds() -> Interval {
    Interval::seconds(10)
}

/// The parsed parameters, conditions compiled.
#[derive(Clone, Debug)]
pub struct MetricAnalysis {
    raw: Raw,
    success: Expression,
    failure: Option<Expression>,
}

/// The analysis' verdict so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    /// Measuring; nothing against the canary yet.
    Running,
    /// Too many failed measurements.
    Failed,
    /// Too many inconclusive measurements.
    Inconclusive,
}

/// The analysis' counts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisState {
    /// When the route was first seen carrying canary traffic.
    pub traffic_since: Timestamp,
    /// When the last measurement was taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measured_at: Option<Timestamp>,
    /// Its value (none for an empty result).
    pub value: Option<f64>,
    /// Successful measurements.
    pub successes: u32,
    /// Failed measurements in a row.
    pub failures: u32,
    /// Inconclusive measurements in a row.
    pub inconclusives: u32,
    /// The verdict.
    pub verdict: Verdict,
}

/// Parses `metric-analysis`'s parameters and compiles its conditions.
///
/// # Errors
///
/// Unknown or missing parameters, an address that is not http(s), or a condition that does
/// not compile (the message says which and where).
pub fn parse(given: &Parameters) -> Result<Box<dyn Policy>, Failure> {
    let raw: Raw = parameters(given)?;
    if raw.interval < Interval::seconds(1) {
        return Err(Failure::new("InvalidParameters", "interval must be at least 1s"));
    }
    check_address(&raw.address).map_err(|why| Failure::new("InvalidParameters", why))?;
    let compile = |name: &str, source: &str| {
        Expression::compile(source, &["result"])
            .map_err(|error| Failure::new("InvalidExpression", format!("{name}: {error}")))
    };
    let success = compile("successCondition", &raw.success_condition)?;
    let failure = raw
        .failure_condition
        .as_deref()
        .map(|source| compile("failureCondition", source))
        .transpose()?;
    Ok(Box::new(MetricAnalysis { raw, success, failure }))
}

impl MetricAnalysis {
    /// The canary being analysed: one the input gives some but not all traffic, and the route
    /// carries some but not all traffic to (or matches requests to).
    fn canary_with_traffic<'a>(step: &'a Step<'_>) -> Option<&'a str> {
        let canary = step.input.canary.as_deref()?;
        let partial = |weight: i32| (1..100).contains(&weight);
        let asked =
            partial(weight_of(&step.input.weights, canary)) || step.input.matches.iter().any(|m| m.version == canary);
        let carried = partial(weight_of(&step.observed.weights, canary))
            || step.observed.matches.iter().any(|m| m.version == canary);
        (asked && carried && !step.control.promote).then_some(canary)
    }

    /// When the next measurement is due, if one can be.
    fn due(&self, state: &AnalysisState) -> Option<Timestamp> {
        let from = state.measured_at.unwrap_or(state.traffic_since);
        (state.verdict != Verdict::Failed).then(|| from.saturating_add(self.raw.interval.0).unwrap_or(from))
    }

    fn query(&self, step: &Step<'_>, canary: &str) -> String {
        self.raw
            .query
            .replace("{{application}}", &step.observed.application)
            .replace("{{namespace}}", &step.observed.namespace)
            .replace("{{canary}}", canary)
            .replace("{{stable}}", step.input.stable.as_deref().unwrap_or_default())
    }

    /// Success, failure, or neither (inconclusive).
    fn judge(&self, value: Option<f64>) -> Result<Option<bool>, Failure> {
        let Some(value) = value else { return Ok(None) };
        let result = json!(value);
        let evaluate = |name: &str, expression: &Expression| {
            expression
                .evaluate_bool(&[("result", &result)])
                .map_err(|error| Failure::new("InvalidExpression", format!("{name} on {value}: {error}")))
        };
        if evaluate("successCondition", &self.success)? {
            return Ok(Some(true));
        }
        match &self.failure {
            None => Ok(Some(false)),
            Some(failure) => Ok(evaluate("failureCondition", failure)?.then_some(false)),
        }
    }
}

impl Policy for MetricAnalysis {
    fn needs(&self, step: &Step<'_>) -> Option<Request> {
        let canary = Self::canary_with_traffic(step)?;
        let state: AnalysisState = saved(step.state)?;
        let due = self.due(&state)?;
        (step.now >= due).then(|| Request::Query {
            address: self.raw.address.clone(),
            query: self.query(step, canary),
            timeout: self.raw.timeout.std(),
        })
    }

    fn run(&self, step: &Step<'_>, answer: Option<Answer>) -> Result<Outcome, Failure> {
        let input = step.input;
        let Some(canary) = Self::canary_with_traffic(step) else {
            return Ok(Outcome::pass(
                input.clone(),
                Phase::Succeeded,
                "idle: no canary shares the traffic",
            ));
        };
        let mut state = saved(step.state).unwrap_or(AnalysisState {
            traffic_since: step.now,
            measured_at: None,
            value: None,
            successes: 0,
            failures: 0,
            inconclusives: 0,
            verdict: Verdict::Running,
        });
        if let Some(answer) = answer {
            let unavailable =
                |error: String| Failure::new("MetricsUnavailable", format!("querying {}: {error}", self.raw.address));
            let value = sample(&answer.map_err(unavailable)?).map_err(unavailable)?;
            state.measured_at = Some(step.now);
            state.value = value;
            match self.judge(value)? {
                Some(true) => {
                    state.successes += 1;
                    state.failures = 0;
                    state.inconclusives = 0;
                    state.verdict = Verdict::Running;
                }
                Some(false) => state.failures += 1,
                None => state.inconclusives += 1,
            }
            if state.failures > self.raw.failure_limit {
                state.verdict = Verdict::Failed;
            } else if state.inconclusives > self.raw.inconclusive_limit {
                state.verdict = Verdict::Inconclusive;
            }
        }
        let due = self.due(&state);
        let shown = match (state.measured_at, state.value) {
            (None, _) => format!(
                "first measurement at {}",
                due.map(|d| d.to_string()).unwrap_or_default()
            ),
            (Some(_), Some(value)) => format!("measured {value}"),
            (Some(_), None) => "measured no data".to_owned(),
        };
        let counts = format!(
            "{} successful; {} failed and {} inconclusive since the last success",
            state.successes, state.failures, state.inconclusives
        );
        Ok(match state.verdict {
            Verdict::Running => Outcome::pass(
                input.clone(),
                Phase::Progressing,
                format!("{canary}: {shown}; {counts}"),
            ),
            Verdict::Failed => {
                let first = step
                    .observed
                    .versions
                    .first()
                    .map(|v| v.name.as_str())
                    .unwrap_or_default();
                Outcome::pass(
                    rolled_back(input, first),
                    Phase::RolledBack,
                    format!("{canary} failed its analysis: {shown}; {counts}"),
                )
            }
            Verdict::Inconclusive => Outcome::pass(
                held(input, step.observed),
                Phase::Holding,
                format!("{canary}: analysis inconclusive, holding: {shown}; {counts}"),
            ),
        }
        .saving(state)
        .waking_at(due))
    }
}

/// Whether `address` is `http(s)://host[:port][/path-prefix]`: a query, fragment or user info
/// would let it reach another path than `<address>/api/v1/query`, or carry credentials.
///
/// # Errors
///
/// What is wrong with it.
pub fn check_address(address: &str) -> Result<(), String> {
    let wrong = |what: &str| {
        Err(format!(
            "address must be http(s)://host[:port][/path-prefix], got {address:?}: {what}"
        ))
    };
    let Ok(url) = reqwest::Url::parse(address) else {
        return wrong("not a URL");
    };
    if !matches!(url.scheme(), "http" | "https") {
        return wrong("not http(s)");
    }
    if url.host_str().is_none_or(str::is_empty) {
        return wrong("no host");
    }
    if url.query().is_some() || address.contains('?') {
        return wrong("it has a query");
    }
    if url.fragment().is_some() || address.contains('#') {
        return wrong("it has a fragment");
    }
    if !url.username().is_empty() || url.password().is_some() {
        return wrong("it has user info");
    }
    Ok(())
}

/// Prometheus' error types (its API's `errorType`), the one part of an error answer shown.
const PROMETHEUS_ERROR_TYPES: [&str; 7] = [
    "bad_data",
    "timeout",
    "canceled",
    "execution",
    "internal",
    "unavailable",
    "not_found",
];

/// The one number of a Prometheus instant-query response: a scalar, or the first sample of a
/// vector (`None` when the vector is empty).
///
/// # Errors
///
/// An error status, or a response of another shape.
pub fn sample(response: &Value) -> Result<Option<f64>, String> {
    if response["status"] != "success" {
        // Its free text may quote anything the address serves: only the error type is shown.
        let kind = response["errorType"]
            .as_str()
            .filter(|kind| PROMETHEUS_ERROR_TYPES.contains(kind))
            .unwrap_or("unknown");
        return Err(format!("Prometheus answered an error of type {kind}"));
    }
    let data = &response["data"];
    let pair = match data["resultType"].as_str() {
        Some("scalar") => &data["result"],
        Some("vector") => match data["result"].as_array().and_then(|r| r.first()) {
            Some(first) => &first["value"],
            None => return Ok(None),
        },
        Some(kind @ ("matrix" | "string")) => return Err(format!("a {kind} result is not one number")),
        _ => return Err("the answer is not an instant-query result".into()),
    };
    let text = pair[1].as_str().ok_or("a sample without a value")?;
    let value: f64 = text.parse().map_err(|_| "a sample that is not a number".to_owned())?;
    Ok(value.is_finite().then_some(value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Control, all_to, split};
    use crate::testing::{answer, at, observed, params};
    use crd_types::hierarchy::TrafficDocument;

    fn analysis(extra: Value) -> Box<dyn Policy> {
        let mut p = json!({
            "address": "http://prometheus:9090",
            "query": "errors{app=\"{{application}}\",version=\"{{canary}}\"}",
            "successCondition": "result < 0.05",
            "interval": "30s",
        });
        p.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        parse(&params(p)).unwrap()
    }

    fn vector(value: &str) -> Answer {
        Ok(
            json!({"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}, "value": [1.0, value]}]}}),
        )
    }

    fn canary_input(weight: i32) -> TrafficDocument {
        TrafficDocument {
            weights: split("v1", "v2", weight),
            stable: Some("v1".into()),
            canary: Some("v2".into()),
            ..TrafficDocument::default()
        }
    }

    /// Runs with the route carrying `carried`% to v2; what it asked for, and the outcome.
    fn step_run(
        policy: &dyn Policy,
        asked: i32,
        carried: i32,
        state: Option<&Value>,
        now: i64,
        reply: Option<Answer>,
    ) -> (Option<Request>, Result<Outcome, Failure>) {
        let world = observed(&[("v1", 1, 1), ("v2", 1, 1)], &[("v1", 100 - carried), ("v2", carried)]);
        let input = canary_input(asked);
        let step = Step {
            input: &input,
            observed: &world,
            state,
            now: at(now),
            control: Control::default(),
        };
        let request = policy.needs(&step);
        (
            request,
            answer(policy, &input, &world, state, at(now), Control::default(), reply),
        )
    }

    #[test]
    fn measures_an_interval_after_the_route_carries_canary_traffic_with_the_names_filled_in() {
        let policy = analysis(json!({}));
        let (asked, not_yet) = step_run(&*policy, 10, 0, None, 0, None);
        assert_eq!(
            (asked, not_yet.unwrap().state),
            (None, None),
            "the route carries no canary traffic yet"
        );
        let (asked, started) = step_run(&*policy, 10, 10, None, 0, None);
        assert_eq!(asked, None, "the first measurement waits an interval");
        let started = started.unwrap();
        assert_eq!(started.wake_at, Some(at(30)));
        assert!(started.message.contains("first measurement at"), "{}", started.message);
        let (asked, _) = step_run(&*policy, 10, 10, started.state.as_ref(), 30, None);
        assert_eq!(
            asked,
            Some(Request::Query {
                address: "http://prometheus:9090".into(),
                query: "errors{app=\"shop\",version=\"v2\"}".into(),
                timeout: std::time::Duration::from_secs(10),
            })
        );
    }

    #[test]
    fn good_values_pass_and_bad_ones_roll_back_past_the_limit() {
        let policy = analysis(json!({"failureLimit": 1}));
        let (_, start) = step_run(&*policy, 10, 10, None, 0, None);
        let (_, good) = step_run(
            &*policy,
            10,
            10,
            start.unwrap().state.as_ref(),
            30,
            Some(vector("0.01")),
        );
        let good = good.unwrap();
        assert_eq!(good.phase, Phase::Progressing);
        assert_eq!(good.output, canary_input(10));
        assert_eq!(good.wake_at, Some(at(60)));
        let (_, bad) = step_run(&*policy, 10, 10, good.state.as_ref(), 60, Some(vector("0.5")));
        let bad = bad.unwrap();
        assert_eq!(bad.phase, Phase::Progressing, "one failure is tolerated");
        let (_, worse) = step_run(&*policy, 10, 10, bad.state.as_ref(), 90, Some(vector("0.5")));
        let worse = worse.unwrap();
        assert_eq!(worse.phase, Phase::RolledBack);
        assert_eq!(worse.output.weights, all_to("v1"));
        assert!(
            worse.message.contains("v2 failed its analysis: measured 0.5"),
            "{}",
            worse.message
        );
        // Final while the canary has traffic: no more queries; forgotten once it has none.
        let (asked, later) = step_run(&*policy, 10, 10, worse.state.as_ref(), 500, None);
        assert_eq!((asked, later.unwrap().phase), (None, Phase::RolledBack));
        let (_, idle) = step_run(&*policy, 0, 10, worse.state.as_ref(), 600, None);
        let idle = idle.unwrap();
        assert_eq!((idle.phase, idle.state), (Phase::Succeeded, None));
    }

    #[test]
    fn a_promoted_canary_is_not_analysed() {
        let policy = analysis(json!({}));
        let (asked, outcome) = step_run(&*policy, 100, 100, None, 0, None);
        assert_eq!(asked, None);
        assert_eq!(outcome.unwrap().state, None, "nothing saved: nothing written at rest");
    }

    #[test]
    fn inconclusive_holds_until_a_measurement_succeeds() {
        let policy = analysis(json!({"failureCondition": "result > 0.2"}));
        let (_, start) = step_run(&*policy, 10, 10, None, 0, None);
        let (_, unsure) = step_run(&*policy, 10, 10, start.unwrap().state.as_ref(), 30, Some(vector("0.1")));
        let unsure = unsure.unwrap();
        assert_eq!(unsure.phase, Phase::Holding);
        let empty = Ok(json!({"status": "success", "data": {"resultType": "vector", "result": []}}));
        let (asked, still) = step_run(&*policy, 10, 10, unsure.state.as_ref(), 60, Some(empty));
        assert!(asked.is_some(), "an inconclusive analysis measures again");
        let still = still.unwrap();
        assert_eq!(still.phase, Phase::Holding);
        assert!(still.message.contains("no data"), "{}", still.message);
        let (_, good) = step_run(&*policy, 10, 10, still.state.as_ref(), 90, Some(vector("0.01")));
        assert_eq!(good.unwrap().phase, Phase::Progressing);
    }

    #[test]
    fn prometheus_down_stops_the_pipeline_with_a_reason() {
        let policy = analysis(json!({}));
        let (_, start) = step_run(&*policy, 10, 10, None, 0, None);
        let state = start.unwrap().state;
        let (_, down) = step_run(
            &*policy,
            10,
            10,
            state.as_ref(),
            30,
            Some(Err("connection refused".into())),
        );
        let failure = down.unwrap_err();
        assert_eq!(failure.reason, "MetricsUnavailable");
        assert_eq!(failure.message, "querying http://prometheus:9090: connection refused");
        let error = Ok(json!({"status": "error", "errorType": "bad_data", "error": "parse error at char 3"}));
        let (_, refused) = step_run(&*policy, 10, 10, state.as_ref(), 30, Some(error));
        assert_eq!(
            refused.unwrap_err().message,
            "querying http://prometheus:9090: Prometheus answered an error of type bad_data"
        );
        // Another service's JSON: none of its text.
        let other = Ok(json!({"status": "denied", "errorType": "token abc123", "error": "secret"}));
        let (_, refused) = step_run(&*policy, 10, 10, state.as_ref(), 30, Some(other));
        let message = refused.unwrap_err().message;
        assert!(!message.contains("abc123") && !message.contains("secret"), "{message}");
    }

    #[test]
    fn bad_parameters_are_refused_with_their_name() {
        let p = params(json!({"address": "http://p:9090", "query": "up", "successCondition": "result <"}));
        let failure = parse(&p).unwrap_err();
        assert_eq!(failure.reason, "InvalidExpression");
        assert!(failure.message.starts_with("successCondition: "), "{}", failure.message);
        let p = params(json!({"address": "p:9090", "query": "up", "successCondition": "true"}));
        assert!(parse(&p).unwrap_err().message.contains("http(s)://host"));
        let p = params(json!({"address": "http://p:9090/x?", "query": "up", "successCondition": "true"}));
        assert_eq!(parse(&p).unwrap_err().reason, "InvalidParameters");
        let p = params(json!({"address": "http://p:9090", "query": "up", "successCondition": "true", "interval": 0}));
        assert!(parse(&p).unwrap_err().message.contains("at least 1s"));
    }

    #[test]
    fn an_address_is_a_host_and_a_path_prefix_and_nothing_else() {
        for good in [
            "http://prometheus.monitoring:9090",
            "https://metrics.example.com/prometheus/",
            "http://10.0.0.7",
        ] {
            assert_eq!(check_address(good), Ok(()), "{good}");
        }
        for (bad, why) in [
            ("http://internal/admin?x=", "it has a query"),
            ("http://internal/admin?", "it has a query"),
            ("http://internal/secret#", "it has a fragment"),
            ("http://user:pw@prometheus:9090", "it has user info"),
            ("ftp://prometheus", "not http(s)"),
            ("prometheus:9090", "not http(s)"),
            ("http://", "not a URL"),
        ] {
            let error = check_address(bad).unwrap_err();
            assert!(error.ends_with(why), "{bad}: {error}");
        }
    }

    #[test]
    fn samples_from_scalars_and_vectors() {
        let scalar = json!({"status": "success", "data": {"resultType": "scalar", "result": [1.0, "2.5"]}});
        assert_eq!(sample(&scalar), Ok(Some(2.5)));
        let matrix = json!({"status": "success", "data": {"resultType": "matrix", "result": []}});
        assert!(sample(&matrix).unwrap_err().contains("matrix"));
        let text = json!({"status": "success", "data": {"resultType": "scalar", "result": [1.0, "hunter2"]}});
        assert_eq!(sample(&text), Err("a sample that is not a number".into()));
        let nan = json!({"status": "success", "data": {"resultType": "scalar", "result": [1.0, "NaN"]}});
        assert_eq!(sample(&nan), Ok(None));
    }
}
