//! orrery-runtime in a real process on the real control plane: health and readiness
//! endpoints, Prometheus metrics, leader election on a Lease with a standby taking over,
//! and a graceful exit on SIGTERM that releases the Lease.

// A test that cannot proceed should stop right there, with the error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use kube::api::PostParams;
use orrery_e2e::fault_proxy::FaultProxy;
use orrery_e2e::process::KilledOnDrop;
use orrery_e2e::replicas::kubeconfig_through;
use orrery_e2e::{Deadline, TestEnv, poll_until};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A probe controller process, killed if the test ends without stopping it.
struct Probe {
    child: KilledOnDrop,
    port: u16,
}

fn start_probe(env: &TestEnv, identity: &str) -> Probe {
    start_probe_with(env, identity, &env.plane().kubeconfig_path())
}

fn probe_log(env: &TestEnv, identity: &str) -> std::path::PathBuf {
    env.plane().dir().join(format!("{identity}.log"))
}

fn start_probe_with(env: &TestEnv, identity: &str, kubeconfig: &std::path::Path) -> Probe {
    let port = orrery_e2e::free_port().unwrap();
    let log = std::fs::File::create(probe_log(env, identity)).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_runtime-probe"))
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--http-addr")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--lease-namespace")
        .arg(&env.namespace)
        .arg("--lease-duration-seconds")
        .arg("4")
        .env("POD_NAME", identity)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("spawn runtime-probe");
    Probe {
        child: child.into(),
        port,
    }
}

/// A plain HTTP/1.0 GET: status code and body.
async fn get(port: u16, path: &str) -> Result<(u16, String), String> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.map_err(|e| e.to_string())?;
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status line in {response:?}"))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((code, body))
}

async fn wait_ready(probe: &Probe, expected_body: &str) {
    poll_until(
        &format!("/readyz to say {expected_body:?}"),
        Deadline::default(),
        || async {
            let (code, body) = get(probe.port, "/readyz").await?;
            if code == 200 && body.contains(expected_body) {
                Ok(())
            } else {
                Err(format!("{code} {body}"))
            }
        },
    )
    .await;
}

async fn lease_holder(env: &TestEnv) -> Option<String> {
    env.namespaced::<Lease>()
        .get_opt("runtime-probe")
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
}

async fn probed_by(env: &TestEnv, configmap: &str, identity: &str) {
    let configmaps = env.namespaced::<ConfigMap>();
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": configmap, "labels": {"orrery.dev/probe": "yes"}}}))
            .unwrap();
    configmaps.create(&PostParams::default(), &cm).await.unwrap();
    poll_until(
        &format!("{configmap} to be reconciled by {identity}"),
        Deadline::default(),
        || async {
            let cm = configmaps.get(configmap).await.map_err(|e| e.to_string())?;
            match cm.annotations().get("orrery.dev/probed-by") {
                Some(by) if by == identity => Ok(()),
                other => Err(format!("probed-by {other:?}")),
            }
        },
    )
    .await;
}

fn metric(metrics: &str, name_and_labels: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(name_and_labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn stop(probe: &mut Probe) -> std::process::ExitStatus {
    let pid = probe.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    poll_until("the probe to exit after SIGTERM", Deadline::default(), || {
        let exited = match probe.child.try_wait() {
            Ok(Some(status)) => Ok(status),
            Ok(None) => Err("still running".to_owned()),
            Err(err) => Err(err.to_string()),
        };
        std::future::ready(exited)
    })
    .await
}

#[tokio::test]
async fn leader_serves_health_and_metrics_hands_over_on_sigterm() {
    let env = TestEnv::new().await;

    let mut first = start_probe(&env, "probe-a");
    poll_until("/healthz", Deadline::default(), || async {
        match get(first.port, "/healthz").await? {
            (200, _) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    wait_ready(&first, "leading, caches synced").await;
    assert_eq!(lease_holder(&env).await.as_deref(), Some("probe-a"));
    probed_by(&env, "one", "probe-a").await;

    // A reconcile is counted once it returns, just after its write is visible.
    let metrics = poll_until("a reconcile counted", Deadline::default(), || async {
        let (_, metrics) = get(first.port, "/metrics").await?;
        match metric(&metrics, "orrery_reconcile_total{controller=\"runtime-probe\"}") {
            Some(count) if count >= 1.0 => Ok(metrics),
            _ => Err(metrics),
        }
    })
    .await;
    assert!(
        metric(
            &metrics,
            "orrery_reconcile_duration_seconds_count{controller=\"runtime-probe\"}"
        )
        .unwrap_or(0.0)
            >= 1.0
    );
    assert!(
        metric(
            &metrics,
            "orrery_api_requests_total{method=\"PATCH\",resource=\"configmaps\"}"
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{metrics}"
    );
    assert_eq!(metric(&metrics, "orrery_leader"), Some(1.0));

    let mut second = start_probe(&env, "probe-b");
    wait_ready(&second, "standing by").await;
    let (_, standby_metrics) = get(second.port, "/metrics").await.unwrap();
    assert_eq!(metric(&standby_metrics, "orrery_leader"), Some(0.0));
    assert_eq!(
        lease_holder(&env).await.as_deref(),
        Some("probe-a"),
        "the standby must not take the Lease"
    );

    let status = stop(&mut first).await;
    assert!(status.success(), "SIGTERM is a clean exit, got {status}");
    poll_until("probe-b to hold the Lease", Deadline::default(), || async {
        match lease_holder(&env).await {
            Some(h) if h == "probe-b" => Ok(()),
            other => Err(format!("holder {other:?}")),
        }
    })
    .await;
    wait_ready(&second, "leading, caches synced").await;
    probed_by(&env, "two", "probe-b").await;

    let status = stop(&mut second).await;
    assert!(status.success(), "SIGTERM is a clean exit, got {status}");
}

/// A replica that starts while the API server is out of reach (restarting, upgraded) waits for
/// it and then leads, rather than exiting: a Deployment would restart it with ever longer
/// delays (CrashLoopBackOff).
#[tokio::test]
async fn a_replica_started_while_the_api_server_is_out_of_reach_waits_for_it() {
    let env = TestEnv::new().await;
    let identity = format!("{}-cut-off", env.namespace);
    let dir = env.plane().dir();
    let proxy = FaultProxy::start(env.plane().config(), &dir.join(format!("{identity}-toxiproxy.log")))
        .await
        .unwrap();
    proxy.set_enabled(false).await.unwrap();
    let kubeconfig = dir.join(format!("{identity}.kubeconfig"));
    kubeconfig_through(&env.plane().kubeconfig_path(), &proxy.url(), None, &kubeconfig).unwrap();
    let mut probe = start_probe_with(&env, &identity, &kubeconfig);

    poll_until("the probe to say it tries again", Deadline::default(), || async {
        let logged = std::fs::read_to_string(probe_log(&env, &identity)).map_err(|e| e.to_string())?;
        let retries = logged.matches("cannot read the Lease yet; trying again").count();
        if retries >= 2 {
            Ok(())
        } else {
            Err(format!("{retries} retries logged: {logged}"))
        }
    })
    .await;
    assert!(
        probe.child.try_wait().unwrap().is_none(),
        "the probe exited instead of waiting: {}",
        std::fs::read_to_string(probe_log(&env, &identity)).unwrap_or_default()
    );
    assert_eq!(
        get(probe.port, "/healthz").await.unwrap().0,
        200,
        "alive while it waits"
    );

    proxy.set_enabled(true).await.unwrap();
    poll_until("the probe to hold the Lease", Deadline::default(), || async {
        match lease_holder(&env).await {
            Some(holder) if holder == identity => Ok(()),
            other => Err(format!("holder {other:?}")),
        }
    })
    .await;
    wait_ready(&probe, "leading, caches synced").await;
    let status = stop(&mut probe).await;
    assert!(status.success(), "SIGTERM is a clean exit, got {status}");
}

#[tokio::test]
async fn watches_stream_their_initial_objects_where_the_api_server_offers_it() {
    use kube::runtime::watcher::{InitialListStrategy, ListSemantic};
    let env = TestEnv::new().await;
    // The control plane is Kubernetes 1.36, whose WatchList feature is on by default.
    let config = orrery_runtime::watcher_config(&env.namespaced::<ConfigMap>()).await;
    assert_eq!(config.initial_list_strategy, InitialListStrategy::StreamingList);
    // An API server that refuses the probe (no such resource here) gets a cached list instead.
    let missing: kube::Api<kube::api::DynamicObject> = kube::Api::all_with(
        env.client.clone(),
        &kube::api::ApiResource::from_gvk(&kube::core::GroupVersionKind::gvk(
            "nothing.orrery.dev",
            "v1",
            "Nothing",
        )),
    );
    let fallback = orrery_runtime::watcher_config(&missing).await;
    assert_eq!(fallback.initial_list_strategy, InitialListStrategy::ListWatch);
    assert_eq!(fallback.list_semantic, ListSemantic::Any);
}

/// Where `cargo build --workspace --bins` puts every controller binary.
fn built_binaries() -> std::path::PathBuf {
    std::env::var("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
        .join("debug")
}

/// Every controller binary (not a probe) answers `/healthz` from the start and turns
/// `/readyz` to 200 once every cache it made through the runtime has listed: readiness comes
/// from the runtime, so no controller can forget to report it.
#[tokio::test]
async fn every_controller_binary_turns_ready_once_its_caches_have_listed() {
    let env = TestEnv::new().await;
    let binaries = [
        "ignitor-scheduler",
        "task-workflow",
        "staged-binding",
        "hierarchy-executor",
        "policy-runner",
        "lambda-executor",
        "example-executor",
    ];
    for binary in binaries {
        let path = built_binaries().join(binary);
        assert!(
            path.exists(),
            "{} is not built: `cargo build --workspace --bins` builds it (`just test` does)",
            path.display()
        );
        let port = orrery_e2e::free_port().unwrap();
        let log = std::fs::File::create(env.plane().dir().join(format!("{binary}-ready.log"))).unwrap();
        let mut command = Command::new(&path);
        command
            .arg("--kubeconfig")
            .arg(env.plane().kubeconfig_path())
            .arg("--http-addr")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--leader-elect=false");
        // hierarchy-executor's trees span namespaces: it refuses one (tested below).
        if binary != "hierarchy-executor" {
            command.args(["--watch-namespace", &env.namespace]);
        }
        let child = command
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|err| panic!("spawn {binary}: {err}"));
        let controller = Probe {
            child: child.into(),
            port,
        };
        poll_until(&format!("{binary}'s /readyz"), Deadline::default(), || async {
            let (health, _) = get(controller.port, "/healthz").await?;
            assert_eq!(health, 200, "{binary}'s /healthz while starting");
            match get(controller.port, "/readyz").await? {
                (200, body) if body.contains("caches synced") => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
        assert_eq!(get(controller.port, "/healthz").await.unwrap().0, 200, "{binary}");
    }
}

/// hierarchy-executor given one namespace to watch exits at once, saying why, rather than
/// running with the flag ignored.
#[tokio::test]
async fn hierarchy_executor_refuses_a_namespace_to_watch_and_exits_saying_why() {
    let env = TestEnv::new().await;
    let log_path = env
        .plane()
        .dir()
        .join(format!("{}-hierarchy-namespace.log", env.namespace));
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = Command::new(built_binaries().join("hierarchy-executor"))
        .arg("--kubeconfig")
        .arg(env.plane().kubeconfig_path())
        .arg("--http-addr")
        .arg(format!("127.0.0.1:{}", orrery_e2e::free_port().unwrap()))
        .arg("--leader-elect=false")
        .args(["--watch-namespace", &env.namespace])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let status = poll_until("hierarchy-executor to exit", Deadline::default(), || {
        let exited = child.try_wait().map_err(|e| e.to_string());
        async move { exited?.ok_or_else(|| "still running".to_owned()) }
    })
    .await;
    assert!(!status.success(), "a refusal is a failure: {status}");
    let logged = std::fs::read_to_string(&log_path).unwrap();
    assert!(logged.contains("--watch-namespace"), "the log says why: {logged}");
}

/// A controller without the right to list what it watches says so in its log, as a warning
/// naming the controller, and keeps retrying: a watch error is never dropped silently.
#[tokio::test]
async fn a_missing_watch_permission_is_logged() {
    let env = TestEnv::new().await;
    let mut kubeconfig = kube::config::Kubeconfig::from_yaml(&env.plane().kubeconfig_inline().unwrap()).unwrap();
    for named in &mut kubeconfig.auth_infos {
        if let Some(user) = named.auth_info.as_mut() {
            // A user no role is bound to.
            user.impersonate = Some("nobody-at-all".into());
        }
    }
    let dir = env.plane().dir();
    let kubeconfig_path = dir.join(format!("{}-nobody.kubeconfig", env.namespace));
    std::fs::write(&kubeconfig_path, serde_yaml::to_string(&kubeconfig).unwrap()).unwrap();
    let log_path = dir.join(format!("{}-nobody.log", env.namespace));
    let log = std::fs::File::create(&log_path).unwrap();
    let _controller = KilledOnDrop::new(
        Command::new(built_binaries().join("ignitor-scheduler"))
            .arg("--kubeconfig")
            .arg(&kubeconfig_path)
            .arg("--http-addr")
            .arg(format!("127.0.0.1:{}", orrery_e2e::free_port().unwrap()))
            .arg("--leader-elect=false")
            .args(["--watch-namespace", &env.namespace])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    poll_until("a logged watch error", Deadline::default(), || async {
        let logged = std::fs::read_to_string(&log_path).map_err(|e| e.to_string())?;
        let warning = logged
            .lines()
            .find(|l| l.contains("WARN") && l.contains("watch failed") && l.contains("ignitor-scheduler"));
        match warning {
            Some(line) if line.contains("forbidden") => Ok(()),
            Some(line) => Err(format!("a watch warning without the server's refusal: {line}")),
            None => Err(format!("log so far:\n{logged}")),
        }
    })
    .await;
}

#[tokio::test]
async fn after_an_api_server_restart_every_trigger_finds_its_object_cached() {
    use futures::StreamExt;
    use kube::runtime::reflector::ObjectRef;
    use std::sync::{Arc, Mutex};

    // A control plane of its own: it restarts it.
    let plane = Arc::new(
        tokio::task::spawn_blocking(|| orrery_e2e::ControlPlane::start_with(false))
            .await
            .unwrap()
            .unwrap(),
    );
    let client = plane.client().await;
    let configmaps: kube::Api<ConfigMap> = kube::Api::namespaced(client.clone(), "default");
    let create = |name: String| {
        let configmaps = configmaps.clone();
        async move {
            let object = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
            match configmaps.create(&PostParams::default(), &object).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
                Err(err) => Err(err.to_string()),
            }
        }
    };
    for i in 0..10 {
        create(format!("before-{i}")).await.unwrap();
    }

    // What a controller's reconcile would read when each trigger arrives.
    let config = orrery_runtime::watcher_config(&configmaps).await;
    let (cache, triggers) =
        orrery_runtime::watched_and_cached(&orrery_runtime::Readiness::default(), configmaps.clone(), config);
    let seen = Arc::new(Mutex::new((Vec::<String>::new(), Vec::<String>::new(), 0_usize)));
    let consumer = tokio::spawn({
        let seen = seen.clone();
        async move {
            let mut triggers = std::pin::pin!(triggers);
            while let Some(trigger) = triggers.next().await {
                let mut seen = seen.lock().unwrap();
                match trigger {
                    Ok(object) => {
                        let cached = cache.get(&ObjectRef::from_obj(&object)).map(|c| c.resource_version());
                        if cached != Some(object.resource_version()) {
                            seen.1.push(format!("{} (cached: {cached:?})", object.name_any()));
                        }
                        seen.0.push(object.name_any());
                    }
                    Err(error) if error.to_string().contains("too old resource version") => seen.2 += 1,
                    Err(_) => {}
                }
            }
        }
    });
    poll_until("the first list triggered", Deadline::default(), || async {
        let count = seen.lock().unwrap().0.len();
        if count >= 10 {
            Ok(())
        } else {
            Err(format!("{count} triggers"))
        }
    })
    .await;

    // Objects made while the watch is away come back in a new list: a write it does not see
    // leaves its resourceVersion older than the restarted API server's cache.
    let elsewhere: kube::Api<ConfigMap> = kube::Api::namespaced(client.clone(), "kube-public");
    let unseen = serde_json::from_value(json!({"metadata": {"name": "unseen"}})).unwrap();
    elsewhere.create(&PostParams::default(), &unseen).await.unwrap();
    let restarting = plane.clone();
    tokio::task::spawn_blocking(move || restarting.restart())
        .await
        .unwrap()
        .unwrap();
    for i in 0..10 {
        poll_until("a ConfigMap created", Deadline::default(), || {
            create(format!("after-{i}"))
        })
        .await;
    }
    poll_until(
        "every new ConfigMap triggered",
        Deadline(std::time::Duration::from_secs(60)),
        || async {
            let seen = seen.lock().unwrap();
            let missing: Vec<String> = (0..10)
                .map(|i| format!("after-{i}"))
                .filter(|name| !seen.0.contains(name))
                .collect();
            if missing.is_empty() {
                Ok(())
            } else {
                Err(format!("not triggered: {missing:?}"))
            }
        },
    )
    .await;
    consumer.abort();
    let (_, early, relists) = seen.lock().unwrap().clone();
    assert!(relists > 0, "the watch never listed again: nothing here was tested");
    assert!(early.is_empty(), "triggered before they were cached: {early:?}");
}

#[tokio::test]
async fn a_failing_watch_does_not_hold_back_the_other_triggers_of_its_controller() {
    use futures::{StreamExt, TryStreamExt};
    use kube::runtime::Controller;
    use kube::runtime::controller::Action;
    use orrery_runtime::Configured;
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    let env = TestEnv::new().await;
    // A user who may watch ConfigMaps here and nothing else: its other watches fail, again and
    // again (a 403 each time they start), as a controller's watches do while an API server
    // restarts.
    let user = "trigger-watcher";
    orrery_e2e::access::grant(
        &env,
        user,
        Some(&env.namespace),
        json!([{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "watch"]}]),
    )
    .await
    .unwrap();
    let client = orrery_e2e::access::client_as(&env, user).unwrap();
    let (context, _stop) = orrery_runtime::Context::standalone(client.clone(), "trigger-test");
    let configmaps: kube::Api<ConfigMap> = kube::Api::namespaced(client.clone(), &env.namespace);
    let config = orrery_runtime::watcher_config(&configmaps).await;
    let (cache, trigger) = orrery_runtime::watched_and_cached(&context.readiness, configmaps, config.clone());
    let failing = |kind: &str| {
        let resource = kube::api::ApiResource::from_gvk(&kube::core::GroupVersionKind::gvk("", "v1", kind));
        let api: kube::Api<kube::api::DynamicObject> =
            kube::Api::namespaced_with(client.clone(), &env.namespace, &resource);
        // Only its failures matter here: what it would yield is dropped.
        orrery_runtime::watched(api, config.clone()).map_ok(|_| ConfigMap::default())
    };
    let mut controller = Controller::for_stream(trigger, cache);
    for kind in [
        "Secret",
        "ServiceAccount",
        "Pod",
        "Service",
        "Endpoints",
        "PersistentVolumeClaim",
    ] {
        controller = controller.watches_stream(failing(kind), |_| None);
    }

    let reconciled: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let controller = controller
        .configured(&context)
        .run(
            |object: Arc<ConfigMap>, seen: Arc<Arc<Mutex<HashMap<String, Instant>>>>| async move {
                seen.lock()
                    .unwrap()
                    .entry(object.name_any())
                    .or_insert_with(Instant::now);
                Ok::<_, kube::Error>(Action::await_change())
            },
            |_, _: &kube::Error, _| Action::await_change(),
            Arc::new(reconciled.clone()),
        )
        .for_each(|_| async {});
    let running = tokio::spawn(controller);

    // kube's default backoff on a controller's triggers taken together grew with each failure
    // of the Secret watch (0.8 s, 1.6 s, 3.2 s, 6.4 s, 12.8 s): ConfigMaps made meanwhile
    // waited that long for their reconcile.
    let configmaps = env.namespaced::<ConfigMap>();
    let mut created = Vec::new();
    for i in 0..16 {
        let name = format!("trigger-{i}");
        let object = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
        configmaps.create(&PostParams::default(), &object).await.unwrap();
        created.push((name, Instant::now()));
        let reconciled = reconciled.clone();
        let name = created.last().unwrap().0.clone();
        poll_until("the ConfigMap reconciled", Deadline(Duration::from_secs(60)), || {
            let reconciled = reconciled.clone();
            let name = name.clone();
            async move {
                reconciled
                    .lock()
                    .unwrap()
                    .get(&name)
                    .copied()
                    .ok_or_else(|| "not yet".to_owned())
            }
        })
        .await;
        // Paced, so the Secret watch fails several times over the run.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    running.abort();
    let reconciled = reconciled.lock().unwrap().clone();
    let slowest = created
        .iter()
        .map(|(name, at)| reconciled[name].duration_since(*at))
        .max()
        .unwrap();
    eprintln!("slowest trigger while a watch kept failing: {slowest:?}");
    assert!(
        slowest < Duration::from_secs(3),
        "a ConfigMap waited {slowest:?} for its reconcile"
    );
}
