//! Which policies a runner claims, by name.
//!
//! A resource's pipeline is run by the runner that knows every policy it names. The default
//! runner (`policy-runner`) reports a name it does not know as `PolicyNotClaimed`, unless
//! another runner has recorded itself in `status.policy.runner`: a controller built on this
//! crate with more policies ([`Registry::with`]) claims pipelines that way.

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
        }
    }

    /// Another runner: these policies under its own name.
    pub fn named(runner: &'static str) -> Self {
        Registry {
            runner,
            ..Registry::builtin()
        }
    }

    /// Adds a policy.
    pub fn with(mut self, name: &'static str, parse: Parse) -> Self {
        self.policies.push((name, parse));
        self
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
