//! The Helm chart (`charts/orrery`), rendered by a real helm: every value set renders objects
//! the real API server accepts (server-side dry run), each controller brings only its own
//! CRDs and RBAC (no wildcards), its pods pass Pod Security "restricted", and the kustomize
//! bases under `manifests/` are exactly the chart's rendering.

// A test that cannot proceed should stop right there, with the error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{DynamicObject, PostParams};
use kube::{Api, ResourceExt};
use orrery_e2e::helm::{self, CONTROLLERS};
use orrery_e2e::{Deadline, TestEnv, apply, poll_until};
use serde_json::json;

fn kinds(objects: &[DynamicObject]) -> Vec<String> {
    objects.iter().map(|o| o.types.clone().unwrap().kind).collect()
}

fn crd_names(objects: &[DynamicObject]) -> BTreeSet<String> {
    objects
        .iter()
        .filter(|o| o.types.as_ref().unwrap().kind == "CustomResourceDefinition")
        .map(|o| o.name_any())
        .collect()
}

async fn ensure_namespace(env: &TestEnv, name: &str, labels: serde_json::Value) {
    let namespace: Namespace = serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap();
    match Api::<Namespace>::all(env.client.clone())
        .create(&PostParams::default(), &namespace)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(err) => panic!("{err}"),
    }
}

#[tokio::test]
async fn every_value_set_renders_objects_the_api_server_accepts() {
    let env = TestEnv::new().await;
    ensure_namespace(&env, helm::NAMESPACE, json!({})).await;
    let value_sets: Vec<Vec<&str>> = vec![
        vec![],
        vec!["crds.install=false"],
        vec![
            "ignitorScheduler.enabled=false",
            "stagedBinding.enabled=false",
            "hierarchyExecutor.enabled=false",
            "policyRunner.enabled=false",
        ],
        vec![
            "image.registry=registry.example.com/platform",
            "image.tag=dev",
            "logFormat=text",
            "httpPort=9090",
            "imagePullSecrets[0].name=regcred",
            "taskWorkflow.replicas=1",
            "taskWorkflow.extraArgs={--qps=50,--concurrency=4}",
            "policyRunner.nodeSelector.disk=ssd",
            "policyRunner.tolerations[0].key=dedicated",
            "policyRunner.tolerations[0].operator=Exists",
            "hierarchyExecutor.resources.limits.memory=256Mi",
        ],
        vec!["egress.allowedCIDRs={10.0.0.0/8,2001:db8::/32}"],
        vec!["admissionPolicies.enabled=false", "networkPolicy.enabled=false"],
    ];
    for values in &value_sets {
        let objects = helm::render(values).unwrap();
        assert!(!objects.is_empty(), "{values:?} rendered nothing");
        for object in &objects {
            apply(&env.client, object, true)
                .await
                .unwrap_or_else(|err| panic!("with {values:?}: {err:#}"));
        }
    }

    // The custom values reach the Deployments.
    let objects = helm::render(&value_sets[3]).unwrap();
    let deployment = |name: &str| -> Deployment {
        let object = objects
            .iter()
            .find(|o| o.types.as_ref().unwrap().kind == "Deployment" && o.name_any() == name)
            .unwrap();
        serde_json::from_value(serde_json::to_value(object).unwrap()).unwrap()
    };
    let workflow = deployment("task-workflow");
    let spec = workflow.spec.unwrap();
    assert_eq!(spec.replicas, Some(1));
    let pod = spec.template.spec.unwrap();
    assert_eq!(pod.image_pull_secrets.unwrap()[0].name, "regcred");
    let container = &pod.containers[0];
    assert_eq!(
        container.image.as_deref(),
        Some("registry.example.com/platform/task-workflow:dev")
    );
    assert_eq!(
        container.args.clone().unwrap(),
        [
            "--log-format=text",
            "--http-addr=0.0.0.0:9090",
            "--qps=50",
            "--concurrency=4"
        ]
    );
    let runner = deployment("policy-runner").spec.unwrap().template.spec.unwrap();
    assert_eq!(runner.node_selector.unwrap()["disk"], "ssd");
    assert_eq!(runner.tolerations.unwrap()[0].key.as_deref(), Some("dedicated"));
}

#[test]
fn each_controller_brings_only_its_crds_and_least_privilege_rbac() {
    let workflow: BTreeSet<String> = ["ignitors", "tasks", "taskruns"]
        .iter()
        .map(|k| format!("{k}.workflow.orrery.dev"))
        .collect();
    let hierarchy: BTreeSet<String> = ["projects", "clusters", "virtualclusters", "applications"]
        .iter()
        .map(|k| format!("{k}.hierarchy.orrery.dev"))
        .collect();
    let placement: BTreeSet<String> = ["stagedbindingpolicies.placement.orrery.dev".to_owned()].into();
    for (controller, _) in CONTROLLERS {
        let mut values = helm::only(controller);
        let objects = helm::render(&values).unwrap();
        let expected = match controller {
            "ignitor-scheduler" | "task-workflow" => &workflow,
            "staged-binding" => &placement,
            _ => &hierarchy,
        };
        assert_eq!(&crd_names(&objects), expected, "{controller}");
        for crd in objects
            .iter()
            .filter(|o| o.types.as_ref().unwrap().kind == "CustomResourceDefinition")
        {
            assert_eq!(
                crd.annotations().get("helm.sh/resource-policy").map(String::as_str),
                Some("keep"),
                "uninstalling must not delete users' resources with {}",
                crd.name_any()
            );
        }
        let mut own: Vec<String> = kinds(&objects)
            .into_iter()
            .filter(|k| k != "CustomResourceDefinition")
            .collect();
        own.sort();
        let mut expected_kinds = vec![
            "ClusterRole",
            "ClusterRoleBinding",
            "Deployment",
            "NetworkPolicy",
            "Role",
            "RoleBinding",
            "ServiceAccount",
        ];
        // The admission policies come with the controller they protect, one per rule.
        let policies = match controller {
            "hierarchy-executor" => 5,
            "task-workflow" => 2,
            "staged-binding" | "lambda-executor" => 1,
            _ => 0,
        };
        for _ in 0..policies {
            expected_kinds.extend(["ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"]);
        }
        expected_kinds.sort();
        assert_eq!(own, expected_kinds, "{controller}");
        for role in objects
            .iter()
            .filter(|o| o.types.as_ref().unwrap().kind.ends_with("Role"))
        {
            for rule in role.data["rules"].as_array().unwrap() {
                for field in ["apiGroups", "resources", "verbs"] {
                    let items = rule[field].as_array().unwrap();
                    assert!(
                        !items.iter().any(|i| i.as_str().unwrap().contains('*')),
                        "{controller}: a wildcard in {}: {rule}",
                        role.name_any()
                    );
                }
            }
        }
        values.push("crds.install=false".into());
        let without = helm::render(&values).unwrap();
        assert!(crd_names(&without).is_empty(), "{controller}: crds.install=false");
        values.extend([
            "admissionPolicies.enabled=false".into(),
            "networkPolicy.enabled=false".into(),
        ]);
        let bare = kinds(&helm::render(&values).unwrap());
        assert!(
            !bare
                .iter()
                .any(|k| k.starts_with("ValidatingAdmissionPolicy") || k == "NetworkPolicy"),
            "{controller}: admissionPolicies.enabled=false, networkPolicy.enabled=false: {bare:?}"
        );
    }
    let objects = helm::render(&helm::only("none")).unwrap();
    assert!(objects.is_empty(), "{:?}", kinds(&objects));
}

#[tokio::test]
async fn the_controllers_pods_pass_pod_security_restricted() {
    let env = TestEnv::new().await;
    let namespace = format!("{}-restricted", env.namespace);
    ensure_namespace(
        &env,
        &namespace,
        json!({"pod-security.kubernetes.io/enforce": "restricted"}),
    )
    .await;
    let pods = Api::<Pod>::namespaced(env.client.clone(), &namespace);
    // The namespace really enforces it: a pod without the restricted settings is refused.
    let loose: Pod = serde_json::from_value(
        json!({"metadata": {"name": "loose"}, "spec": {"containers": [{"name": "c", "image": "x"}]}}),
    )
    .unwrap();
    let refused = pods
        .create(
            &PostParams {
                dry_run: true,
                ..Default::default()
            },
            &loose,
        )
        .await;
    assert!(
        matches!(&refused, Err(kube::Error::Api(s)) if s.code == 403 && s.message.contains("restricted")),
        "{refused:?}"
    );
    for object in helm::render::<&str>(&[]).unwrap() {
        if object.types.as_ref().unwrap().kind != "Deployment" {
            continue;
        }
        let deployment: Deployment = serde_json::from_value(serde_json::to_value(&object).unwrap()).unwrap();
        let template = deployment.spec.unwrap().template;
        let pod = Pod {
            metadata: kube::api::ObjectMeta {
                name: Some(object.name_any()),
                labels: template.metadata.and_then(|m| m.labels),
                ..Default::default()
            },
            spec: template.spec,
            status: None,
        };
        pods.create(
            &PostParams {
                dry_run: true,
                ..Default::default()
            },
            &pod,
        )
        .await
        .unwrap_or_else(|err| panic!("{}: {err}", object.name_any()));
    }
    Api::<Namespace>::all(env.client.clone())
        .delete(&namespace, &Default::default())
        .await
        .unwrap();
}

#[test]
fn the_kustomize_bases_are_the_charts_rendering() {
    for (controller, _) in CONTROLLERS {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../manifests")
            .join(controller)
            .join(format!("{controller}.yaml"));
        let committed = std::fs::read_to_string(&path).unwrap();
        assert!(
            committed == helm::kustomize_base(controller).unwrap(),
            "{} differs from the chart: run `just manifests`",
            path.display()
        );
    }
}

/// Crates with a controller binary that the chart does not deploy, and why.
const NOT_DEPLOYED: [(&str, &str); 1] = [("example-executor", "an example to copy, not a product")];

#[test]
fn every_controller_crate_is_in_the_chart() {
    let crates = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates");
    let mut controllers = Vec::new();
    for entry in std::fs::read_dir(&crates).unwrap() {
        let dir = entry.unwrap().path();
        let main = std::fs::read_to_string(dir.join("src/main.rs")).unwrap_or_default();
        // A controller binary hands its loop to the shared runtime.
        if main.contains("orrery_runtime::run(") {
            controllers.push(dir.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    controllers.sort();
    assert!(controllers.len() >= CONTROLLERS.len(), "{controllers:?}");
    for controller in &controllers {
        let in_chart = CONTROLLERS.iter().any(|(name, _)| name == controller);
        let excused = NOT_DEPLOYED.iter().any(|(name, _)| name == controller);
        assert!(
            in_chart || excused,
            "crates/{controller} runs a controller but the chart does not deploy it: see docs/development.md, Adding a controller crate"
        );
    }
    let helpers = std::fs::read_to_string(helm::chart_dir().join("templates/_helpers.tpl")).unwrap();
    let rules = std::fs::read_to_string(helm::chart_dir().join("templates/_rules.tpl")).unwrap();
    for (name, key) in CONTROLLERS {
        assert!(
            helpers.contains(&format!("{{name: {name}, key: {key},")),
            "{name} in _helpers.tpl"
        );
        assert!(
            rules.contains(&format!("define \"orrery.rules.{name}\"")),
            "{name} in _rules.tpl"
        );
    }
}

#[tokio::test]
async fn helm_installs_and_uninstalls_the_chart_on_the_real_control_plane() {
    let env = TestEnv::new().await;
    let _kubelet = orrery_e2e::pod_simulator::PodSimulator::start(env.client.clone(), None)
        .await
        .unwrap();
    // A release of its own: namespace and ClusterRole names cannot meet another test's. The
    // CRDs are already installed by the test harness (under another owner), so the release
    // leaves them alone here; the render test checks what it would install.
    let release = format!("{}-rel", env.namespace);
    let namespace = format!("{}-orrery", env.namespace);
    let kubeconfig = env.plane().kubeconfig_path();
    let helm_run = |args: Vec<String>| {
        let output = std::process::Command::new(helm::binary().unwrap())
            .args(&args)
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "helm {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let chart = helm::chart_dir().display().to_string();
    helm_run(
        [
            "install",
            &release,
            &chart,
            "--namespace",
            &namespace,
            "--create-namespace",
            "--set",
            "crds.install=false",
        ]
        .map(String::from)
        .to_vec(),
    );
    // Every Deployment becomes available (the pod simulator runs the pods).
    let deployments = Api::<Deployment>::namespaced(env.client.clone(), &namespace);
    let mut expected: Vec<String> = CONTROLLERS.iter().map(|(n, _)| (*n).to_owned()).collect();
    expected.sort();
    poll_until("every Deployment available", Deadline::default(), || async {
        let list = deployments.list(&Default::default()).await.map_err(|e| e.to_string())?;
        let available: Vec<String> = list
            .items
            .iter()
            .filter(|d| d.status.as_ref().and_then(|s| s.available_replicas) == Some(2))
            .map(|d| d.name_any())
            .collect();
        if available.len() == expected.len() {
            Ok(())
        } else {
            let statuses: Vec<_> = list.items.iter().map(|d| (d.name_any(), d.status.clone())).collect();
            Err(format!("{statuses:?}"))
        }
    })
    .await;
    let mut names: Vec<String> = deployments
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|d| d.name_any())
        .collect();
    names.sort();
    assert_eq!(names, expected);
    let roles = Api::<k8s_openapi::api::rbac::v1::ClusterRole>::all(env.client.clone());
    assert!(
        roles
            .get_opt(&format!("{release}-task-workflow"))
            .await
            .unwrap()
            .is_some()
    );

    helm_run(
        ["uninstall", &release, "--namespace", &namespace, "--wait"]
            .map(String::from)
            .to_vec(),
    );
    assert!(
        roles
            .get_opt(&format!("{release}-task-workflow"))
            .await
            .unwrap()
            .is_none()
    );
    let left = Api::<Deployment>::namespaced(env.client.clone(), &namespace)
        .list(&Default::default())
        .await
        .unwrap();
    assert!(left.items.is_empty(), "uninstall removes the Deployments");
    Api::<Namespace>::all(env.client.clone())
        .delete(&namespace, &Default::default())
        .await
        .unwrap();
}

fn container_args(objects: &[DynamicObject], name: &str) -> Vec<String> {
    let object = objects
        .iter()
        .find(|o| o.types.as_ref().unwrap().kind == "Deployment" && o.name_any() == name)
        .unwrap();
    let deployment: Deployment = serde_json::from_value(serde_json::to_value(object).unwrap()).unwrap();
    deployment.spec.unwrap().template.spec.unwrap().containers[0]
        .args
        .clone()
        .unwrap()
}

fn network_policy(objects: &[DynamicObject], name: &str) -> NetworkPolicy {
    let object = objects
        .iter()
        .find(|o| o.types.as_ref().unwrap().kind == "NetworkPolicy" && o.name_any() == name)
        .unwrap_or_else(|| panic!("no NetworkPolicy {name}"));
    serde_json::from_value(serde_json::to_value(object).unwrap()).unwrap()
}

/// The CIDRs a NetworkPolicy lets its pods reach, per egress rule.
fn egress_cidrs(policy: &NetworkPolicy) -> Vec<Vec<String>> {
    policy
        .spec
        .as_ref()
        .unwrap()
        .egress
        .clone()
        .unwrap_or_default()
        .iter()
        .map(|rule| {
            rule.to
                .clone()
                .unwrap_or_default()
                .iter()
                .filter_map(|peer| peer.ip_block.as_ref().map(|b| b.cidr.clone()))
                .collect()
        })
        .collect()
}

#[test]
fn the_egress_allow_list_and_protected_namespace_reach_the_controllers() {
    // Empty list: no --allowed-egress flag (the binaries' default); hierarchy-executor always
    // protects the release namespace.
    let objects = helm::render::<&str>(&[]).unwrap();
    for (controller, _) in CONTROLLERS {
        let args = container_args(&objects, controller);
        assert!(
            !args.iter().any(|a| a.starts_with("--allowed-egress")),
            "{controller}: {args:?}"
        );
        assert_eq!(
            args.contains(&format!("--protected-namespaces={}", helm::NAMESPACE)),
            controller == "hierarchy-executor",
            "{controller}: {args:?}"
        );
    }
    // The controllers making outbound requests may reach anything but link-local; the others
    // only DNS and the API server.
    let workflow = network_policy(&objects, "task-workflow");
    assert_eq!(
        egress_cidrs(&workflow),
        [
            vec![],
            vec!["0.0.0.0/0".to_owned()],
            vec!["0.0.0.0/0".to_owned(), "::/0".to_owned()]
        ]
    );
    let outbound = &workflow.spec.as_ref().unwrap().egress.as_ref().unwrap()[2];
    let except = outbound.to.as_ref().unwrap()[0]
        .ip_block
        .as_ref()
        .unwrap()
        .except
        .clone();
    assert_eq!(except.unwrap(), ["169.254.0.0/16"]);
    assert_eq!(
        egress_cidrs(&network_policy(&objects, "ignitor-scheduler")),
        [vec![], vec!["0.0.0.0/0".to_owned()]]
    );
    let ingress = network_policy(&objects, "staged-binding")
        .spec
        .unwrap()
        .ingress
        .unwrap();
    assert_eq!(ingress.len(), 1);
    assert!(
        ingress[0].from.is_none(),
        "metrics and probes come from outside the namespace"
    );
    let ports = ingress[0].ports.clone().unwrap();
    assert_eq!(
        serde_json::to_value(&ports).unwrap(),
        json!([{"port": "http", "protocol": "TCP"}])
    );

    // A list: every controller gets the flag; the outbound controllers' NetworkPolicies allow
    // exactly those CIDRs.
    let objects = helm::render(&[
        "egress.allowedCIDRs={10.0.0.0/8,2001:db8::/32}",
        "networkPolicy.apiServerCIDRs={192.0.2.10/32}",
    ])
    .unwrap();
    for (controller, _) in CONTROLLERS {
        let args = container_args(&objects, controller);
        assert!(
            args.contains(&"--allowed-egress=10.0.0.0/8,2001:db8::/32".to_owned()),
            "{controller}: {args:?}"
        );
        let cidrs = egress_cidrs(&network_policy(&objects, controller));
        let mut expected = vec![vec![], vec!["192.0.2.10/32".to_owned()]];
        if [
            "task-workflow",
            "policy-runner",
            "hierarchy-executor",
            "lambda-executor",
        ]
        .contains(&controller)
        {
            expected.push(vec!["10.0.0.0/8".to_owned(), "2001:db8::/32".to_owned()]);
        }
        assert_eq!(cidrs, expected, "{controller}");
    }
}
