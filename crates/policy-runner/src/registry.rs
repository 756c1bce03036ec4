//! Which policies a runner claims, by name.
//!
//! The default runner (`policy-runner`) runs every pipeline, reporting a name it does not
//! know as `PolicyNotClaimed`. A runner with policies of its own ([`Registry::named`] plus
//! [`Registry::with`]) runs the pipelines naming at least one of them (and nothing unknown to
//! it), and records itself in `status.policy.runner`; every runner leaves a pipeline whose
//! status names another alone. When its policies leave the pipeline, it removes what it wrote,
//! and the default runner takes over.

use crd_types::common::Parameters;
use crd_types::hierarchy::TrafficDocument;

use crate::document::SpecDocument;
use crate::policies::{canary, cel, experiment, freeze, health_gate, metric_analysis, webhook, weight_cap};
use crate::policy::{Document, Failure, Policy};

/// Parses a policy's parameters into a policy running on documents of type `D`.
pub type Parse<D = TrafficDocument> = fn(&Parameters) -> Result<Box<dyn Policy<D>>, Failure>;

/// A policy a runner knows: how to make it for each kind of document it runs on.
#[derive(Clone, Copy, Debug)]
pub struct Entry {
    /// Its name in `spec.policies`.
    pub name: &'static str,
    /// On an Application's traffic.
    pub traffic: Option<Parse>,
    /// On a Project's, Cluster's or VirtualCluster's spec document.
    pub spec: Option<Parse<SpecDocument>>,
}

impl Entry {
    /// A policy of an Application's traffic only.
    const fn traffic(name: &'static str, parse: Parse) -> Self {
        Entry {
            name,
            traffic: Some(parse),
            spec: None,
        }
    }

    /// A policy of any document.
    const fn any(name: &'static str, traffic: Parse, spec: Parse<SpecDocument>) -> Self {
        Entry {
            name,
            traffic: Some(traffic),
            spec: Some(spec),
        }
    }
}

/// The policies a runner knows.
#[derive(Clone, Debug)]
pub struct Registry {
    /// The runner's name: its field manager, and what it records in `status.policy.runner`.
    pub runner: &'static str,
    policies: Vec<Entry>,
    /// The policies only this runner knows (none for the default one).
    own: Vec<&'static str>,
}

impl Registry {
    /// `policy-runner` with the built-in policies.
    pub fn builtin() -> Self {
        Registry {
            runner: crate::NAME,
            policies: vec![
                Entry::traffic("canary", canary::parse),
                Entry::traffic("health-gate", health_gate::parse),
                Entry::traffic("metric-analysis", metric_analysis::parse),
                Entry::traffic("experiment", experiment::parse),
                Entry::any("freeze", freeze::parse, freeze::parse),
                Entry::traffic("weight-cap", weight_cap::parse),
                Entry::any("cel", cel::parse, cel::parse),
                Entry::any("webhook", webhook::parse, webhook::parse),
            ],
            own: Vec::new(),
        }
    }

    /// Another runner: these policies under its own name.
    pub fn named(runner: &'static str) -> Self {
        Registry {
            runner,
            ..Registry::builtin()
        }
    }

    /// Adds a policy of its own, of an Application's traffic.
    pub fn with(mut self, name: &'static str, parse: Parse) -> Self {
        self.policies.push(Entry::traffic(name, parse));
        self.own.push(name);
        self
    }

    /// Whether this runner runs a pipeline naming `names` whose status names `runner` (if any).
    pub fn claims<'a>(&self, mut names: impl Iterator<Item = &'a str> + Clone, runner: Option<&str>) -> bool {
        if runner.is_some_and(|r| r != self.runner) {
            return false;
        }
        if self.is_default() {
            return true;
        }
        names.clone().all(|n| self.get(n).is_some()) && names.any(|n| self.own.contains(&n))
    }

    /// The default runner: it reports the names nobody claims.
    pub fn is_default(&self) -> bool {
        self.runner == crate::NAME
    }

    /// The policy called `name`, if this runner knows it.
    pub fn get(&self, name: &str) -> Option<&Entry> {
        self.policies.iter().find(|entry| entry.name == name)
    }

    /// The names it knows.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.policies.iter().map(|entry| entry.name)
    }

    /// The names of the policies it runs on documents of type `D`.
    pub fn names_for<D: Document>(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.policies
            .iter()
            .filter(|entry| D::parser(entry).is_some())
            .map(|entry| entry.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none(_: &Parameters) -> Result<Box<dyn Policy>, Failure> {
        Err(Failure::new("InvalidParameters", "test"))
    }

    #[test]
    fn the_default_runner_claims_all_but_what_another_runner_holds() {
        let default = Registry::builtin();
        assert!(default.claims(["canary", "acme"].into_iter(), None));
        assert!(default.claims(["canary"].into_iter(), Some(crate::NAME)));
        assert!(!default.claims(["canary", "acme"].into_iter(), Some("acme-runner")));
    }

    #[test]
    fn another_runner_claims_only_pipelines_naming_its_own_policies() {
        let acme = Registry::named("acme-runner").with("acme", none);
        assert!(acme.claims(["canary", "acme"].into_iter(), None));
        assert!(
            !acme.claims(["canary"].into_iter(), None),
            "built-ins alone are the default's"
        );
        assert!(!acme.claims(["acme", "mystery"].into_iter(), None));
        assert!(!acme.claims(["acme"].into_iter(), Some(crate::NAME)));
    }
}
