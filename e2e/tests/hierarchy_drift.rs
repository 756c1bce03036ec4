//! hierarchy-executor repairs drift on this cluster: every kind of object it makes (Namespace,
//! ResourceQuota, LimitRange, NetworkPolicy, RoleBinding, Deployment, Service, HTTPRoute),
//! deleted or with a field it sets changed by hand, is put back at once, and the resource it
//! belongs to says so in `status.lastRepair`. Each drift test has a control plane of its own,
//! so one cannot disturb another's repairs.

// A test that cannot proceed should stop right there, with the error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod drift;

use drift::{ONE_AT_A_TIME, deleted_and_edited_objects_come_back};
use orrery_e2e::TestEnv;
use orrery_e2e::pod_simulator::PodSimulator;

#[tokio::test]
async fn on_this_cluster_every_kind_deleted_or_edited_is_restored_at_once() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let env = TestEnv::new().await;
    let _kubelet = PodSimulator::start(env.client.clone(), None).await.unwrap();
    let target = env.client.clone();
    deleted_and_edited_objects_come_back(&env, &target, None).await;
}
