//! `weight-cap`: bounds one version's weight; what is above the cap goes to the stable
//! version. After a `canary` it caps the release (which then cannot go further); before one,
//! it caps only what the canary overrides anyway: chain order matters.
//!
//! | parameter | meaning | default |
//! |---|---|---|
//! | `maxWeight` | the most the version may get, 0–100 | required |
//! | `version` | the version capped | the input's canary |

use crd_types::common::Parameters;
use serde::Deserialize;

use crate::policy::{Answer, Failure, Outcome, Phase, Policy, Step, parameters, weight_of};

/// The parsed parameters.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WeightCap {
    max_weight: i32,
    version: Option<String>,
}

/// Parses `weight-cap`'s parameters.
///
/// # Errors
///
/// Unknown parameters, or a cap outside 0–100.
pub fn parse(given: &Parameters) -> Result<Box<dyn Policy>, Failure> {
    let cap: WeightCap = parameters(given)?;
    if !(0..=100).contains(&cap.max_weight) {
        return Err(Failure::new(
            "InvalidParameters",
            format!("maxWeight must be 0..100, got {}", cap.max_weight),
        ));
    }
    Ok(Box::new(cap))
}

impl Policy for WeightCap {
    fn run(&self, step: &Step<'_>, _: Option<Answer>) -> Result<Outcome, Failure> {
        let input = step.input;
        let Some(capped) = self.version.as_deref().or(input.canary.as_deref()) else {
            return Err(Failure::new(
                "InvalidParameters",
                "weight-cap needs a version, or a canary before it",
            ));
        };
        let weight = weight_of(&input.weights, capped);
        if weight <= self.max_weight {
            let message = format!("{capped} at {weight}%, within the cap of {}%", self.max_weight);
            return Ok(Outcome::pass(input.clone(), Phase::Succeeded, message));
        }
        // The excess goes to the stable version, else the heaviest other one.
        let receiver = input
            .stable
            .clone()
            .filter(|s| s != capped)
            .or_else(|| {
                input
                    .weights
                    .iter()
                    .filter(|w| w.version != capped)
                    .max_by_key(|w| w.weight)
                    .map(|w| w.version.clone())
            })
            .or_else(|| {
                step.observed
                    .versions
                    .iter()
                    .find(|v| v.name != capped)
                    .map(|v| v.name.clone())
            });
        let Some(receiver) = receiver else {
            return Err(Failure::new(
                "InvalidParameters",
                format!("{capped} is the only version: nothing can take the weight above the cap"),
            ));
        };
        let excess = weight - self.max_weight;
        let mut output = input.clone();
        for w in &mut output.weights {
            if w.version == capped {
                w.weight = self.max_weight;
            }
        }
        match output.weights.iter_mut().find(|w| w.version == receiver) {
            Some(w) => w.weight += excess,
            None => output.weights.push(crd_types::hierarchy::VersionWeight {
                version: receiver.clone(),
                weight: excess,
            }),
        }
        let message = format!(
            "{capped} capped at {}% (asked {weight}%); {excess}% to {receiver}",
            self.max_weight
        );
        Ok(Outcome::pass(output, Phase::Succeeded, message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::split;
    use crate::testing::{answer, at, observed, params};
    use crd_types::hierarchy::TrafficDocument;
    use serde_json::json;

    fn cap(input: &TrafficDocument, p: serde_json::Value) -> Result<Outcome, Failure> {
        let world = observed(&[("v1", 1, 1), ("v2", 1, 1)], &[]);
        answer(
            &*parse(&params(p)).unwrap(),
            input,
            &world,
            None,
            at(0),
            Default::default(),
            None,
        )
    }

    #[test]
    fn caps_the_canary_and_gives_the_rest_to_stable() {
        let input = TrafficDocument {
            weights: split("v1", "v2", 60),
            stable: Some("v1".into()),
            canary: Some("v2".into()),
            ..TrafficDocument::default()
        };
        let outcome = cap(&input, json!({"maxWeight": 30})).unwrap();
        assert_eq!(outcome.output.weights, split("v1", "v2", 30));
        assert_eq!(outcome.message, "v2 capped at 30% (asked 60%); 30% to v1");
        let under = cap(&input, json!({"maxWeight": 80})).unwrap();
        assert_eq!(under.output, input);
    }

    #[test]
    fn without_a_canary_it_needs_a_version() {
        let input = TrafficDocument {
            weights: split("v1", "v2", 60),
            ..TrafficDocument::default()
        };
        assert!(
            cap(&input, json!({"maxWeight": 30}))
                .unwrap_err()
                .message
                .contains("needs a version")
        );
        let outcome = cap(&input, json!({"maxWeight": 30, "version": "v2"})).unwrap();
        assert_eq!(outcome.output.weights, split("v1", "v2", 30));
        assert!(parse(&params(json!({"maxWeight": 101}))).is_err());
    }
}
