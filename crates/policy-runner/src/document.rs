//! The documents pipelines pass from step to step.
//!
//! - An Application's is its [`TrafficDocument`]: weights, matches, stable and canary, which
//!   hierarchy-executor renders into the HTTPRoute.
//! - A Project's, Cluster's or VirtualCluster's is its [`SpecDocument`]: the part of its spec
//!   its executor applies ([`crd_types::hierarchy::spec_document`]). Policies that speak of
//!   versions and traffic run on Applications only; `freeze`, `cel` and `webhook` run on any.

use crd_types::common::Condition;
use crd_types::hierarchy::TrafficDocument;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::observed::Observed;
use crate::policy::{Document, Failure, held};
use crate::registry::{Entry, Parse};

impl Document for TrafficDocument {
    type Observed = Observed;
    const IN_FORCE: &'static str = "the traffic in force";

    fn held(input: &Self, observed: &Observed) -> Self {
        held(input, observed)
    }

    fn check(&self, observed: &Observed) -> Result<(), Failure> {
        check_traffic(self, observed)
    }

    fn describe(&self) -> String {
        describe_traffic(self)
    }

    const CHANGED: &'static str = "TrafficShifted";

    fn parser(entry: &Entry) -> Option<Parse<Self>> {
        entry.traffic
    }
}

/// The document of a Project, Cluster or VirtualCluster: its spec but for where it sits in the
/// tree and who runs it, as a JSON object.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SpecDocument(pub Map<String, Value>);

/// What steps see of a Project, Cluster or VirtualCluster.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SpecObserved {
    /// `Project`, `Cluster` or `VirtualCluster`.
    pub kind: &'static str,
    /// Its name.
    pub name: String,
    /// Its spec generation.
    pub generation: i64,
    /// The document its executor applies now: the pipeline's last complete output; none
    /// before the first, when the executor waits for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_force: Option<SpecDocument>,
    /// The executor's conditions: `Ready` rolls up its children's readiness.
    pub conditions: Vec<Condition>,
    /// Whether the kind's executor can apply a document, and if not why.
    #[serde(skip)]
    pub fits: fn(&Map<String, Value>) -> Result<(), String>,
}

impl Document for SpecDocument {
    type Observed = SpecObserved;
    const IN_FORCE: &'static str = "the spec in force";

    /// What the executor applies now; a resource with nothing in force yet gets its input.
    fn held(input: &Self, observed: &SpecObserved) -> Self {
        observed.in_force.clone().unwrap_or_else(|| input.clone())
    }

    fn check(&self, observed: &SpecObserved) -> Result<(), Failure> {
        (observed.fits)(&self.0).map_err(|error| Failure::new("InvalidOutput", format!("{}: {error}", observed.kind)))
    }

    /// The document as compact JSON, cut short.
    fn describe(&self) -> String {
        let text = serde_json::to_string(&self.0).unwrap_or_default();
        match text.char_indices().nth(200) {
            Some((cut, _)) => format!("{}…", &text[..cut]),
            None => text,
        }
    }

    const CHANGED: &'static str = "SpecChanged";

    fn parser(entry: &Entry) -> Option<Parse<Self>> {
        entry.spec
    }
}

/// An output the executor can render: weights over known versions summing to 100.
fn check_traffic(document: &TrafficDocument, observed: &Observed) -> Result<(), Failure> {
    let known = |version: &str| observed.version(version).is_some();
    let invalid = |message: String| Err(Failure::new("InvalidOutput", message));
    if document.weights.is_empty() {
        return invalid("the output has no weights".into());
    }
    if let Some(w) = document.weights.iter().find(|w| !known(&w.version)) {
        return invalid(format!("the output weighs an unknown version {:?}", w.version));
    }
    if let Some(w) = document.weights.iter().find(|w| !(0..=100).contains(&w.weight)) {
        return invalid(format!("the output gives {} a weight of {}", w.version, w.weight));
    }
    let sum: i64 = document.weights.iter().map(|w| i64::from(w.weight)).sum();
    if sum != 100 {
        return invalid(format!("the output's weights sum to {sum}, not 100"));
    }
    for m in &document.matches {
        if !known(&m.version) {
            return invalid(format!("the output matches to an unknown version {:?}", m.version));
        }
        if m.headers.is_empty() && m.cookie.is_none() {
            return invalid(format!(
                "a match to {} has no header or cookie: it would take every request",
                m.version
            ));
        }
        let names = m
            .headers
            .iter()
            .map(|h| &h.name)
            .chain(m.cookie.iter().map(|c| &c.name));
        if let Some(bad) = names.into_iter().find(|n| !is_token(n)) {
            return invalid(format!("{bad:?} is not a header or cookie name"));
        }
    }
    Ok(())
}

/// An HTTP token (RFC 9110), what header and cookie names are made of.
fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 256
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// `v1 80%, v2 20%; header x-beta: yes → v2`.
fn describe_traffic(document: &TrafficDocument) -> String {
    let weights: Vec<String> = document
        .weights
        .iter()
        .map(|w| format!("{} {}%", w.version, w.weight))
        .collect();
    let matches: Vec<String> = document
        .matches
        .iter()
        .map(|m| {
            let mut what: Vec<String> = m
                .headers
                .iter()
                .map(|h| format!("header {}: {}", h.name, h.value))
                .collect();
            what.extend(m.cookie.iter().map(|c| format!("cookie {}={}", c.name, c.value)));
            format!("{} → {}", what.join(" and "), m.version)
        })
        .collect();
    if matches.is_empty() {
        weights.join(", ")
    } else {
        format!("{}; {}", weights.join(", "), matches.join("; "))
    }
}
