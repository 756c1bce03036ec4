//! Pods that really run: the control plane with a real node (containerd, runc, the kubelet,
//! kube-proxy, kube-scheduler; see `orrery_e2e::node`). Where the node cannot start here (not
//! root, no cgroups, packages missing) each test says why and passes without running; with
//! `ORRERY_REQUIRE_NODE=1`, as CI sets, that is a failure instead.

// A test that cannot proceed should stop right there, with the error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::PostParams;
use orrery_e2e::node::{BUSYBOX_IMAGE, NODE_NAME};
use orrery_e2e::{Deadline, TestEnv, poll_until};
use serde_json::json;

/// What a real pod takes to start, pull-free, and finish.
const POD_DEADLINE: Deadline = Deadline(Duration::from_secs(90));

async fn finished_pod(pods: &Api<Pod>, name: &str) -> Pod {
    poll_until(&format!("pod {name} to finish"), POD_DEADLINE, || async {
        let pod = pods.get(name).await.map_err(|e| e.to_string())?;
        match pod.status.as_ref().and_then(|s| s.phase.as_deref()) {
            Some("Succeeded" | "Failed") => Ok(pod),
            _ => Err(format!("{:?}", pod.status)),
        }
    })
    .await
}

#[tokio::test]
async fn a_pod_runs_on_the_real_node_and_its_exit_code_and_termination_message_come_from_the_kubelet() {
    let Some(env) = TestEnv::with_node().await else { return };
    let pods = env.namespaced::<Pod>();
    // No nodeName: kube-scheduler places it.
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "exit3"},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{
                "name": "main",
                "image": BUSYBOX_IMAGE,
                "command": ["sh", "-c", "echo \"written by $(hostname)\" > /dev/termination-log; exit 3"]
            }]
        }
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let pod = finished_pod(&pods, "exit3").await;
    assert_eq!(pod.spec.as_ref().unwrap().node_name.as_deref(), Some(NODE_NAME));
    let status = pod.status.unwrap();
    assert_eq!(status.phase.as_deref(), Some("Failed"));
    assert!(
        status.pod_ip.as_deref().is_some_and(|ip| ip.starts_with("10.250.")),
        "a pod IP from the node's bridge: {:?}",
        status.pod_ip
    );
    let terminated = status.container_statuses.unwrap()[0]
        .state
        .clone()
        .unwrap()
        .terminated
        .expect("the container terminated");
    assert_eq!(terminated.exit_code, 3);
    assert_eq!(terminated.reason.as_deref(), Some("Error"));
    assert_eq!(terminated.message.as_deref(), Some("written by exit3\n"));
}

#[tokio::test]
async fn a_pod_reaches_the_api_server_through_the_kubernetes_service() {
    let Some(env) = TestEnv::with_node().await else { return };
    let pods = env.namespaced::<Pod>();
    // In-cluster configuration as a controller's: the Service's environment and the projected
    // ServiceAccount token. busybox's TLS shares no cipher suite with the API server, so what
    // answers is checked, not the token: the API server's TLS alert, through kube-proxy's
    // rules, from the Service address to the host's end of the node's link.
    let script = r#"test -s /var/run/secrets/kubernetes.io/serviceaccount/token && echo "token mounted"
wget -q -O /dev/null --no-check-certificate "https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT/version" 2>&1
echo "$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT"
nc -w 3 10.0.0.1 443 </dev/null && echo "service open""#;
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "caller"},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{
                "name": "main",
                "image": BUSYBOX_IMAGE,
                "command": ["sh", "-c", format!("({script}) > /dev/termination-log")]
            }]
        }
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let pod = finished_pod(&pods, "caller").await;
    let (_, message) = termination(&pod);
    assert!(message.contains("token mounted"), "{message}");
    assert!(message.contains("10.0.0.1:443"), "{message}");
    assert!(
        message.contains("TLS error from peer") && message.contains("service open"),
        "a TLS server answered at the kubernetes Service: {message}"
    );
}

/// The first container's exit code and termination message.
fn termination(pod: &Pod) -> (i32, String) {
    let terminated = pod.status.as_ref().unwrap().container_statuses.as_ref().unwrap()[0]
        .state
        .clone()
        .unwrap()
        .terminated
        .expect("the container terminated");
    (terminated.exit_code, terminated.message.unwrap_or_default())
}
