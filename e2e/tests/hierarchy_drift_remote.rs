//! hierarchy-executor repairs drift on a remote cluster: every kind of object it makes there,
//! deleted or edited by hand, is put back at the resource's next 15 s recheck (no watch reaches
//! another cluster), and the resource says so in `status.lastRepair`. A control plane of its
//! own.

// A test that cannot proceed should stop right there, with the error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod drift;

use drift::{ONE_AT_A_TIME, deleted_and_edited_objects_come_back};
use orrery_e2e::pod_simulator::PodSimulator;
use orrery_e2e::{ControlPlane, TestEnv};

#[tokio::test]
async fn on_a_remote_cluster_every_kind_deleted_or_edited_is_restored_at_the_next_recheck() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let env = TestEnv::new().await;
    let remote = tokio::task::spawn_blocking(ControlPlane::start).await.unwrap().unwrap();
    let remote_client = remote.client().await;
    let _remote_kubelet = PodSimulator::start(remote_client.clone(), None).await.unwrap();
    let kubeconfig = remote.kubeconfig_inline().unwrap();
    deleted_and_edited_objects_come_back(&env, &remote_client, Some(kubeconfig)).await;
}
