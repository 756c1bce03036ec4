//! A policy's CEL expressions, compiled once per generation: each stage's `filter` over
//! `downsyncClause` and `condition` over the CombinedStatus, named `combinedStatus` or `obj`.

use std::sync::Arc;

use cel_conditions::{Expression, SharedExpressions};
use crd_types::placement::StagedBindingPolicySpec;

/// The variable a `filter` sees.
pub const FILTER_VARIABLE: &str = "downsyncClause";
/// The variable a `condition` sees, as the seed's example names it.
pub const CONDITION_VARIABLE: &str = "combinedStatus";
/// The same value, as the seed's text names it (`obj`).
pub const CONDITION_ALIAS: &str = "obj";

/// One stage's compiled expressions.
#[derive(Debug, Clone, Default)]
pub struct StageExpressions {
    /// The filter, if the stage has one (all objects otherwise).
    pub filter: Option<Arc<Expression>>,
    /// The condition, if the stage has one (fulfilled on arrival otherwise).
    pub condition: Option<Arc<Expression>>,
}

/// Every stage's expressions, or the first that does not compile, named. Policies with the
/// same expressions share their compiled form through `shared`.
pub fn compile(spec: &StagedBindingPolicySpec, shared: &SharedExpressions) -> Result<Vec<StageExpressions>, String> {
    spec.stages
        .iter()
        .map(|stage| {
            let compile = |source: &Option<String>, variables: &[&str], field: &str| {
                source
                    .as_deref()
                    .map(|s| {
                        shared
                            .compile(s, variables)
                            .map(Arc::new)
                            .map_err(|err| format!("stage {:?} {field}: {err}", stage.name))
                    })
                    .transpose()
            };
            Ok(StageExpressions {
                filter: compile(&stage.filter, &[FILTER_VARIABLE], "filter")?,
                condition: compile(&stage.condition, &[CONDITION_VARIABLE, CONDITION_ALIAS], "condition")?,
            })
        })
        .collect()
}
