//! What a policy is: a pure function from its input document, the observed state and its own
//! saved state to the next document and its new state.
//!
//! A policy that needs something from outside (a Prometheus query, a webhook's answer) says
//! so in [`Policy::needs`]; the pipeline fetches it and hands the answer to [`Policy::run`],
//! so every policy stays a pure function, tested without a network or a cluster.

use std::fmt::Debug;
use std::str::FromStr;
use std::time::Duration;

use crd_types::common::Parameters;
use crd_types::hierarchy::{TrafficDocument, VersionWeight};
use jiff::{SignedDuration, Timestamp};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::observed::Observed;
use crate::registry::{Entry, Parse};

/// What a pipeline passes from step to step, and what the executor applies: an Application's
/// [`TrafficDocument`], or the spec document of a Project, Cluster or VirtualCluster.
pub trait Document: Clone + PartialEq + Debug + Serialize + DeserializeOwned + Send + Sync {
    /// What steps see of the resource.
    type Observed: Debug + Serialize + Send + Sync;
    /// What stays when the pipeline stops, for messages: "the traffic in force".
    const IN_FORCE: &'static str;
    /// The document in force, keeping what `input` says beyond it: a hold.
    fn held(input: &Self, observed: &Self::Observed) -> Self;
    /// Whether the executor can apply it.
    ///
    /// # Errors
    ///
    /// A [`Failure`] with reason `InvalidOutput` saying what is wrong.
    fn check(&self, observed: &Self::Observed) -> Result<(), Failure>;
    /// For people: `v1 80%, v2 20%`.
    fn describe(&self) -> String;
    /// The reason of the Event telling that the output changed.
    const CHANGED: &'static str;
    /// How `entry` makes a policy for this document, if it runs on it.
    fn parser(entry: &Entry) -> Option<Parse<Self>>;
}

/// Everything a step is given.
#[derive(Debug)]
pub struct Step<'a, D: Document = TrafficDocument> {
    /// The previous step's output (the first step gets the spec's).
    pub input: &'a D,
    /// The resource as observed now.
    pub observed: &'a D::Observed,
    /// What this step saved last time, if anything.
    pub state: Option<&'a Value>,
    /// The time the pipeline runs at (whole seconds).
    pub now: Timestamp,
    /// A promote or abort asked for from kubectl, honoured on this run.
    pub control: Control,
}

impl<D: Document> Clone for Step<'_, D> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<D: Document> Copy for Step<'_, D> {}

/// One-shot requests from kubectl.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Control {
    /// Finish the release now: the new version gets all traffic, gates step aside.
    pub promote: bool,
    /// Give up the release: all traffic back to the stable version.
    pub abort: bool,
}

/// What a step ended in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Working towards its goal (a canary between steps).
    Progressing,
    /// Done, or nothing to do: its output is its final word.
    Succeeded,
    /// Holding the traffic in force.
    Holding,
    /// Sent all traffic back to the stable version.
    RolledBack,
}

impl Phase {
    /// As written in `status.policy.steps[].phase`.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Progressing => "Progressing",
            Phase::Succeeded => "Succeeded",
            Phase::Holding => "Holding",
            Phase::RolledBack => "RolledBack",
        }
    }
}

/// A step's result.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome<D = TrafficDocument> {
    /// The next document.
    pub output: D,
    /// The state to hand back next time.
    pub state: Option<Value>,
    /// How it ended.
    pub phase: Phase,
    /// What it did, for people.
    pub message: String,
    /// Run again at this time even if nothing changes (the next canary step, say).
    pub wake_at: Option<Timestamp>,
}

impl<D> Outcome<D> {
    /// Hands `output` on with a message and no state.
    pub fn pass(output: D, phase: Phase, message: impl Into<String>) -> Self {
        Outcome {
            output,
            state: None,
            phase,
            message: message.into(),
            wake_at: None,
        }
    }

    /// With this state saved.
    pub fn saving(mut self, state: impl serde::Serialize) -> Self {
        self.state = serde_json::to_value(state).ok();
        self
    }

    /// Run again at `at`.
    pub fn waking_at(mut self, at: Option<Timestamp>) -> Self {
        self.wake_at = at;
        self
    }
}

/// Why a step could not produce an output: the pipeline stops there and the document in
/// force stays.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// A condition reason, e.g. `MetricsUnavailable`.
    pub reason: &'static str,
    /// What went wrong, for people.
    pub message: String,
}

impl Failure {
    /// A failure with this reason and message.
    pub fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Failure {
            reason,
            message: message.into(),
        }
    }
}

/// Something a step needs from outside before it can run.
#[derive(Clone, Debug, PartialEq)]
pub enum Request {
    /// An instant query of a Prometheus server's HTTP API.
    Query {
        /// The server, e.g. `http://prometheus.monitoring:9090`.
        address: String,
        /// PromQL.
        query: String,
        /// How long to wait.
        timeout: Duration,
    },
    /// A JSON POST whose JSON answer is the result.
    Post {
        /// Where to.
        url: String,
        /// What.
        body: Value,
        /// How long to wait.
        timeout: Duration,
    },
}

/// The outside's answer to a [`Request`]: the JSON it returned, or why there is none.
pub type Answer = Result<Value, String>;

/// A policy with its parameters parsed, for documents of type `D`.
pub trait Policy<D: Document = TrafficDocument>: Debug + Send + Sync {
    /// What this step needs fetched before it runs, if anything.
    fn needs(&self, _step: &Step<'_, D>) -> Option<Request> {
        None
    }

    /// Runs the step. `answer` is the answer to what [`Policy::needs`] asked for.
    ///
    /// # Errors
    ///
    /// A [`Failure`] stops the pipeline at this step.
    fn run(&self, step: &Step<'_, D>, answer: Option<Answer>) -> Result<Outcome<D>, Failure>;
}

/// Parses a policy's parameters into its struct, refusing unknown ones with serde's message
/// (which names the fields it expected).
///
/// # Errors
///
/// A [`Failure`] with reason `InvalidParameters`.
pub fn parameters<T: DeserializeOwned>(parameters: &Parameters) -> Result<T, Failure> {
    serde_json::from_value(as_json(parameters)).map_err(|error| Failure::new("InvalidParameters", error.to_string()))
}

/// Parameters as one JSON object (what `cel` and `webhook` policies hand on as `parameters`).
pub fn as_json(parameters: &Parameters) -> Value {
    Value::Object(parameters.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
}

/// A step's saved state of type `T`, or `None` when absent or from an older shape.
pub fn saved<T: DeserializeOwned>(state: Option<&Value>) -> Option<T> {
    state.and_then(|s| serde_json::from_value(s.clone()).ok())
}

/// A length of time in parameters: `"30s"`, `"5m"`, `"1h30m"`, or whole seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Interval(pub SignedDuration);

impl Interval {
    /// Whole seconds.
    pub const fn seconds(seconds: i64) -> Self {
        Interval(SignedDuration::from_secs(seconds))
    }

    /// As a std duration.
    pub fn std(self) -> Duration {
        Duration::try_from(self.0).unwrap_or_default()
    }
}

impl<'de> Deserialize<'de> for Interval {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Seconds(u32),
            Text(String),
        }
        let duration = match Raw::deserialize(deserializer)? {
            Raw::Seconds(seconds) => SignedDuration::from_secs(i64::from(seconds)),
            Raw::Text(text) => SignedDuration::from_str(&text)
                .map_err(|_| serde::de::Error::custom(format!("{text:?} is not a duration like \"30s\" or \"5m\"")))?,
        };
        if duration.is_negative() || duration > SignedDuration::from_hours(24 * 7) {
            return Err(serde::de::Error::custom(format!("{duration:#} is outside 0s..168h")));
        }
        Ok(Interval(duration))
    }
}

/// `[{stable, 100 - weight}, {canary, weight}]`.
pub fn split(stable: &str, canary: &str, weight: i32) -> Vec<VersionWeight> {
    vec![
        VersionWeight {
            version: stable.to_owned(),
            weight: 100 - weight,
        },
        VersionWeight {
            version: canary.to_owned(),
            weight,
        },
    ]
}

/// All traffic to `version`.
pub fn all_to(version: &str) -> Vec<VersionWeight> {
    vec![VersionWeight {
        version: version.to_owned(),
        weight: 100,
    }]
}

/// The weight `document` gives `version` (0 when it names it not).
pub fn weight_of(weights: &[VersionWeight], version: &str) -> i32 {
    weights.iter().filter(|w| w.version == version).map(|w| w.weight).sum()
}

/// The document with all traffic back on its stable version and no matches: a roll back.
/// The stable version is the one the document names, else `fallback`.
pub fn rolled_back(input: &TrafficDocument, fallback: &str) -> TrafficDocument {
    let stable = input.stable.clone().unwrap_or_else(|| fallback.to_owned());
    TrafficDocument {
        weights: all_to(&stable),
        matches: Vec::new(),
        stable: Some(stable),
        canary: input.canary.clone(),
    }
}

/// The traffic in force (as observed), keeping what `input` says of stable and canary: a hold.
pub fn held(input: &TrafficDocument, observed: &Observed) -> TrafficDocument {
    TrafficDocument {
        weights: observed.weights.clone(),
        matches: observed.matches.clone(),
        stable: input.stable.clone(),
        canary: input.canary.clone(),
    }
}

/// Whether `version` is among the Application's versions.
pub fn require_version(observed: &Observed, version: &str, what: &str) -> Result<(), Failure> {
    if observed.versions.iter().any(|v| v.name == version) {
        Ok(())
    } else {
        let known: Vec<&str> = observed.versions.iter().map(|v| v.name.as_str()).collect();
        Err(Failure::new(
            "InvalidParameters",
            format!("{what} {version:?} is not one of the versions ({})", known.join(", ")),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn intervals_read_as_text_or_seconds_and_refuse_nonsense() {
        let read = |v: Value| serde_json::from_value::<Interval>(v);
        assert_eq!(read(json!("30s")).unwrap(), Interval::seconds(30));
        assert_eq!(read(json!("1h30m")).unwrap(), Interval::seconds(5400));
        assert_eq!(read(json!(45)).unwrap(), Interval::seconds(45));
        assert!(read(json!("soon")).unwrap_err().to_string().contains("not a duration"));
        assert!(read(json!("-5s")).is_err());
        assert!(read(json!("400h")).unwrap_err().to_string().contains("outside"));
    }

    #[test]
    fn unknown_parameters_are_refused_by_name() {
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields, rename_all = "camelCase")]
        #[allow(dead_code)]
        struct P {
            step_weight: Option<i32>,
        }
        let given: Parameters = serde_json::from_value(json!({"stepWieght": 5})).unwrap();
        let failure = parameters::<P>(&given).unwrap_err();
        assert_eq!(failure.reason, "InvalidParameters");
        assert!(failure.message.contains("stepWieght") && failure.message.contains("stepWeight"));
    }
}
