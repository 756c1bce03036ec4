//! The fault classes, and how each is injected.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};
use rand::Rng;
use rand::rngs::StdRng;
use serde_json::{Value, json};

use crate::fault_proxy::Toxic;
use crate::replicas::Replicas;
use crate::{Deadline, until};

use super::*;

/// A kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultClass {
    /// A controller's task aborted mid-work (as SIGKILL would), or the leading replica of
    /// [`REPLICATED`] killed with SIGKILL; started again after 0-5 s.
    ControllerKill,
    /// The control plane killed and started again on its data.
    ApiServerRestart,
    /// A FlowSchema gives the controllers' user a priority level of one share that rejects
    /// what exceeds it: the API server answers 429.
    Throttling,
    /// A toxic of the fault proxy between the controllers and the API server, for 2-6 s:
    /// connections reset, delayed, stalled, starved or cut mid-stream ([`Toxic`]).
    Network,
    /// The controllers cut off (the proxy off) for 2-5 s while work goes on, and etcd compacted
    /// meanwhile: the watches they resume of [`UNCACHED`] kinds, served from etcd, answer
    /// 410 Gone, and they must list again.
    WatchExpiry,
}

/// The built-in kinds the controllers watch, served without the API server's watch cache so
/// that an etcd compaction expires their watches (custom resources always have a cache: the
/// API server answers 410 for them only beyond its window, which its restarts exercise).
pub(super) const UNCACHED: &[&str] = &[
    "pods",
    "namespaces",
    "services",
    "resourcequotas",
    "limitranges",
    "deployments.apps",
    "networkpolicies.networking.k8s.io",
    "rolebindings.rbac.authorization.k8s.io",
];

impl FaultClass {
    pub(super) fn label(self) -> &'static str {
        match self {
            FaultClass::ControllerKill => "controller kill",
            FaultClass::ApiServerRestart => "API server restart",
            FaultClass::Throttling => "throttling (429)",
            FaultClass::Network => "network fault (proxy)",
            FaultClass::WatchExpiry => "watch expiry (compaction)",
        }
    }
}

/// Lets the admin impersonate the controllers' user, gives that user cluster-admin (least
/// authority is tested elsewhere), and sets up the throttling priority level (its FlowSchema
/// comes and goes with the faults).
pub(super) async fn prepare_access(admin: &Client) -> anyhow::Result<()> {
    let binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": CONTROLLER_USER},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": CONTROLLER_USER}]
    });
    Api::<k8s_openapi::api::rbac::v1::ClusterRoleBinding>::all(admin.clone())
        .create(&PostParams::default(), &serde_json::from_value(binding)?)
        .await?;
    let level = json!({
        "apiVersion": "flowcontrol.apiserver.k8s.io/v1", "kind": "PriorityLevelConfiguration",
        "metadata": {"name": PRIORITY_LEVEL},
        "spec": {"type": "Limited", "limited": {
            "nominalConcurrencyShares": 1, "lendablePercent": 0, "borrowingLimitPercent": 0,
            "limitResponse": {"type": "Reject"}}}
    });
    Api::<k8s_openapi::api::flowcontrol::v1::PriorityLevelConfiguration>::all(admin.clone())
        .create(&PostParams::default(), &serde_json::from_value(level)?)
        .await?;
    Ok(())
}

pub(super) fn flow_schema() -> Value {
    json!({
        "apiVersion": "flowcontrol.apiserver.k8s.io/v1", "kind": "FlowSchema",
        "metadata": {"name": FLOW_SCHEMA},
        "spec": {
            "priorityLevelConfiguration": {"name": PRIORITY_LEVEL},
            "matchingPrecedence": 100,
            "distinguisherMethod": {"type": "ByUser"},
            "rules": [{
                "subjects": [{"kind": "User", "user": {"name": CONTROLLER_USER}}],
                "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"], "clusterScope": true, "namespaces": ["*"]}],
                "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}]
            }]
        }
    })
}
/// Injects faults of `class` until `until`, at gaps drawn from `rng`.
pub(super) async fn inject(
    world: Arc<World>,
    class: FaultClass,
    phase: usize,
    until: Instant,
    mut rng: StdRng,
) -> anyhow::Result<()> {
    loop {
        let gap = match class {
            FaultClass::ControllerKill => rng.random_range(0.5..2.5),
            FaultClass::ApiServerRestart => rng.random_range(6.0..14.0),
            FaultClass::Throttling => rng.random_range(3.0..8.0),
            FaultClass::Network => rng.random_range(2.0..6.0),
            FaultClass::WatchExpiry => rng.random_range(2.0..6.0),
        };
        let gap = Duration::from_secs_f64(gap);
        if Instant::now() + gap >= until {
            return Ok(());
        }
        tokio::time::sleep(gap).await;
        match class {
            FaultClass::ControllerKill => {
                let drawn = rng.random_range(0..=CONTROLLERS.len());
                // A phase's first kill is of the leading replica: every run measures a takeover.
                let first = world.faults.lock().is_ok_and(|f| {
                    !f.iter()
                        .any(|f| f.phase == phase && f.class == FaultClass::ControllerKill)
                });
                let index = if first { CONTROLLERS.len() } else { drawn };
                let pause = Duration::from_secs_f64(rng.random_range(0.0..4.0));
                if index == CONTROLLERS.len() {
                    let takeover = Replicas::kill_leader(&world.replicas, pause).await?;
                    world.replica_kills.fetch_add(1, Ordering::SeqCst);
                    if let Ok(mut takeovers) = world.takeovers.lock() {
                        takeovers.push((phase, takeover));
                    }
                } else {
                    world.controllers.kill_and_restart(index, pause).await?;
                }
            }
            FaultClass::ApiServerRestart => {
                let plane = world.plane.clone();
                let away = tokio::task::spawn_blocking(move || plane.restart()).await??;
                if let Ok(mut restarts) = world.restarts.lock() {
                    restarts.push(away.as_secs_f64());
                }
            }
            FaultClass::Throttling => {
                let hold = Duration::from_secs_f64(rng.random_range(5.0..12.0));
                world.throttle_for(hold).await?;
            }
            FaultClass::Network => {
                let toxic = Toxic::ALL[rng.random_range(0..Toxic::ALL.len())];
                let hold = Duration::from_secs_f64(rng.random_range(2.0..6.0));
                world.proxy.add(toxic).await?;
                tokio::time::sleep(hold).await;
                world.proxy.remove(toxic).await?;
                if let Ok(mut toxics) = world.toxics.lock() {
                    *toxics.entry(toxic.name()).or_default() += 1;
                }
            }
            FaultClass::WatchExpiry => {
                let hold = Duration::from_secs_f64(rng.random_range(2.0..5.0));
                world.expire_watches(hold).await?;
            }
        }
        if let Ok(mut faults) = world.faults.lock() {
            faults.push(Fault {
                class,
                phase,
                ended: Instant::now(),
            });
        }
    }
}

impl World {
    /// Cuts the controllers off for `hold`, compacts etcd, and lets them back.
    pub(super) async fn expire_watches(&self, hold: Duration) -> anyhow::Result<()> {
        self.proxy.set_enabled(false).await?;
        tokio::time::sleep(hold).await;
        // An API server restarting meanwhile (all at once) moves etcd to a new URL.
        let compacted = until("compacting etcd", Deadline(Duration::from_secs(60)), || async {
            self.plane.compact_etcd().await.map_err(|e| format!("{e:#}"))
        })
        .await;
        self.proxy.set_enabled(true).await?;
        compacted?;
        Ok(())
    }

    /// Puts the controllers' user under the trickle priority level for `hold`, and counts the
    /// 429s the API server answered meanwhile.
    pub(super) async fn throttle_for(&self, hold: Duration) -> anyhow::Result<()> {
        let schemas: Api<k8s_openapi::api::flowcontrol::v1::FlowSchema> = Api::all(self.admin.clone());
        let before = self.rejected_so_far().await;
        create_retrying(&schemas, flow_schema()).await?;
        tokio::time::sleep(hold).await;
        until("deleting the FlowSchema", Deadline(Duration::from_secs(60)), || async {
            match schemas.delete(FLOW_SCHEMA, &DeleteParams::default()).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
                Err(err) => Err(err.to_string()),
            }
        })
        .await?;
        let after = self.rejected_so_far().await;
        // An API server restarted meanwhile counts from zero again.
        let rejected = if after >= before { after - before } else { after };
        self.rejected_429.fetch_add(rejected as usize, Ordering::SeqCst);
        Ok(())
    }

    /// `apiserver_flowcontrol_rejected_requests_total` for the controllers' FlowSchema, from
    /// the API server's /metrics (0 when it cannot be read).
    pub(super) async fn rejected_so_far(&self) -> u64 {
        let Ok(request) = http::Request::get("/metrics").body(Vec::new()) else {
            return 0;
        };
        let Ok(text) = self.admin.request_text(request).await else {
            return 0;
        };
        text.lines()
            .filter(|l| {
                l.starts_with("apiserver_flowcontrol_rejected_requests_total{")
                    && l.contains(&format!("flow_schema=\"{FLOW_SCHEMA}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }
}
