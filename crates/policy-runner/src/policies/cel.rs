//! `cel`: a policy written as a CEL expression, no Rust needed. `expression` returns the next
//! document; `state`, if given, returns what to save for next time. Both see `input`,
//! `observed`, `state` and `parameters` (this step's parameters; put your own values under
//! `values`). Expressions run under cel-conditions' limits; the output is checked like any
//! other step's.
//!
//! ```yaml
//! - name: cel
//!   parameters:
//!     expression: >
//!       observed.versions.all(v, v.readyReplicas >= v.replicas) ? input
//!       : {"weights": [{"version": observed.versions[0].name, "weight": 100}]}
//! ```

use cel_conditions::Expression;
use crd_types::common::Parameters;
use serde::Deserialize;
use serde_json::Value;

use crate::policy::{Answer, Document, Failure, Outcome, Phase, Policy, Step, as_json, parameters};

const VARIABLES: &[&str] = &["input", "observed", "state", "parameters"];

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // `values` is read by the expressions, through `parameters`.
struct Raw {
    expression: String,
    state: Option<String>,
    values: Option<Value>,
}

/// The compiled expressions.
#[derive(Clone, Debug)]
pub struct Cel {
    parameters: Value,
    expression: Expression,
    state: Option<Expression>,
}

/// Parses and compiles a `cel` policy.
///
/// # Errors
///
/// Unknown parameters, or an expression that does not compile (which, and where).
pub fn parse<D: Document>(given: &Parameters) -> Result<Box<dyn Policy<D>>, Failure> {
    let raw: Raw = parameters(given)?;
    let compile = |name: &str, source: &str| {
        Expression::compile(source, VARIABLES)
            .map_err(|error| Failure::new("InvalidExpression", format!("{name}: {error}")))
    };
    Ok(Box::new(Cel {
        expression: compile("expression", &raw.expression)?,
        state: raw.state.as_deref().map(|s| compile("state", s)).transpose()?,
        parameters: as_json(given),
    }))
}

impl<D: Document> Policy<D> for Cel {
    fn run(&self, step: &Step<'_, D>, _: Option<Answer>) -> Result<Outcome<D>, Failure> {
        let input = serde_json::to_value(step.input).unwrap_or_default();
        let observed = serde_json::to_value(step.observed).unwrap_or_default();
        let state = step.state.cloned().unwrap_or(Value::Null);
        let bindings = [
            ("input", &input),
            ("observed", &observed),
            ("state", &state),
            ("parameters", &self.parameters),
        ];
        let failed = |name: &'static str| move |error| Failure::new("PolicyFailed", format!("{name}: {error}"));
        let result = self.expression.evaluate(&bindings).map_err(failed("expression"))?;
        let output: D = serde_json::from_value(result.clone()).map_err(|error| {
            Failure::new(
                "InvalidOutput",
                format!(
                    "expression returned {} which is not a document: {error}",
                    excerpt(&result)
                ),
            )
        })?;
        let saved = self
            .state
            .as_ref()
            .map(|s| s.evaluate(&bindings))
            .transpose()
            .map_err(failed("state"))?
            .filter(|s| !s.is_null());
        let mut outcome = Outcome::pass(output, Phase::Succeeded, "computed by its expression");
        outcome.state = saved;
        Ok(outcome)
    }
}

fn excerpt(value: &Value) -> String {
    let text = value.to_string();
    match text.char_indices().nth(120) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{all_to, split};
    use crate::testing::{at, observed, params, run};
    use crd_types::hierarchy::TrafficDocument;
    use serde_json::json;

    #[test]
    fn the_expression_computes_the_document_and_the_state() {
        let policy = parse::<TrafficDocument>(&params(json!({
            "expression": "observed.versions.all(v, v.readyReplicas >= v.replicas) ? input : {'weights': [{'version': observed.versions[0].name, 'weight': 100}]}",
            "state": "{'runs': (state == null ? 0 : state.runs) + 1, 'limit': parameters.values.limit}",
            "values": {"limit": 3},
        })))
        .unwrap();
        let healthy = observed(&[("v1", 1, 1), ("v2", 1, 1)], &[("v1", 50), ("v2", 50)]);
        let outcome = run(&*policy, &healthy, None, at(0)).unwrap();
        assert_eq!(outcome.output.weights, split("v1", "v2", 50));
        assert_eq!(outcome.state, Some(json!({"runs": 1, "limit": 3})));
        let sick = observed(&[("v1", 1, 1), ("v2", 1, 0)], &[("v1", 50), ("v2", 50)]);
        let outcome = run(&*policy, &sick, outcome.state.as_ref(), at(1)).unwrap();
        assert_eq!(outcome.output.weights, all_to("v1"));
        assert_eq!(outcome.state, Some(json!({"runs": 2, "limit": 3})));
    }

    #[test]
    fn bad_expressions_and_outputs_say_what_is_wrong() {
        let failure = parse::<TrafficDocument>(&params(json!({"expression": "input.weights +"}))).unwrap_err();
        assert_eq!(failure.reason, "InvalidExpression");
        assert!(failure.message.starts_with("expression: "), "{}", failure.message);
        let world = observed(&[("v1", 1, 1)], &[("v1", 100)]);
        let not_a_document = parse::<TrafficDocument>(&params(json!({"expression": "42"}))).unwrap();
        let failure = run(&*not_a_document, &world, None, at(0)).unwrap_err();
        assert_eq!(failure.reason, "InvalidOutput");
        assert!(failure.message.contains("returned 42"), "{}", failure.message);
        let runtime = parse::<TrafficDocument>(&params(json!({"expression": "state.missing.field"}))).unwrap();
        assert_eq!(run(&*runtime, &world, None, at(0)).unwrap_err().reason, "PolicyFailed");
    }
}
