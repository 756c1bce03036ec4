//! `experiment`: sends requests carrying a header or a cookie to one version (HTTPRoute
//! matches), and optionally fixes the split of everything else.
//!
//! | parameter | meaning | default |
//! |---|---|---|
//! | `version` | where matching requests go | required |
//! | `headers` | exact header matches, `{name: value}` (all must match) | none |
//! | `cookie` | `{name, value}`: a cookie that must be present | none |
//! | `weights` | `[{version, weight}]` for the rest, summing to 100 | the input's |
//!
//! At least one of `headers` and `cookie` is required.

use std::collections::BTreeMap;

use crd_types::common::Parameters;
use crd_types::hierarchy::{NameValue, RouteMatch, VersionWeight};
use serde::Deserialize;

use crate::policy::{Answer, Failure, Outcome, Phase, Policy, Step, parameters, require_version};

/// The parsed parameters.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Experiment {
    version: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    cookie: Option<NameValue>,
    weights: Option<Vec<VersionWeight>>,
}

/// Parses `experiment`'s parameters.
///
/// # Errors
///
/// Unknown parameters, no match given, or weights that do not sum to 100.
pub fn parse(given: &Parameters) -> Result<Box<dyn Policy>, Failure> {
    let experiment: Experiment = parameters(given)?;
    if experiment.headers.is_empty() && experiment.cookie.is_none() {
        return Err(Failure::new(
            "InvalidParameters",
            "an experiment needs headers or a cookie to match",
        ));
    }
    if let Some(weights) = &experiment.weights {
        let sum: i64 = weights.iter().map(|w| i64::from(w.weight)).sum();
        if sum != 100 || weights.iter().any(|w| w.weight < 0) {
            return Err(Failure::new(
                "InvalidParameters",
                format!("weights must be 0..100 and sum to 100, got a sum of {sum}"),
            ));
        }
    }
    Ok(Box::new(experiment))
}

impl Policy for Experiment {
    fn run(&self, step: &Step<'_>, _: Option<Answer>) -> Result<Outcome, Failure> {
        require_version(step.observed, &self.version, "version")?;
        let mut output = step.input.clone();
        if let Some(weights) = &self.weights {
            for w in weights {
                require_version(step.observed, &w.version, "a weight's version")?;
            }
            output.weights = weights.clone();
        }
        output.matches.push(RouteMatch {
            version: self.version.clone(),
            headers: self
                .headers
                .iter()
                .map(|(name, value)| NameValue {
                    name: name.clone(),
                    value: value.clone(),
                })
                .collect(),
            cookie: self.cookie.clone(),
        });
        let mut what: Vec<String> = self.headers.iter().map(|(n, v)| format!("header {n}: {v}")).collect();
        what.extend(self.cookie.iter().map(|c| format!("cookie {}={}", c.name, c.value)));
        let message = format!("requests with {} go to {}", what.join(" and "), self.version);
        Ok(Outcome::pass(output, Phase::Succeeded, message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::split;
    use crate::testing::{at, observed, params, run};
    use serde_json::json;

    #[test]
    fn adds_a_match_and_keeps_or_fixes_the_split() {
        let world = observed(&[("v1", 1, 1), ("v2", 1, 1)], &[("v1", 100)]);
        let policy = parse(&params(json!({"version": "v2", "headers": {"x-beta": "yes"}}))).unwrap();
        let outcome = run(&*policy, &world, None, at(0)).unwrap();
        assert_eq!(outcome.output.weights, crate::policy::all_to("v1"));
        assert_eq!(outcome.output.matches[0].version, "v2");
        assert_eq!(outcome.output.matches[0].headers[0].name, "x-beta");
        assert_eq!(outcome.message, "requests with header x-beta: yes go to v2");

        let fixed = parse(&params(json!({
            "version": "v2", "cookie": {"name": "beta", "value": "1"},
            "weights": [{"version": "v1", "weight": 90}, {"version": "v2", "weight": 10}],
        })))
        .unwrap();
        let outcome = run(&*fixed, &world, None, at(0)).unwrap();
        assert_eq!(outcome.output.weights, split("v1", "v2", 10));
        assert_eq!(outcome.output.matches[0].cookie.as_ref().unwrap().name, "beta");
    }

    #[test]
    fn refuses_an_experiment_without_a_match_bad_weights_or_an_unknown_version() {
        assert!(
            parse(&params(json!({"version": "v2"})))
                .unwrap_err()
                .message
                .contains("headers or a cookie")
        );
        let bad = json!({"version": "v2", "headers": {"a": "b"}, "weights": [{"version": "v1", "weight": 50}]});
        assert!(parse(&params(bad)).unwrap_err().message.contains("sum of 50"));
        let world = observed(&[("v1", 1, 1)], &[("v1", 100)]);
        let policy = parse(&params(json!({"version": "v2", "headers": {"a": "b"}}))).unwrap();
        assert!(run(&*policy, &world, None, at(0)).is_err());
    }
}
