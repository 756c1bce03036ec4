//! What policies see of an Application: its versions' readiness (as its executor reports
//! them), the traffic in force, and how the pipeline's last run ended.

use crd_types::hierarchy::{Application, RouteMatch, TrafficDocument, VersionWeight};
use kube::ResourceExt;
use serde::{Deserialize, Serialize};

use crate::policy::{Phase, all_to};

/// The observed state every step receives (and `cel` and `webhook` policies see as `observed`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Observed {
    /// The Application's name.
    pub application: String,
    /// Its namespace.
    pub namespace: String,
    /// Its spec generation.
    pub generation: i64,
    /// Its versions, in spec order.
    pub versions: Vec<ObservedVersion>,
    /// The weights in the HTTPRoute now.
    pub weights: Vec<VersionWeight>,
    /// The matches in the HTTPRoute now.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<RouteMatch>,
    /// How the pipeline's previous run ended.
    pub last_run: LastRun,
}

/// One version as observed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObservedVersion {
    /// Its name.
    pub name: String,
    /// A fingerprint of its spec: changes when its image, arguments, environment or replicas do.
    pub revision: String,
    /// Desired replicas.
    pub replicas: i32,
    /// Ready replicas, as the executor last reported them for this spec generation (0 before).
    pub ready_replicas: i32,
    /// Container restarts across its pods, as reported.
    pub restarts: i32,
}

impl ObservedVersion {
    /// Every replica ready (and at least one asked for).
    pub fn ready(&self) -> bool {
        self.replicas > 0 && self.ready_replicas >= self.replicas
    }
}

/// How the pipeline's previous run ended.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LastRun {
    /// The first step that rolled back, and why: a canary stops there for good.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_back: Option<String>,
}

impl Observed {
    /// What policies see of `app`.
    pub fn of(app: &Application) -> Self {
        let status = app.status.as_ref();
        // The executor's readiness counts only once it has seen this spec generation.
        let current = status.and_then(|s| s.common.observed_generation) == app.metadata.generation;
        let versions = app
            .spec
            .versions
            .iter()
            .map(|version| {
                let reported = status
                    .filter(|_| current)
                    .and_then(|s| s.versions.iter().find(|v| v.name == version.name));
                ObservedVersion {
                    name: version.name.clone(),
                    revision: fingerprint(&serde_json::to_string(version).unwrap_or_default()),
                    replicas: version.replicas.unwrap_or(1),
                    ready_replicas: reported.map_or(0, |v| v.ready_replicas),
                    restarts: reported.map_or(0, |v| v.restarts),
                }
            })
            .collect();
        let last_run = LastRun {
            rolled_back: status
                .and_then(|s| s.common.policy.as_ref())
                .and_then(|p| {
                    p.steps
                        .iter()
                        .enumerate()
                        .find(|(_, s)| s.phase == Phase::RolledBack.as_str())
                })
                .map(|(i, s)| {
                    format!(
                        "step {} ({}) rolled back: {}",
                        i + 1,
                        s.name,
                        s.message.as_deref().unwrap_or_default()
                    )
                }),
        };
        Observed {
            application: app.name_any(),
            namespace: app.namespace().unwrap_or_default(),
            generation: app.metadata.generation.unwrap_or_default(),
            versions,
            weights: status.map(|s| s.weights.clone()).unwrap_or_default(),
            matches: status.map(|s| s.matches.clone()).unwrap_or_default(),
            last_run,
        }
    }

    /// The version named `name`.
    pub fn version(&self, name: &str) -> Option<&ObservedVersion> {
        self.versions.iter().find(|v| v.name == name)
    }
}

/// The first step's input: the spec's weights, or all traffic to the first version.
pub fn initial_document(app: &Application) -> TrafficDocument {
    let weights = if app.spec.weights.is_empty() {
        app.spec.versions.first().map(|v| all_to(&v.name)).unwrap_or_default()
    } else {
        app.spec.weights.clone()
    };
    TrafficDocument {
        weights,
        ..TrafficDocument::default()
    }
}

/// FNV-1a: a fingerprint that stays the same across builds, so a restart with a new binary
/// does not mistake an unchanged version for a new one.
fn fingerprint(text: &str) -> String {
    let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn app(status: serde_json::Value) -> Application {
        serde_json::from_value(json!({
            "metadata": {"name": "shop", "namespace": "team-a", "generation": 4},
            "spec": {"versions": [{"name": "v1", "image": "shop:1"}, {"name": "v2", "image": "shop:2", "replicas": 2}],
                     "policies": [{"name": "canary"}]},
            "status": status,
        }))
        .unwrap()
    }

    #[test]
    fn readiness_counts_only_for_the_current_generation() {
        let versions = json!([{"name": "v2", "replicas": 2, "readyReplicas": 2}]);
        let current = Observed::of(&app(json!({"observedGeneration": 4, "versions": versions})));
        assert!(current.version("v2").unwrap().ready());
        let stale = Observed::of(&app(json!({"observedGeneration": 3, "versions": versions})));
        assert_eq!(stale.version("v2").unwrap().ready_replicas, 0);
    }

    #[test]
    fn a_revision_changes_with_the_version_spec_only() {
        let before = Observed::of(&app(json!({})));
        let mut changed = app(json!({}));
        changed.spec.versions[1].image = "shop:3".into();
        let after = Observed::of(&changed);
        assert_eq!(before.versions[0].revision, after.versions[0].revision);
        assert_ne!(before.versions[1].revision, after.versions[1].revision);
    }

    #[test]
    fn the_last_run_names_the_step_that_rolled_back() {
        let observed = Observed::of(&app(json!({"policy": {"steps": [
            {"name": "canary", "phase": "Progressing"},
            {"name": "health-gate", "phase": "RolledBack", "message": "v2 has 0/2 ready"},
        ]}})));
        assert_eq!(
            observed.last_run.rolled_back.as_deref(),
            Some("step 2 (health-gate) rolled back: v2 has 0/2 ready")
        );
    }

    #[test]
    fn the_first_input_is_the_spec_weights_or_the_first_version() {
        assert_eq!(initial_document(&app(json!({}))).weights, all_to("v1"));
    }
}
