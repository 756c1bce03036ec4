//! `canary`: shifts traffic from a stable version to a canary one, `stepWeight` more every
//! `interval` up to `maxWeight`, then promotes it (all traffic). A step is taken only once the
//! previous one is in force in the route and the canary's replicas are all ready, so a slow
//! executor, a later step holding, or a restart never skips one.
//!
//! | parameter | meaning | default |
//! |---|---|---|
//! | `canary` | the version being released | the last version |
//! | `stable` | the version traffic returns to | the other version with the most traffic in force |
//! | `stepWeight` | percent added per step | 10 |
//! | `interval` | time between steps | `1m` |
//! | `maxWeight` | the last step before promotion | 50 |
//!
//! It rolls back (all traffic to stable, for good until the canary's spec changes) when
//! aborted, or when a later step rolled back on the previous run (a `health-gate` or
//! `metric-analysis` judging the canary). A new canary revision starts again from 0%.

use crd_types::common::Parameters;
use crd_types::hierarchy::TrafficDocument;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::policy::{
    Answer, Failure, Interval, Outcome, Phase, Policy, Step, parameters, require_version, saved, split,
};

/// The parsed parameters.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Canary {
    canary: Option<String>,
    stable: Option<String>,
    #[serde(default = "ten")]
    step_weight: i32,
    #[serde(default = "one_minute")]
    interval: Interval,
    #[serde(default = "fifty")]
    max_weight: i32,
}

fn ten() -> i32 {
    10
}
fn fifty() -> i32 {
    50
}
fn one_minute() -> Interval {
    Interval::seconds(60)
}

/// Where a release stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stage {
    /// Stepping up.
    Progressing,
    /// The canary has all traffic.
    Promoted,
    /// The stable version has all traffic again.
    RolledBack,
}

/// What the canary saves between runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CanaryState {
    /// The release this state is about: stable, canary and the canary's spec fingerprint.
    pub revision: String,
    /// The stable version.
    pub stable: String,
    /// The canary version.
    pub canary: String,
    /// Where it stands.
    pub stage: Stage,
    /// The canary's weight now.
    pub weight: i32,
    /// When the current weight was set.
    pub since: Timestamp,
    /// When the route was first seen carrying the current weight: the interval runs from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub carried_since: Option<Timestamp>,
    /// Why it was promoted or rolled back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

/// Parses `canary`'s parameters.
///
/// # Errors
///
/// Unknown parameters, or weights outside 1–100.
pub fn parse(given: &Parameters) -> Result<Box<dyn Policy>, Failure> {
    let canary: Canary = parameters(given)?;
    for (name, value) in [("stepWeight", canary.step_weight), ("maxWeight", canary.max_weight)] {
        if !(1..=100).contains(&value) {
            return Err(Failure::new(
                "InvalidParameters",
                format!("{name} must be 1..100, got {value}"),
            ));
        }
    }
    if canary.interval < Interval::seconds(1) {
        return Err(Failure::new("InvalidParameters", "interval must be at least 1s"));
    }
    Ok(Box::new(canary))
}

impl Canary {
    /// The canary and stable versions for this run.
    fn versions(&self, step: &Step<'_>, state: Option<&CanaryState>) -> Result<Option<(String, String)>, Failure> {
        let observed = step.observed;
        let canary = match &self.canary {
            Some(name) => name.clone(),
            None => match observed.versions.last() {
                Some(last) => last.name.clone(),
                None => return Ok(None),
            },
        };
        require_version(observed, &canary, "canary")?;
        let stable = match (&self.stable, state) {
            (Some(name), _) => name.clone(),
            // The release under way keeps the stable version it started from.
            (None, Some(state)) if state.canary == canary && observed.version(&state.stable).is_some() => {
                state.stable.clone()
            }
            (None, _) => {
                let others = observed.versions.iter().filter(|v| v.name != canary);
                let heaviest = others
                    .clone()
                    .map(|v| (crate::policy::weight_of(&observed.weights, &v.name), v))
                    .filter(|(weight, _)| *weight > 0)
                    .max_by_key(|(weight, _)| *weight)
                    .map(|(_, v)| v);
                match heaviest.or_else(|| others.clone().next()) {
                    Some(v) => v.name.clone(),
                    None => return Ok(None),
                }
            }
        };
        require_version(observed, &stable, "stable")?;
        if stable == canary {
            return Err(Failure::new(
                "InvalidParameters",
                format!("stable and canary are both {stable:?}"),
            ));
        }
        Ok(Some((stable, canary)))
    }
}

impl Policy for Canary {
    fn run(&self, step: &Step<'_>, _: Option<Answer>) -> Result<Outcome, Failure> {
        let previous: Option<CanaryState> = saved(step.state);
        let Some((stable, canary)) = self.versions(step, previous.as_ref())? else {
            return Ok(Outcome::pass(
                step.input.clone(),
                Phase::Succeeded,
                "one version: nothing to release",
            ));
        };
        let observed = step.observed;
        let canary_version = observed.version(&canary);
        let revision = format!(
            "{stable}/{canary}@{}",
            canary_version.map(|v| v.revision.as_str()).unwrap_or_default()
        );
        let new_release = previous.as_ref().is_none_or(|s| s.revision != revision);
        let mut state = match previous {
            Some(state) if state.revision == revision => state,
            // A new release: from 0%, and what the last one's gates said no longer counts.
            _ => CanaryState {
                revision,
                stable: stable.clone(),
                canary: canary.clone(),
                stage: Stage::Progressing,
                weight: 0,
                since: step.now,
                carried_since: None,
                why: None,
            },
        };

        if state.stage == Stage::Progressing {
            if step.control.abort {
                state.stage = Stage::RolledBack;
                state.why = Some("aborted from kubectl".into());
            } else if step.control.promote {
                state.stage = Stage::Promoted;
                state.why = Some("promoted from kubectl".into());
            } else if let Some(why) = observed.last_run.rolled_back.as_ref().filter(|_| !new_release) {
                state.stage = Stage::RolledBack;
                state.why = Some(why.clone());
            }
        } else if state.stage == Stage::RolledBack && step.control.promote {
            state.stage = Stage::Promoted;
            state.why = Some("promoted from kubectl".into());
        } else if state.stage == Stage::Promoted && step.control.abort {
            state.stage = Stage::RolledBack;
            state.why = Some("aborted from kubectl".into());
        }

        let document = |weight: i32| TrafficDocument {
            weights: split(&stable, &canary, weight),
            matches: step.input.matches.clone(),
            stable: Some(stable.clone()),
            canary: Some(canary.clone()),
        };
        let why = state.why.clone().unwrap_or_default();
        match state.stage {
            Stage::Promoted => {
                let message = format!("{canary} promoted: 100% ({why})");
                state.weight = 100;
                return Ok(Outcome::pass(document(100), Phase::Succeeded, message).saving(state));
            }
            Stage::RolledBack => {
                let message = format!("{canary} rolled back to {stable}: {why}");
                state.weight = 0;
                return Ok(Outcome::pass(document(0), Phase::RolledBack, message).saving(state));
            }
            Stage::Progressing => {}
        }

        if let Some(v) = canary_version.filter(|v| !v.ready()) {
            let message = format!(
                "{canary} at {}%: waiting for its replicas ({}/{} ready)",
                state.weight, v.ready_replicas, v.replicas
            );
            return Ok(Outcome::pass(document(state.weight), Phase::Progressing, message).saving(state));
        }
        // A step counts from when the route carries it, so a slow executor or a later step
        // holding never shortens one.
        let in_force = crate::policy::weight_of(&observed.weights, &canary);
        if in_force != state.weight {
            state.carried_since = None;
            let message = format!(
                "{canary} at {}%: waiting for the route to carry it ({in_force}% now)",
                state.weight
            );
            return Ok(Outcome::pass(document(state.weight), Phase::Progressing, message).saving(state));
        }
        let carried = *state.carried_since.get_or_insert(step.now);
        // The first step goes in as soon as the canary is ready; later ones an interval apart.
        let due = if state.weight == 0 {
            step.now
        } else {
            carried.saturating_add(self.interval.0).unwrap_or(step.now)
        };
        if step.now >= due {
            if state.weight >= self.max_weight {
                state.stage = Stage::Promoted;
                state.weight = 100;
                state.since = step.now;
                state.carried_since = None;
                state.why = Some(format!("it held {}% for {:#}", self.max_weight, self.interval.0));
                let message = format!("{canary} promoted: 100% ({})", state.why.clone().unwrap_or_default());
                return Ok(Outcome::pass(document(100), Phase::Succeeded, message).saving(state));
            }
            state.weight = (state.weight + self.step_weight).min(self.max_weight);
            state.since = step.now;
            state.carried_since = None;
            // Worded as the next run will word it while the route catches up: one write.
            let message = format!(
                "{canary} at {}%: waiting for the route to carry it ({in_force}% now)",
                state.weight
            );
            return Ok(Outcome::pass(document(state.weight), Phase::Progressing, message).saving(state));
        }
        let message = format!(
            "{canary} at {}% of {}%, next step after {due}",
            state.weight, self.max_weight
        );
        let next = Some(due);
        Ok(Outcome::pass(document(state.weight), Phase::Progressing, message)
            .saving(state)
            .waking_at(next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{at, observed, params, run};
    use serde_json::json;

    fn canary(p: serde_json::Value) -> Box<dyn Policy> {
        parse(&params(p)).unwrap()
    }

    #[test]
    fn steps_up_an_interval_apart_once_each_step_is_in_force_then_promotes() {
        let policy = canary(json!({"stepWeight": 20, "maxWeight": 40, "interval": "1m"}));
        let mut world = observed(&[("v1", 1, 1), ("v2", 1, 1)], &[("v1", 100)]);
        let first = run(&*policy, &world, None, at(0)).unwrap();
        assert_eq!(
            first.output.weights,
            split("v1", "v2", 20),
            "the first step goes in at once"
        );
        assert_eq!(first.wake_at, None, "the next waits for the route");

        // Not in force yet: no step, however long it waits.
        let waiting = run(&*policy, &world, first.state.as_ref(), at(600)).unwrap();
        assert_eq!(waiting.output.weights, split("v1", "v2", 20));
        assert!(waiting.message.contains("waiting for the route"), "{}", waiting.message);

        // The interval runs from when the route carries the step.
        world.weights = split("v1", "v2", 20);
        let carried = run(&*policy, &world, waiting.state.as_ref(), at(610)).unwrap();
        assert_eq!(carried.wake_at, Some(at(670)));
        assert_eq!(
            carried.message,
            format!("v2 at 20% of 40%, next step after {}", at(670))
        );
        let early = run(&*policy, &world, carried.state.as_ref(), at(669)).unwrap();
        assert_eq!(early.output.weights, split("v1", "v2", 20));
        assert_eq!(early.state, carried.state, "nothing new to save");
        let second = run(&*policy, &world, carried.state.as_ref(), at(670)).unwrap();
        assert_eq!(second.output.weights, split("v1", "v2", 40));
        assert_eq!(second.phase, Phase::Progressing);

        world.weights = split("v1", "v2", 40);
        let held = run(&*policy, &world, second.state.as_ref(), at(700)).unwrap();
        let promoted = run(&*policy, &world, held.state.as_ref(), at(760)).unwrap();
        assert_eq!(promoted.output.weights, split("v1", "v2", 100));
        assert_eq!(promoted.phase, Phase::Succeeded);
        assert_eq!(promoted.output.stable.as_deref(), Some("v1"));
        assert_eq!(promoted.output.canary.as_deref(), Some("v2"));
    }

    #[test]
    fn waits_for_the_canary_to_be_ready() {
        let policy = canary(json!({}));
        let world = observed(&[("v1", 1, 1), ("v2", 2, 1)], &[("v1", 100)]);
        let outcome = run(&*policy, &world, None, at(0)).unwrap();
        assert_eq!(outcome.output.weights, split("v1", "v2", 0));
        assert!(outcome.message.contains("1/2 ready"), "{}", outcome.message);
    }

    #[test]
    fn a_later_step_rolling_back_stops_the_release_for_good() {
        let policy = canary(json!({}));
        let mut world = observed(&[("v1", 1, 1), ("v2", 1, 1)], &[("v1", 100)]);
        let first = run(&*policy, &world, None, at(0)).unwrap();
        world.weights = split("v1", "v2", 10);
        world.last_run.rolled_back = Some("step 2 (health-gate) rolled back: v2 unready".into());
        let rolled = run(&*policy, &world, first.state.as_ref(), at(10)).unwrap();
        assert_eq!(rolled.phase, Phase::RolledBack);
        assert_eq!(rolled.output.weights, split("v1", "v2", 0));
        assert!(rolled.message.contains("health-gate"), "{}", rolled.message);
        world.last_run.rolled_back = None;
        let later = run(&*policy, &world, rolled.state.as_ref(), at(1000)).unwrap();
        assert_eq!(later.phase, Phase::RolledBack, "sticky until a new revision");
    }

    #[test]
    fn a_new_canary_revision_starts_again_and_ignores_the_old_verdict() {
        let policy = canary(json!({}));
        let mut world = observed(&[("v1", 1, 1), ("v2", 1, 1)], &[("v1", 100)]);
        let mut state = serde_json::to_value(CanaryState {
            revision: "v1/v2@old".into(),
            stable: "v1".into(),
            canary: "v2".into(),
            stage: Stage::RolledBack,
            weight: 0,
            since: at(0),
            carried_since: None,
            why: None,
        })
        .unwrap();
        world.last_run.rolled_back = Some("step 2 (health-gate) rolled back".into());
        let outcome = run(&*policy, &world, Some(&state), at(5)).unwrap();
        assert_eq!(outcome.phase, Phase::Progressing);
        assert_eq!(outcome.output.weights, split("v1", "v2", 10));
        state = outcome.state.unwrap();
        assert_eq!(state["stage"], "Progressing");
    }

    #[test]
    fn promote_and_abort_from_kubectl() {
        let policy = canary(json!({}));
        let world = observed(&[("v1", 1, 1), ("v2", 1, 1)], &[("v1", 100)]);
        let mut step_world = world.clone();
        step_world.weights = split("v1", "v2", 10);
        let first = run(&*policy, &world, None, at(0)).unwrap();
        let promoted =
            crate::testing::run_with(&*policy, &step_world, first.state.as_ref(), at(1), true, false).unwrap();
        assert_eq!(promoted.output.weights, split("v1", "v2", 100));
        assert!(promoted.message.contains("promoted from kubectl"));
        let aborted =
            crate::testing::run_with(&*policy, &step_world, first.state.as_ref(), at(1), false, true).unwrap();
        assert_eq!(aborted.output.weights, split("v1", "v2", 0));
        assert_eq!(aborted.phase, Phase::RolledBack);
    }

    #[test]
    fn stable_is_the_heaviest_other_version_in_force() {
        let policy = canary(json!({}));
        let world = observed(&[("v1", 1, 1), ("v2", 1, 1), ("v3", 1, 1)], &[("v1", 0), ("v2", 100)]);
        let outcome = run(&*policy, &world, None, at(0)).unwrap();
        assert_eq!(outcome.output.weights, split("v2", "v3", 10));
    }

    #[test]
    fn bad_parameters_say_what_is_wrong() {
        assert!(
            parse(&params(json!({"stepWeight": 0})))
                .unwrap_err()
                .message
                .contains("stepWeight")
        );
        let policy = canary(json!({"canary": "v9"}));
        let world = observed(&[("v1", 1, 1)], &[("v1", 100)]);
        let failure = run(&*policy, &world, None, at(0)).unwrap_err();
        assert!(
            failure.message.contains("\"v9\" is not one of the versions (v1)"),
            "{}",
            failure.message
        );
    }

    #[test]
    fn one_version_passes_its_input_on() {
        let policy = canary(json!({}));
        let world = observed(&[("v1", 1, 1)], &[("v1", 100)]);
        let outcome = run(&*policy, &world, None, at(0)).unwrap();
        assert_eq!(outcome.phase, Phase::Succeeded);
        assert_eq!(outcome.output.weights, crate::policy::all_to("v1"));
    }
}
