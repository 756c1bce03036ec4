//! `health-gate`: passes its input on while every version it sends traffic to (other than the
//! stable one) is healthy; when one is not, it holds the traffic in force or rolls back
//! (Kubist's health-based canary).
//!
//! | parameter | meaning | default |
//! |---|---|---|
//! | `onFailure` | `Rollback` (all traffic to stable) or `Hold` (keep the traffic in force) | `Rollback` |
//! | `minReadyPercent` | the share of a version's replicas that must be ready | 100 |
//! | `maxRestarts` | container restarts a version may have, when the executor reports them | none |
//! | `gracePeriod` | how long a version may be unhealthy (holding meanwhile) before `onFailure` | `0s` |
//!
//! The stable version is the one the input names (a `canary` before it says), else the first.

use crd_types::common::Parameters;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::policy::{Answer, Failure, Interval, Outcome, Phase, Policy, Step, held, parameters, rolled_back, saved};

/// What to do about an unhealthy version.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub enum OnFailure {
    /// All traffic to the stable version.
    #[default]
    Rollback,
    /// Keep the traffic in force.
    Hold,
}

/// The parsed parameters.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HealthGate {
    #[serde(default)]
    on_failure: OnFailure,
    #[serde(default = "hundred")]
    min_ready_percent: i32,
    max_restarts: Option<i32>,
    #[serde(default = "no_grace")]
    grace_period: Interval,
}

fn hundred() -> i32 {
    100
}
fn no_grace() -> Interval {
    Interval::seconds(0)
}

/// Since when a version has been unhealthy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthState {
    /// The first run that found a version unhealthy.
    pub unhealthy_since: Timestamp,
}

/// Parses `health-gate`'s parameters.
///
/// # Errors
///
/// Unknown parameters, or a percentage outside 0–100.
pub fn parse(given: &Parameters) -> Result<Box<dyn Policy>, Failure> {
    let gate: HealthGate = parameters(given)?;
    if !(0..=100).contains(&gate.min_ready_percent) {
        return Err(Failure::new(
            "InvalidParameters",
            format!("minReadyPercent must be 0..100, got {}", gate.min_ready_percent),
        ));
    }
    Ok(Box::new(gate))
}

impl Policy for HealthGate {
    fn run(&self, step: &Step<'_>, _: Option<Answer>) -> Result<Outcome, Failure> {
        let input = step.input;
        let observed = step.observed;
        let first = observed.versions.first().map(|v| v.name.as_str()).unwrap_or_default();
        let stable = input.stable.as_deref().unwrap_or(first);
        let serving = input
            .weights
            .iter()
            .filter(|w| w.weight > 0)
            .map(|w| w.version.as_str())
            .chain(input.matches.iter().map(|m| m.version.as_str()));
        let mut troubles: Vec<String> = Vec::new();
        for name in serving.filter(|name| *name != stable) {
            let Some(version) = observed.version(name) else {
                continue;
            };
            if i64::from(version.ready_replicas) * 100 < i64::from(version.replicas) * i64::from(self.min_ready_percent)
            {
                troubles.push(format!(
                    "{name} has {}/{} replicas ready (needs {}%)",
                    version.ready_replicas, version.replicas, self.min_ready_percent
                ));
            } else if let Some(max) = self.max_restarts.filter(|max| version.restarts > *max) {
                troubles.push(format!("{name} restarted {} times (at most {max})", version.restarts));
            }
        }
        troubles.dedup();
        if troubles.is_empty() || step.control.promote {
            let message = if troubles.is_empty() {
                "every version with traffic is healthy".to_owned()
            } else {
                format!("promoted from kubectl despite: {}", troubles.join("; "))
            };
            return Ok(Outcome::pass(input.clone(), Phase::Succeeded, message));
        }
        let trouble = troubles.join("; ");
        let since = saved::<HealthState>(step.state).map_or(step.now, |s| s.unhealthy_since);
        let state = HealthState { unhealthy_since: since };
        let deadline = since.saturating_add(self.grace_period.0).unwrap_or(since);
        if step.now < deadline {
            let message = format!("holding: {trouble}; acting after {deadline}");
            return Ok(Outcome::pass(held(input, observed), Phase::Holding, message)
                .saving(state)
                .waking_at(Some(deadline)));
        }
        Ok(match self.on_failure {
            OnFailure::Rollback => Outcome::pass(rolled_back(input, stable), Phase::RolledBack, trouble).saving(state),
            OnFailure::Hold => {
                Outcome::pass(held(input, observed), Phase::Holding, format!("holding: {trouble}")).saving(state)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{all_to, split};
    use crate::testing::{at, observed, params, run};
    use serde_json::json;

    fn gate(p: serde_json::Value) -> Box<dyn Policy> {
        parse(&params(p)).unwrap()
    }

    #[test]
    fn healthy_versions_pass_the_input_on() {
        let world = observed(&[("v1", 1, 1), ("v2", 2, 2)], &[("v1", 80), ("v2", 20)]);
        let outcome = run(&*gate(json!({})), &world, None, at(0)).unwrap();
        assert_eq!(outcome.phase, Phase::Succeeded);
        assert_eq!(outcome.output.weights, split("v1", "v2", 20));
        assert_eq!(outcome.state, None);
    }

    #[test]
    fn an_unready_version_with_traffic_rolls_back_to_the_first_version() {
        let world = observed(&[("v1", 1, 1), ("v2", 2, 1)], &[("v1", 80), ("v2", 20)]);
        let outcome = run(&*gate(json!({})), &world, None, at(0)).unwrap();
        assert_eq!(outcome.phase, Phase::RolledBack);
        assert_eq!(outcome.output.weights, all_to("v1"));
        assert_eq!(outcome.message, "v2 has 1/2 replicas ready (needs 100%)");
    }

    #[test]
    fn a_version_without_traffic_is_not_judged() {
        let world = observed(&[("v1", 1, 1), ("v2", 2, 0)], &[("v1", 100), ("v2", 0)]);
        let outcome = run(&*gate(json!({})), &world, None, at(0)).unwrap();
        assert_eq!(outcome.phase, Phase::Succeeded);
    }

    #[test]
    fn hold_keeps_the_traffic_in_force_and_a_grace_period_holds_first() {
        let world = observed(&[("v1", 1, 1), ("v2", 2, 0)], &[("v1", 90), ("v2", 10)]);
        let hold = run(&*gate(json!({"onFailure": "Hold"})), &world, None, at(0)).unwrap();
        assert_eq!(hold.phase, Phase::Holding);
        assert_eq!(hold.output.weights, split("v1", "v2", 10));

        let graced = gate(json!({"gracePeriod": "30s", "minReadyPercent": 50}));
        let first = run(&*graced, &world, None, at(0)).unwrap();
        assert_eq!(first.phase, Phase::Holding);
        assert_eq!(first.wake_at, Some(at(30)));
        let later = run(&*graced, &world, first.state.as_ref(), at(30)).unwrap();
        assert_eq!(later.phase, Phase::RolledBack);
    }

    #[test]
    fn restarts_count_when_asked() {
        let mut world = observed(&[("v1", 1, 1), ("v2", 1, 1)], &[("v1", 50), ("v2", 50)]);
        world.versions[1].restarts = 4;
        let outcome = run(&*gate(json!({"maxRestarts": 3})), &world, None, at(0)).unwrap();
        assert_eq!(outcome.message, "v2 restarted 4 times (at most 3)");
    }

    #[test]
    fn bad_parameters_are_refused() {
        assert!(parse(&params(json!({"onFailure": "Panic"}))).is_err());
        assert!(parse(&params(json!({"minReadyPercent": 120}))).is_err());
    }
}
