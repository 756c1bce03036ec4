//! Which policies a runner claims, by name.
//!
//! The default runner (`policy-runner`) runs every pipeline, reporting a name it does not
//! know as `PolicyNotClaimed`. A runner with policies of its own ([`Registry::named`] plus
//! [`Registry::with`]) runs the pipelines naming at least one of them (and nothing unknown to
//! it), and records itself in `status.policy.runner`; every runner leaves a pipeline whose
//! status names another alone. When its policies leave the pipeline, it removes what it wrote,
//! and the default runner takes over.

use crd_types::common::Parameters;

use crate::policies::{canary, cel, experiment, freeze, health_gate, metric_analysis, webhook, weight_cap};
use crate::policy::{Failure, Policy};

/// Parses a policy's parameters into a runnable policy.
pub type Parse = fn(&Parameters) -> Result<Box<dyn Policy>, Failure>;

/// The policies a runner knows.
#[derive(Clone, Debug)]
pub struct Registry {
    /// The runner's name: its field manager, and what it records in `status.policy.runner`.
    pub runner: &'static str,
    policies: Vec<(&'static str, Parse)>,
    /// The policies only this runner knows (none for the default one).
    own: Vec<&'static str>,
}

impl Registry {
    /// `policy-runner` with the built-in policies.
    pub fn builtin() -> Self {
        Registry {
            runner: crate::NAME,
            policies: vec![
                ("canary", canary::parse),
                ("health-gate", health_gate::parse),
                ("metric-analysis", metric_analysis::parse),
                ("experiment", experiment::parse),
                ("freeze", freeze::parse),
                ("weight-cap", weight_cap::parse),
                ("cel", cel::parse),
                ("webhook", webhook::parse),
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

    /// Adds a policy of its own.
    pub fn with(mut self, name: &'static str, parse: Parse) -> Self {
        self.policies.push((name, parse));
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

    /// How to parse the policy called `name`, if this runner knows it.
    pub fn get(&self, name: &str) -> Option<Parse> {
        self.policies.iter().find(|(n, _)| *n == name).map(|(_, parse)| *parse)
    }

    /// The names it knows.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.policies.iter().map(|(name, _)| *name)
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
