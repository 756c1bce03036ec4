//! Which executors this controller runs, and the parameters each declares.
//!
//! A hierarchy resource names its executor (`spec.executor.name`, `default` when absent).
//! This controller claims the names in [`Registry::builtin`]; a resource naming any other
//! executor is left to the controller that claims it (which records its name in
//! `status.executor`), and reported as `ExecutorNotClaimed` while nobody has.

use crd_types::common::{Parameters, PluginRef};
use serde_json::Value;

/// The executor a resource gets when it names none.
pub const DEFAULT_EXECUTOR: &str = "default";

/// The hierarchy kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// The root.
    Project,
    /// A target cluster.
    Cluster,
    /// A namespace with guardrails.
    VirtualCluster,
    /// Versions behind a route.
    Application,
}

/// The type a parameter's value must have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParameterType {
    /// `true` or `false`.
    Bool,
    /// A string.
    String,
    /// A whole number.
    Integer,
    /// A list (its items are the executor's to check).
    List,
    /// An object (its fields are the executor's to check).
    Object,
}

/// One parameter an executor accepts.
#[derive(Clone, Copy, Debug)]
pub struct Parameter {
    /// Its name in `parameters`.
    pub name: &'static str,
    /// Its type.
    pub type_: ParameterType,
    /// What it does.
    pub description: &'static str,
}

/// An executor: the kind it runs and the parameters it accepts.
#[derive(Clone, Copy, Debug)]
pub struct Executor {
    /// The kind it runs.
    pub kind: Kind,
    /// Its name, as resources name it.
    pub name: &'static str,
    /// Every parameter it accepts; any other is refused.
    pub parameters: &'static [Parameter],
}

/// The Cluster executor's parameter that installs missing Gateway API CRDs.
pub const INSTALL_GATEWAY_API: &str = "installGatewayAPI";

const BUILTIN: &[Executor] = &[
    Executor {
        kind: Kind::Project,
        name: DEFAULT_EXECUTOR,
        parameters: &[],
    },
    Executor {
        kind: Kind::Cluster,
        name: DEFAULT_EXECUTOR,
        parameters: &[Parameter {
            name: INSTALL_GATEWAY_API,
            type_: ParameterType::Bool,
            description: "install the Gateway API CRDs (standard channel) when the cluster lacks them",
        }],
    },
    Executor {
        kind: Kind::VirtualCluster,
        name: DEFAULT_EXECUTOR,
        parameters: &[],
    },
    Executor {
        kind: Kind::Application,
        name: DEFAULT_EXECUTOR,
        parameters: &[],
    },
];

/// The executors a controller claims.
#[derive(Clone, Debug)]
pub struct Registry {
    executors: Vec<Executor>,
}

/// What the registry says of a resource's executor.
#[derive(Clone, Debug, PartialEq)]
pub enum Claim {
    /// Ours, with valid parameters.
    Claimed(Parameters),
    /// Ours, but the parameters are wrong: why.
    InvalidParameters(String),
    /// Not an executor this controller runs.
    NotClaimed(String),
}

impl Registry {
    /// The executors built into hierarchy-executor.
    pub fn builtin() -> Self {
        Registry {
            executors: BUILTIN.to_vec(),
        }
    }

    /// Exactly `executors`: what a controller of its own (see `crates/example-executor`) claims.
    pub fn of(executors: &[Executor]) -> Self {
        Registry {
            executors: executors.to_vec(),
        }
    }

    /// Adds an executor (a controller built on this crate claiming more names).
    pub fn with(mut self, executor: Executor) -> Self {
        self.executors.push(executor);
        self
    }

    /// Whether this registry runs the executor `reference` names for `kind`, and with which
    /// parameters.
    pub fn claim(&self, kind: Kind, reference: Option<&PluginRef>) -> Claim {
        let name = reference.map_or(DEFAULT_EXECUTOR, |r| r.name.as_str());
        let Some(executor) = self.executors.iter().find(|e| e.kind == kind && e.name == name) else {
            return Claim::NotClaimed(name.to_owned());
        };
        let parameters = reference.and_then(|r| r.parameters.clone()).unwrap_or_default();
        match validate(executor, &parameters) {
            Ok(()) => Claim::Claimed(parameters),
            Err(message) => Claim::InvalidParameters(message),
        }
    }
}

fn validate(executor: &Executor, parameters: &Parameters) -> Result<(), String> {
    for (name, value) in parameters {
        let Some(declared) = executor.parameters.iter().find(|p| p.name == name) else {
            let accepted: Vec<&str> = executor.parameters.iter().map(|p| p.name).collect();
            return Err(if accepted.is_empty() {
                format!("executor {:?} takes no parameters, got {name:?}", executor.name)
            } else {
                format!(
                    "executor {:?} has no parameter {name:?} (it takes {})",
                    executor.name,
                    accepted.join(", ")
                )
            });
        };
        let fits = match declared.type_ {
            ParameterType::Bool => value.is_boolean(),
            ParameterType::String => value.is_string(),
            ParameterType::Integer => value.is_i64() || value.is_u64(),
            ParameterType::List => value.is_array(),
            ParameterType::Object => value.is_object(),
        };
        if !fits {
            return Err(format!(
                "parameter {name:?} of executor {:?} must be {}, got {}",
                executor.name,
                match declared.type_ {
                    ParameterType::Bool => "true or false",
                    ParameterType::String => "a string",
                    ParameterType::Integer => "a whole number",
                    ParameterType::List => "a list",
                    ParameterType::Object => "an object",
                },
                value
            ));
        }
    }
    Ok(())
}

/// A boolean parameter, `false` when absent.
pub fn flag(parameters: &Parameters, name: &str) -> bool {
    parameters.get(name).and_then(Value::as_bool).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn reference(name: &str, parameters: Value) -> PluginRef {
        PluginRef {
            name: name.into(),
            parameters: serde_json::from_value(parameters).unwrap(),
        }
    }

    #[test]
    fn no_executor_named_is_the_default() {
        assert_eq!(
            Registry::builtin().claim(Kind::Project, None),
            Claim::Claimed(Parameters::new())
        );
    }

    #[test]
    fn an_unknown_name_is_not_claimed() {
        assert_eq!(
            Registry::builtin().claim(Kind::Application, Some(&reference("blue-green", json!({})))),
            Claim::NotClaimed("blue-green".into())
        );
    }

    #[test]
    fn declared_parameters_are_accepted_and_typed() {
        let registry = Registry::builtin();
        let ok = reference("default", json!({"installGatewayAPI": true}));
        assert!(matches!(registry.claim(Kind::Cluster, Some(&ok)), Claim::Claimed(p) if flag(&p, INSTALL_GATEWAY_API)));
        let wrong_type = reference("default", json!({"installGatewayAPI": "yes"}));
        let Claim::InvalidParameters(message) = registry.claim(Kind::Cluster, Some(&wrong_type)) else {
            panic!("a string for a flag was accepted");
        };
        assert!(message.contains("true or false"), "{message}");
        let unknown = reference("default", json!({"installIstio": true}));
        let Claim::InvalidParameters(message) = registry.claim(Kind::Cluster, Some(&unknown)) else {
            panic!("an unknown parameter was accepted");
        };
        assert!(
            message.contains("installIstio") && message.contains("installGatewayAPI"),
            "{message}"
        );
    }

    #[test]
    fn an_added_executor_is_claimed() {
        let registry = Registry::builtin().with(Executor {
            kind: Kind::Application,
            name: "blue-green",
            parameters: &[],
        });
        assert!(matches!(
            registry.claim(Kind::Application, Some(&reference("blue-green", json!({})))),
            Claim::Claimed(_)
        ));
        assert!(matches!(
            registry.claim(Kind::Cluster, Some(&reference("blue-green", json!({})))),
            Claim::NotClaimed(_)
        ));
    }
}
