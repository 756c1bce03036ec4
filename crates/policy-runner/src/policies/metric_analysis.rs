//! `metric-analysis`: while a canary has traffic, measures a Prometheus query every
//! `interval` and judges it with CEL; too many failed measurements roll back, too many
//! inconclusive ones hold. Without canary traffic it is idle (and forgets its counts).
//!
//! | parameter | meaning | default |
//! |---|---|---|
//! | `address` | the Prometheus server, e.g. `http://prometheus.monitoring:9090` | required |
//! | `query` | PromQL; `{{application}}`, `{{namespace}}`, `{{canary}}`, `{{stable}}` are filled in | required |
//! | `successCondition` | CEL over `result` (a number) | required |
//! | `failureCondition` | CEL over `result`; when given, a measurement meeting neither is inconclusive | `!successCondition` |
//! | `interval` | time between measurements | `30s` |
//! | `failureLimit` | failed measurements in a row tolerated | 0 |
//! | `inconclusiveLimit` | inconclusive measurements in a row tolerated | 0 |
//! | `timeout` | how long a query may take | `10s` |
//!
//! A query that fails (Prometheus down, a bad query) stops the pipeline with
//! `MetricsUnavailable`: the traffic in force stays until it answers again. An empty result
//! is inconclusive.

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
    /// When the last measurement was taken.
    pub measured_at: Timestamp,
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
    if !(raw.address.starts_with("http://") || raw.address.starts_with("https://")) {
        return Err(Failure::new(
            "InvalidParameters",
            format!("address must be an http(s) URL, got {:?}", raw.address),
        ));
    }
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
    /// The canary with traffic, if any: what is being analysed.
    fn canary_with_traffic<'a>(step: &'a Step<'_>) -> Option<&'a str> {
        let canary = step.input.canary.as_deref()?;
        (weight_of(&step.input.weights, canary) > 0 || step.input.matches.iter().any(|m| m.version == canary))
            .then_some(canary)
    }

    fn due(&self, state: Option<&AnalysisState>, now: Timestamp) -> bool {
        state.is_none_or(|s| {
            s.verdict == Verdict::Running && now >= s.measured_at.saturating_add(self.raw.interval.0).unwrap_or(now)
        })
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
        let state: Option<AnalysisState> = saved(step.state);
        (self.due(state.as_ref(), step.now) && !step.control.promote).then(|| Request::Query {
            address: self.raw.address.clone(),
            query: self.query(step, canary),
            timeout: self.raw.timeout.std(),
        })
    }

    fn run(&self, step: &Step<'_>, answer: Option<Answer>) -> Result<Outcome, Failure> {
        let input = step.input;
        let Some(canary) = Self::canary_with_traffic(step).filter(|_| !step.control.promote) else {
            return Ok(Outcome::pass(
                input.clone(),
                Phase::Succeeded,
                "idle: no canary has traffic",
            ));
        };
        let mut state: Option<AnalysisState> = saved(step.state);
        if let Some(answer) = answer {
            let response = answer.map_err(|error| {
                Failure::new("MetricsUnavailable", format!("querying {}: {error}", self.raw.address))
            })?;
            let value = sample(&response).map_err(|error| {
                Failure::new("MetricsUnavailable", format!("querying {}: {error}", self.raw.address))
            })?;
            let mut next = state.unwrap_or(AnalysisState {
                measured_at: step.now,
                value: None,
                successes: 0,
                failures: 0,
                inconclusives: 0,
                verdict: Verdict::Running,
            });
            next.measured_at = step.now;
            next.value = value;
            match self.judge(value)? {
                Some(true) => {
                    next.successes += 1;
                    next.failures = 0;
                    next.inconclusives = 0;
                }
                Some(false) => next.failures += 1,
                None => next.inconclusives += 1,
            }
            if next.failures > self.raw.failure_limit {
                next.verdict = Verdict::Failed;
            } else if next.inconclusives > self.raw.inconclusive_limit {
                next.verdict = Verdict::Inconclusive;
            }
            state = Some(next);
        }
        let Some(state) = state else {
            // Not measured yet and not due: nothing to say against the canary.
            return Ok(Outcome::pass(
                input.clone(),
                Phase::Progressing,
                format!("analysing {canary}"),
            ));
        };
        let shown = state.value.map_or_else(|| "no data".to_owned(), |v| v.to_string());
        let counts = format!(
            "{} successful, {} failed and {} inconclusive in a row",
            state.successes, state.failures, state.inconclusives
        );
        let next = state.measured_at.saturating_add(self.raw.interval.0).ok();
        Ok(match state.verdict {
            Verdict::Running => Outcome::pass(
                input.clone(),
                Phase::Progressing,
                format!("{canary}: measured {shown}; {counts}"),
            )
            .waking_at(next),
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
                    format!("{canary} failed its analysis: measured {shown}; {counts}"),
                )
            }
            Verdict::Inconclusive => Outcome::pass(
                held(input, step.observed),
                Phase::Holding,
                format!("{canary}: analysis inconclusive, holding: measured {shown}; {counts}"),
            ),
        }
        .saving(state))
    }
}

/// The one number of a Prometheus instant-query response: a scalar, or the first sample of a
/// vector (`None` when the vector is empty).
///
/// # Errors
///
/// An error status, or a response of another shape.
pub fn sample(response: &Value) -> Result<Option<f64>, String> {
    if response["status"] != "success" {
        return Err(format!(
            "Prometheus answered {}: {}",
            response["errorType"].as_str().unwrap_or("an error"),
            response["error"].as_str().unwrap_or("no message")
        ));
    }
    let data = &response["data"];
    let pair = match data["resultType"].as_str() {
        Some("scalar") => &data["result"],
        Some("vector") => match data["result"].as_array().and_then(|r| r.first()) {
            Some(first) => &first["value"],
            None => return Ok(None),
        },
        other => return Err(format!("a {} result is not one number", other.unwrap_or("missing"))),
    };
    let text = pair[1].as_str().ok_or("a sample without a value")?;
    let value: f64 = text.parse().map_err(|_| format!("{text:?} is not a number"))?;
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

    fn step_run(
        policy: &dyn Policy,
        input: &TrafficDocument,
        state: Option<&Value>,
        now: i64,
        reply: Option<Answer>,
    ) -> Result<Outcome, Failure> {
        let world = observed(&[("v1", 1, 1), ("v2", 1, 1)], &[]);
        answer(policy, input, &world, state, at(now), Control::default(), reply)
    }

    #[test]
    fn asks_for_its_query_with_the_names_filled_in_when_due() {
        let policy = analysis(json!({}));
        let world = observed(&[("v1", 1, 1), ("v2", 1, 1)], &[]);
        let input = canary_input(10);
        let step = Step {
            input: &input,
            observed: &world,
            state: None,
            now: at(0),
            control: Control::default(),
        };
        assert_eq!(
            policy.needs(&step),
            Some(Request::Query {
                address: "http://prometheus:9090".into(),
                query: "errors{app=\"shop\",version=\"v2\"}".into(),
                timeout: std::time::Duration::from_secs(10),
            })
        );
        let idle = canary_input(0);
        let step = Step { input: &idle, ..step };
        assert_eq!(policy.needs(&step), None, "no canary traffic, nothing to measure");
    }

    #[test]
    fn good_values_pass_and_bad_ones_roll_back_past_the_limit() {
        let policy = analysis(json!({"failureLimit": 1}));
        let input = canary_input(10);
        let good = step_run(&*policy, &input, None, 0, Some(vector("0.01"))).unwrap();
        assert_eq!(good.phase, Phase::Progressing);
        assert_eq!(good.output, input);
        assert_eq!(good.wake_at, Some(at(30)));
        let bad = step_run(&*policy, &input, good.state.as_ref(), 30, Some(vector("0.5"))).unwrap();
        assert_eq!(bad.phase, Phase::Progressing, "one failure is tolerated");
        let worse = step_run(&*policy, &input, bad.state.as_ref(), 60, Some(vector("0.5"))).unwrap();
        assert_eq!(worse.phase, Phase::RolledBack);
        assert_eq!(worse.output.weights, all_to("v1"));
        assert!(
            worse.message.contains("v2 failed its analysis: measured 0.5"),
            "{}",
            worse.message
        );
        // Sticky while the canary has traffic; forgotten once it has none.
        let later = step_run(&*policy, &input, worse.state.as_ref(), 90, None).unwrap();
        assert_eq!(later.phase, Phase::RolledBack);
        let idle = step_run(&*policy, &canary_input(0), worse.state.as_ref(), 120, None).unwrap();
        assert_eq!((idle.phase, idle.state), (Phase::Succeeded, None));
    }

    #[test]
    fn neither_condition_is_inconclusive_and_holds() {
        let policy = analysis(json!({"failureCondition": "result > 0.2"}));
        let input = canary_input(10);
        let outcome = step_run(&*policy, &input, None, 0, Some(vector("0.1"))).unwrap();
        assert_eq!(outcome.phase, Phase::Holding);
        let empty = Ok(json!({"status": "success", "data": {"resultType": "vector", "result": []}}));
        let outcome = step_run(&*policy, &input, None, 0, Some(empty)).unwrap();
        assert_eq!(outcome.phase, Phase::Holding);
        assert!(outcome.message.contains("no data"));
    }

    #[test]
    fn prometheus_down_stops_the_pipeline_with_a_reason() {
        let policy = analysis(json!({}));
        let failure = step_run(
            &*policy,
            &canary_input(10),
            None,
            0,
            Some(Err("connection refused".into())),
        )
        .unwrap_err();
        assert_eq!(failure.reason, "MetricsUnavailable");
        assert_eq!(failure.message, "querying http://prometheus:9090: connection refused");
        let error = Ok(json!({"status": "error", "errorType": "bad_data", "error": "parse error at char 3"}));
        let failure = step_run(&*policy, &canary_input(10), None, 0, Some(error)).unwrap_err();
        assert!(failure.message.contains("bad_data: parse error"), "{}", failure.message);
    }

    #[test]
    fn a_condition_that_does_not_compile_is_refused_with_its_name() {
        let p = params(json!({"address": "http://p:9090", "query": "up", "successCondition": "result <"}));
        let failure = parse(&p).unwrap_err();
        assert_eq!(failure.reason, "InvalidExpression");
        assert!(failure.message.starts_with("successCondition: "), "{}", failure.message);
        let p = params(json!({"address": "p:9090", "query": "up", "successCondition": "true"}));
        assert!(parse(&p).unwrap_err().message.contains("http(s) URL"));
    }

    #[test]
    fn samples_from_scalars_and_vectors() {
        let scalar = json!({"status": "success", "data": {"resultType": "scalar", "result": [1.0, "2.5"]}});
        assert_eq!(sample(&scalar), Ok(Some(2.5)));
        let matrix = json!({"status": "success", "data": {"resultType": "matrix", "result": []}});
        assert!(sample(&matrix).unwrap_err().contains("matrix"));
        let nan = json!({"status": "success", "data": {"resultType": "scalar", "result": [1.0, "NaN"]}});
        assert_eq!(sample(&nan), Ok(None));
    }
}
