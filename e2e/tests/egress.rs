//! Outbound requests of the users' choosing (webhook policies, metric analysis, http-post) on
//! the real control plane: someone who may only create Applications, or Tasks and TaskRuns,
//! points them at loopback, the metadata service or the API server, and the controller
//! refuses without sending anything; with the address allowed by the operator, the same
//! works. And a URL read from a Secret never shows in a run's status.

// A test that cannot proceed should stop right there, with the error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crd_types::common::{CONDITION_READY, find_condition};
use crd_types::hierarchy::{Application, PolicyPipelineStatus};
use crd_types::workflow::{ActionResult, Task, TaskRun};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use orrery_e2e::pod_simulator::PodSimulator;
use orrery_e2e::{Deadline, InProcess, TestEnv, create, poll_until, warnings_for};
use orrery_runtime::Context;
use orrery_runtime::egress::{IpNet, api_server_addresses};
use serde_json::{Value, json};

const NOT_ALLOWED: &str = "list it in --allowed-egress";

/// A Role with `rules` in the test's namespace, bound to `user`; a client acting as them.
async fn user_with(env: &TestEnv, user: &str, rules: Value) -> Client {
    create(
        &env.namespaced::<Role>(),
        json!({"metadata": {"name": user}, "rules": rules}),
    )
    .await;
    create(
        &env.namespaced::<RoleBinding>(),
        json!({"metadata": {"name": user},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": user},
               "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]}),
    )
    .await;
    Client::try_from(env.impersonating(user, &[])).unwrap()
}

/// A server on `ip` answering `reply` to any request, and how many it got.
async fn counting_server(ip: &str, reply: Value) -> (SocketAddr, Arc<AtomicUsize>) {
    let count = Arc::new(AtomicUsize::new(0));
    let counted = count.clone();
    let app = axum::Router::new().fallback(move || {
        let count = counted.clone();
        let reply = reply.clone();
        async move {
            count.fetch_add(1, Ordering::SeqCst);
            ([(http::header::CONTENT_TYPE, "application/json")], reply.to_string())
        }
    });
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, count)
}

/// The API server's URL, and its addresses as a deployed controller finds them.
async fn api_server(env: &TestEnv) -> (String, Vec<IpAddr>) {
    let config = env.plane().config();
    let url = config.cluster_url.to_string().trim_end_matches('/').to_owned();
    (url, api_server_addresses(config).await)
}

/// A controller in the test's namespace that knows the API server, allowing egress to `allowed`.
async fn start<F, Fut>(env: &TestEnv, name: &str, allowed: &[&str], run: F) -> InProcess
where
    F: FnOnce(Context) -> Fut,
    Fut: std::future::Future<Output = Result<(), orrery_runtime::BoxError>> + Send + 'static,
{
    let (context, stop) = Context::standalone(env.client.clone(), name);
    let (_, api) = api_server(env).await;
    let allowed: Vec<IpNet> = allowed.iter().map(|cidr| cidr.parse().unwrap()).collect();
    let context = context
        .in_namespace(&env.namespace)
        .with_api_server(api)
        .allowing_egress(allowed);
    InProcess::start_with(context, stop, run)
}

const APPLICATION_RULES: &str =
    r#"[{"apiGroups": ["hierarchy.orrery.dev"], "resources": ["applications"], "verbs": ["create"]}]"#;

/// Creates Application `name` with `policies` as `client`, then reports, as the executor
/// would (the test as admin), both versions ready on the current generation.
async fn application(env: &TestEnv, client: &Client, name: &str, policies: Value) {
    let mine: Api<Application> = Api::namespaced(client.clone(), &env.namespace);
    let app = create(
        &mine,
        json!({"metadata": {"name": name}, "spec": {
            "versions": [{"name": "v1", "image": "shop:1"}, {"name": "v2", "image": "shop:2"}],
            "policies": policies,
        }}),
    )
    .await;
    let status = json!({"apiVersion": "hierarchy.orrery.dev/v1alpha1", "kind": "Application",
        "status": {"observedGeneration": app.metadata.generation,
                   "weights": [{"version": "v1", "weight": 100}],
                   "versions": [{"name": "v1", "replicas": 1, "readyReplicas": 1},
                                {"name": "v2", "replicas": 1, "readyReplicas": 1}]}});
    env.namespaced::<Application>()
        .patch_status(name, &PatchParams::apply("stand-in-executor"), &Patch::Apply(&status))
        .await
        .unwrap();
}

async fn pipeline(env: &TestEnv, name: &str) -> Option<PolicyPipelineStatus> {
    let app = env.namespaced::<Application>().get(name).await.ok()?;
    app.status.and_then(|s| s.common.policy)
}

/// The Ready condition's reason and message once it has `reason`.
async fn stopped_with(env: &TestEnv, name: &str, reason: &str) -> String {
    poll_until(&format!("{name}: pipeline {reason}"), Deadline::default(), || async {
        let pipeline = pipeline(env, name).await.ok_or("no pipeline status yet")?;
        let ready = find_condition(&pipeline.conditions, CONDITION_READY).ok_or("no Ready condition")?;
        if ready.reason == reason {
            Ok(ready.message.clone())
        } else {
            Err(format!("{}: {}", ready.reason, ready.message))
        }
    })
    .await
}

fn webhook(url: &str) -> Value {
    json!([{"name": "webhook", "parameters": {"url": url, "timeout": "2s"}}])
}

#[tokio::test]
async fn a_webhook_policy_cannot_reach_loopback_the_metadata_service_or_the_api_server() {
    let env = TestEnv::new().await;
    let (listener, calls) = counting_server("127.0.0.2", json!({})).await;
    let (named, named_calls) = counting_server("127.0.0.1", json!({})).await;
    let (api_url, _) = api_server(&env).await;
    let runner = start(&env, policy_runner::NAME, &[], policy_runner::controller::run).await;
    let mallory = user_with(&env, "mallory", serde_json::from_str(APPLICATION_RULES).unwrap()).await;

    let loopback = format!("http://{listener}/policy");
    let by_name = format!("http://localhost:{}/policy", named.port());
    let secrets = format!("{api_url}/api/v1/namespaces/kube-system/secrets");
    application(&env, &mallory, "to-loopback", webhook(&loopback)).await;
    application(&env, &mallory, "to-localhost", webhook(&by_name)).await;
    application(
        &env,
        &mallory,
        "to-metadata",
        webhook("http://169.254.169.254/latest/meta-data/"),
    )
    .await;
    application(&env, &mallory, "to-api-server", webhook(&secrets)).await;
    let any_path = json!([{"name": "metric-analysis", "parameters": {
        "address": format!("http://{listener}/admin?"), "query": "up", "successCondition": "result > 0"}}]);
    application(&env, &mallory, "to-any-path", any_path).await;

    let ip = listener.ip();
    for (name, url, refusal) in [
        (
            "to-loopback",
            loopback,
            format!("egress to {ip} ({ip}) is not allowed: it is a loopback address"),
        ),
        (
            "to-metadata",
            "http://169.254.169.254/latest/meta-data/".to_owned(),
            "egress to 169.254.169.254 (169.254.169.254) is not allowed: it is a link-local address".to_owned(),
        ),
        (
            "to-api-server",
            secrets,
            "is not allowed: it is the API server's address".to_owned(),
        ),
    ] {
        let message = stopped_with(&env, name, "WebhookFailed").await;
        assert!(message.starts_with(&format!("step 1 (webhook): {url}: ")), "{message}");
        assert!(
            message.contains(&format!("{refusal}; {NOT_ALLOWED}")),
            "{name}: {message}"
        );
        let events = warnings_for(&env, name, "WebhookFailed", 1).await;
        assert_eq!(events, [message], "{name}: one Event says the same");
    }
    // A name is checked on what it resolves to.
    let message = stopped_with(&env, "to-localhost", "WebhookFailed").await;
    assert!(
        message.contains("egress to localhost (") && message.contains(NOT_ALLOWED),
        "{message}"
    );
    let message = stopped_with(&env, "to-any-path", "InvalidParameters").await;
    assert!(message.contains("it has a query"), "{message}");

    assert_eq!(calls.load(Ordering::SeqCst), 0, "nothing reached the loopback listener");
    assert_eq!(named_calls.load(Ordering::SeqCst), 0, "nothing reached localhost");
    for name in ["to-loopback", "to-metadata", "to-api-server", "to-localhost"] {
        assert_eq!(pipeline(&env, name).await.unwrap().output, None, "{name}: no output");
    }
    runner.stop().await;
}

#[tokio::test]
async fn a_webhook_policy_reaches_an_address_the_operator_listed_but_never_the_api_server() {
    let env = TestEnv::new().await;
    let reply = json!({"output": {"weights": [{"version": "v1", "weight": 70}, {"version": "v2", "weight": 30}]}});
    let (listener, calls) = counting_server("127.0.0.2", reply).await;
    let (api_url, api) = api_server(&env).await;
    assert!(
        api.iter().all(IpAddr::is_loopback),
        "the test's API server is on loopback: {api:?}"
    );
    // All of loopback allowed: the API server on it still is not, but for its exact address.
    let runner = start(
        &env,
        policy_runner::NAME,
        &["127.0.0.0/8"],
        policy_runner::controller::run,
    )
    .await;
    let tenant = user_with(&env, "tenant", serde_json::from_str(APPLICATION_RULES).unwrap()).await;
    application(
        &env,
        &tenant,
        "by-webhook",
        webhook(&format!("http://{listener}/policy")),
    )
    .await;
    application(&env, &tenant, "to-api-server", webhook(&format!("{api_url}/version"))).await;

    let output = poll_until("the webhook's output", Deadline::default(), || async {
        pipeline(&env, "by-webhook")
            .await
            .and_then(|p| p.output)
            .ok_or_else(|| "no output yet".to_owned())
    })
    .await;
    assert_eq!(output["weights"][1], json!({"version": "v2", "weight": 30}));
    assert!(calls.load(Ordering::SeqCst) >= 1);
    let message = stopped_with(&env, "to-api-server", "WebhookFailed").await;
    assert!(
        message.contains("is not allowed: it is the API server's address"),
        "{message}"
    );
    runner.stop().await;
}

const TASK_RULES: &str =
    r#"[{"apiGroups": ["workflow.orrery.dev"], "resources": ["tasks", "taskruns"], "verbs": ["create"]}]"#;

fn post_to(url: &str) -> Value {
    json!({"name": "http-post", "parameters": {"url": url, "retries": 0, "timeoutSeconds": 2}})
}

/// Creates Task `task` with `actions` on success and a run of it, as `client`; the run's action
/// results once it has them all.
async fn run_actions(env: &TestEnv, client: &Client, task: &str, actions: Value) -> Vec<ActionResult> {
    let wanted = actions.as_array().unwrap().len();
    create(
        &Api::<Task>::namespaced(client.clone(), &env.namespace),
        json!({"metadata": {"name": task}, "spec": {
            "template": {"spec": {"containers": [{"name": "main", "image": "busybox"}]}},
            "successActions": actions,
        }}),
    )
    .await;
    let run = format!("{task}-1");
    create(
        &Api::<TaskRun>::namespaced(client.clone(), &env.namespace),
        json!({"metadata": {"name": run}, "spec": {"taskRef": {"name": task}}}),
    )
    .await;
    let runs = env.namespaced::<TaskRun>();
    poll_until(
        &format!("{run}'s {wanted} action results"),
        Deadline::default(),
        || async {
            let status = runs.get(&run).await.map_err(|e| e.to_string())?.status;
            let results = status.map(|s| s.action_results).unwrap_or_default();
            if results.len() == wanted {
                Ok(results)
            } else {
                Err(format!("{results:?}"))
            }
        },
    )
    .await
}

fn outcome(result: &ActionResult) -> (&str, &str) {
    (result.outcome.as_str(), result.message.as_deref().unwrap_or_default())
}

#[tokio::test]
async fn http_post_cannot_reach_loopback_the_metadata_service_or_the_api_server() {
    let env = TestEnv::new().await;
    let _kubelet = PodSimulator::start(env.client.clone(), Some(&env.namespace))
        .await
        .unwrap();
    let (listener, calls) = counting_server("127.0.0.2", json!({})).await;
    let (named, named_calls) = counting_server("127.0.0.1", json!({})).await;
    let (api_url, _) = api_server(&env).await;
    let workflow = start(&env, task_workflow::controller::NAME, &[], task_workflow::run).await;
    let mallory = user_with(&env, "mallory", serde_json::from_str(TASK_RULES).unwrap()).await;

    let actions = json!([
        post_to(&format!("http://{listener}/hook")),
        post_to("http://169.254.169.254/latest/meta-data/"),
        post_to(&format!("{api_url}/api/v1/namespaces/kube-system/secrets")),
        post_to(&format!("http://localhost:{}/hook", named.port())),
    ]);
    let results = run_actions(&env, &mallory, "notify", actions).await;
    let ip = listener.ip();
    let refusals = [
        format!("egress to {ip} ({ip}) is not allowed: it is a loopback address; {NOT_ALLOWED}"),
        format!(
            "egress to 169.254.169.254 (169.254.169.254) is not allowed: it is a link-local address; {NOT_ALLOWED}"
        ),
        format!("is not allowed: it is the API server's address; {NOT_ALLOWED}"),
        "egress to localhost (".to_owned(),
    ];
    for (result, refusal) in results.iter().zip(&refusals) {
        let (outcome, message) = outcome(result);
        assert_eq!(outcome, "Failed", "{message}");
        assert!(message.contains(refusal.as_str()), "{message}");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 0, "nothing reached the loopback listener");
    assert_eq!(named_calls.load(Ordering::SeqCst), 0, "nothing reached localhost");
    workflow.stop().await;
}

#[tokio::test]
async fn http_post_reaches_an_address_the_operator_listed() {
    let env = TestEnv::new().await;
    let _kubelet = PodSimulator::start(env.client.clone(), Some(&env.namespace))
        .await
        .unwrap();
    let (listener, calls) = counting_server("127.0.0.2", json!({})).await;
    let workflow = start(
        &env,
        task_workflow::controller::NAME,
        &["127.0.0.2/32"],
        task_workflow::run,
    )
    .await;
    let tenant = user_with(&env, "tenant", serde_json::from_str(TASK_RULES).unwrap()).await;
    let url = format!("http://{listener}/hook");
    let results = run_actions(&env, &tenant, "notify", json!([post_to(&url)])).await;
    assert_eq!(
        outcome(&results[0]),
        ("Succeeded", format!("POST {url}: 200 OK").as_str())
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    workflow.stop().await;
}

#[tokio::test]
async fn a_url_from_a_secret_never_shows_in_the_run() {
    let env = TestEnv::new().await;
    let _kubelet = PodSimulator::start(env.client.clone(), Some(&env.namespace))
        .await
        .unwrap();
    let (listener, calls) = counting_server("127.0.0.2", json!({})).await;
    let workflow = start(&env, task_workflow::controller::NAME, &[], task_workflow::run).await;
    // The owner keeps hook URLs in Secrets; a colleague may read runs, not Secrets.
    for (name, url) in [
        (
            "garbled",
            "http://deploy:s3cret@hooks example.com/s3cret-path".to_owned(),
        ),
        ("internal", format!("http://{listener}/s3cret-path")),
    ] {
        create(
            &env.namespaced::<Secret>(),
            json!({"metadata": {"name": name}, "stringData": {"url": url}}),
        )
        .await;
    }
    let from = |secret: &str| json!({"name": "http-post", "parameters": {"urlFrom": {"secretKeyRef": {"name": secret, "key": "url"}}, "retries": 0}});
    run_actions(&env, &env.client, "notify", json!([from("garbled"), from("internal")])).await;

    let reader = user_with(
        &env,
        "reader",
        json!([{"apiGroups": ["workflow.orrery.dev"], "resources": ["taskruns"], "verbs": ["get"]}]),
    )
    .await;
    let seen = Api::<TaskRun>::namespaced(reader.clone(), &env.namespace)
        .get("notify-1")
        .await
        .unwrap();
    assert!(
        Api::<Secret>::namespaced(reader, &env.namespace)
            .get("internal")
            .await
            .is_err(),
        "the reader may not read the Secret"
    );
    let results = seen.status.clone().unwrap().action_results;
    assert_eq!(
        outcome(&results[0]),
        ("Failed", "the URL from Secret garbled key url is not a valid URL")
    );
    assert_eq!(
        outcome(&results[1]),
        (
            "Failed",
            "egress to the host of the URL from Secret internal key url is not allowed: it is a loopback address; list it in --allowed-egress"
        )
    );
    let status = serde_json::to_string(&seen.status).unwrap();
    // Repeats of a reason on one object are one Event series.
    let events = serde_json::to_string(&warnings_for(&env, "notify-1", "ActionFailed", 1).await).unwrap();
    for shown in [status, events] {
        for secret in ["s3cret", "deploy", "hooks", "127.0.0.2", &listener.port().to_string()] {
            assert!(!shown.contains(secret), "{secret:?} shows: {shown}");
        }
    }
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    workflow.stop().await;
}
