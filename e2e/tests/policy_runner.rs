//! policy-runner on the real control plane, with hierarchy-executor rendering its output into
//! the HTTPRoute (kube-controller-manager runs the Deployments, the pod simulator plays the
//! kubelet, a real Prometheus scrapes a test exporter): canaries step to promotion with each
//! step read back from the HTTPRoute, chains behave by their order, gates roll back, custom
//! policies, kubectl control, a restart mid-canary, and bad input.

// A test that cannot proceed should stop right there, with the error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crd_types::common::{CONDITION_READY, find_condition};
use crd_types::hierarchy::{
    ABORT_ANNOTATION, Application, Cluster, PAUSE_ANNOTATION, PROMOTE_ANNOTATION, PolicyPipelineStatus, VirtualCluster,
};
use gateway_api::httproutes::HttpRoute;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use orrery_e2e::pod_simulator::{PodSimulator, crash_loop, restart};
use orrery_e2e::prometheus::{Exporter, Prometheus};
use orrery_e2e::{Deadline, InProcess, TestEnv, create, poll_until, serve_every_test, stays};
use orrery_runtime::Context;
use serde_json::{Value, json};

/// hierarchy-executor and the pod simulator act on every namespace: one of each serves all the
/// tests of this file. Each test runs its own policy-runner, watching only its namespace.
async fn shared_executor_and_kubelet() {
    static STARTED: OnceLock<()> = OnceLock::new();
    serve_every_test(&STARTED, |client| async move {
        let _kubelet = PodSimulator::start(client.clone(), None).await.unwrap();
        let (context, _stop) = Context::standalone(client, hierarchy_executor::controller::NAME);
        hierarchy_executor::run(context).await.unwrap();
    })
    .await;
}

struct World {
    env: TestEnv,
    runner: Option<InProcess>,
}

impl World {
    /// A test namespace taken over by a VirtualCluster on a local Cluster, and a policy-runner.
    async fn new() -> World {
        let env = TestEnv::new().await;
        shared_executor_and_kubelet().await;
        let name = env.namespace.clone();
        env.let_adopt(&name).await;
        create(
            &Api::<Cluster>::all(env.client.clone()),
            json!({"metadata": {"name": name}, "spec": {"executor": {"name": "default", "parameters": {"installGatewayAPI": true}}}}),
        )
        .await;
        create(
            &Api::<VirtualCluster>::all(env.client.clone()),
            json!({"metadata": {"name": name}, "spec": {"cluster": name, "namespace": name}}),
        )
        .await;
        let runner = Some(start_runner(&env));
        World { env, runner }
    }

    fn apps(&self) -> Api<Application> {
        self.env.namespaced()
    }

    /// Creates Application `name` with versions v1 and v2 (one replica each) and `policies`.
    async fn application(&self, name: &str, policies: Value) {
        create(
            &self.apps(),
            json!({"metadata": {"name": name}, "spec": {
                "virtualCluster": self.env.namespace,
                "versions": [{"name": "v1", "image": "shop:1"}, {"name": "v2", "image": "shop:2"}],
                "route": {"gateway": "public"},
                "policies": policies,
            }}),
        )
        .await;
    }

    async fn route(&self, app: &str) -> Option<HttpRoute> {
        Api::<HttpRoute>::namespaced(self.env.client.clone(), &self.env.namespace)
            .get_opt(app)
            .await
            .ok()
            .flatten()
    }

    /// v2's weight in the HTTPRoute's weighted rule (the last one), if the route exists.
    async fn canary_weight(&self, app: &str) -> Option<i32> {
        let route = self.route(app).await?;
        let rules = route.spec.rules?;
        let weighted = rules.last()?.backend_refs.clone()?;
        Some(
            weighted
                .iter()
                .filter(|b| b.name == format!("{app}-v2"))
                .map(|b| b.weight.unwrap_or(1))
                .sum(),
        )
    }

    /// Polls the route until v2's weight is `want`, returning every weight seen on the way.
    async fn canary_weights_until(&self, app: &str, want: i32, limit: Duration) -> Vec<i32> {
        self.canary_weights_through(app, &[want], limit).await
    }

    /// Polls the route until the weights seen for v2 (repeats removed) end with `path`,
    /// returning them all.
    async fn canary_weights_through(&self, app: &str, path: &[i32], limit: Duration) -> Vec<i32> {
        let want = path;
        let seen = Mutex::new(Vec::new());
        poll_until(
            &format!("{app}: v2 through {want:?}% in the HTTPRoute"),
            Deadline(limit),
            || async {
                let weight = self.canary_weight(app).await.ok_or("no route yet")?;
                let (summary, done) = {
                    let mut seen = seen.lock().unwrap();
                    if seen.last() != Some(&weight) {
                        seen.push(weight);
                    }
                    (format!("seen so far {seen:?}"), seen.ends_with(want))
                };
                if done {
                    return Ok(());
                }
                let steps: Vec<String> = self
                    .pipeline(app)
                    .await
                    .map(|p| p.steps.iter().map(|s| format!("{}: {:?}", s.name, s.message)).collect())
                    .unwrap_or_default();
                Err(format!("{summary}; steps {steps:?}"))
            },
        )
        .await;
        seen.into_inner().unwrap()
    }

    async fn pipeline(&self, app: &str) -> Option<PolicyPipelineStatus> {
        self.apps().get(app).await.ok()?.status?.common.policy
    }

    /// Waits until the pipeline's `Ready` condition has `reason`; returns its message.
    async fn wait_pipeline(&self, app: &str, reason: &str) -> String {
        poll_until(
            &format!("{app}: pipeline {reason}"),
            Deadline(Duration::from_secs(90)),
            || async {
                let pipeline = self.pipeline(app).await.ok_or("no pipeline status yet")?;
                let ready = find_condition(&pipeline.conditions, CONDITION_READY).ok_or("no Ready condition")?;
                if ready.reason == reason {
                    Ok(ready.message.clone())
                } else {
                    Err(format!("{} {}: {}", ready.status, ready.reason, ready.message))
                }
            },
        )
        .await
    }

    async fn annotate(&self, app: &str, key: &str, value: Option<&str>) {
        self.apps()
            .patch(
                app,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"annotations": {key: value}}})),
            )
            .await
            .unwrap();
    }

    /// Waits until Events with each of `reasons` have been published about `app` (an Event
    /// follows the status write a test reads).
    async fn wait_events(&self, app: &str, reasons: &[&str]) {
        poll_until(&format!("{app}: Events {reasons:?}"), Deadline::default(), || async {
            let events = self.event_reasons(app).await;
            if reasons.iter().all(|r| events.iter().any(|e| e == r)) {
                Ok(())
            } else {
                Err(format!("{events:?}"))
            }
        })
        .await;
    }

    /// The reasons of the Events published about `app`.
    async fn event_reasons(&self, app: &str) -> Vec<String> {
        let events: Api<Event> = self.env.namespaced();
        events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(app))
            .filter(|e| e.reporting_controller.as_deref() == Some(policy_runner::NAME))
            .map(|e| e.reason.unwrap_or_default())
            .collect()
    }
}

/// A policy-runner that may reach the test's webhook and Prometheus on 127.0.0.1, which it
/// refuses unless told.
fn start_runner(env: &TestEnv) -> InProcess {
    let (context, stop) = Context::standalone(env.client.clone(), policy_runner::NAME);
    let context = context
        .in_namespace(&env.namespace)
        .allowing_egress([orrery_runtime::egress::LOCALHOST]);
    InProcess::start_with(context, stop, policy_runner::controller::run)
}

/// The weights seen with repeats removed must be exactly `steps`: none skipped, none taken twice.
/// The route may first appear at the first step, not the baseline before it, when the executor
/// made it after the pipeline's first output (seen on a busy machine).
fn assert_steps(seen: &[i32], steps: &[i32]) {
    let steps = match (seen.first(), steps) {
        (Some(first), [baseline, step, ..]) if first != baseline && first == step => &steps[1..],
        _ => steps,
    };
    let from = seen.iter().position(|w| *w == steps[0]).unwrap_or(0);
    assert_eq!(
        &seen[from..],
        steps,
        "every weight the route carried, in order: {seen:?}"
    );
}

#[tokio::test]
async fn a_canary_steps_to_promotion_and_the_route_carries_every_step() {
    let world = World::new().await;
    world
        .application(
            "shop",
            json!([{"name": "canary", "parameters": {"stepWeight": 25, "maxWeight": 75, "interval": "2s"}}]),
        )
        .await;
    let seen = world.canary_weights_until("shop", 100, Duration::from_secs(120)).await;
    assert_steps(&seen, &[0, 25, 50, 75, 100]);
    let pipeline = world.pipeline("shop").await.unwrap();
    assert!(pipeline.complete);
    assert_eq!(pipeline.steps[0].phase, "Succeeded");
    assert!(
        pipeline.steps[0]
            .message
            .as_deref()
            .unwrap()
            .starts_with("v2 promoted: 100%"),
        "{:?}",
        pipeline.steps[0].message
    );
    assert_eq!(pipeline.runner.as_deref(), Some(policy_runner::NAME));
    world.wait_events("shop", &["TrafficShifted", "Succeeded"]).await;
}

#[tokio::test]
async fn a_weight_cap_bounds_the_canary_after_it_and_not_before_it() {
    let world = World::new().await;
    world
        .application(
            "capped",
            json!([
                {"name": "canary", "parameters": {"stepWeight": 20, "maxWeight": 100, "interval": "1s"}},
                {"name": "weight-cap", "parameters": {"maxWeight": 30}},
            ]),
        )
        .await;
    world
        .application(
            "reversed",
            json!([
                {"name": "weight-cap", "parameters": {"maxWeight": 30, "version": "v2"}},
                {"name": "canary", "parameters": {"stepWeight": 20, "maxWeight": 100, "interval": "1s"}},
            ]),
        )
        .await;
    // Reversed, the cap bounds only the spec's weights, which the canary overrides: all the way.
    // After the canary, the cap holds it at 30%: the canary asks 40%, the route carries 30%,
    // and the canary waits for a step the route never carries.
    let (reversed, capped) = tokio::join!(
        world.canary_weights_until("reversed", 100, Duration::from_secs(120)),
        world.canary_weights_until("capped", 30, Duration::from_secs(120)),
    );
    assert_steps(&reversed, &[0, 20, 40, 60, 80, 100]);
    assert_steps(&capped, &[0, 20, 30]);
    poll_until(
        "the canary waits for 40%",
        Deadline(Duration::from_secs(60)),
        || async {
            let pipeline = world.pipeline("capped").await.ok_or("no status")?;
            let message = pipeline.steps[0].message.clone().unwrap_or_default();
            if message == "v2 at 40%: waiting for the route to carry it (30% now)" {
                Ok(())
            } else {
                Err(message)
            }
        },
    )
    .await;
    assert_eq!(world.canary_weight("capped").await, Some(30));
    let pipeline = world.pipeline("capped").await.unwrap();
    assert_eq!(
        pipeline.steps[1].message.as_deref(),
        Some("v2 capped at 30% (asked 40%); 10% to v1")
    );
}

#[tokio::test]
async fn a_health_gate_rolls_back_when_the_canarys_pods_crash() {
    let world = World::new().await;
    world
        .application(
            "shop",
            json!([
                {"name": "canary", "parameters": {"stepWeight": 20, "maxWeight": 80, "interval": "3s"}},
                {"name": "health-gate"},
            ]),
        )
        .await;
    world.canary_weights_until("shop", 20, Duration::from_secs(120)).await;

    // The canary's pod crash-loops: its Deployment counts it unready, the executor reports
    // it, the gate rolls back, and the canary stops for good.
    let pods: Api<Pod> = world.env.namespaced();
    let canary_pods = pods
        .list(&ListParams::default().labels("hierarchy.orrery.dev/version=v2"))
        .await
        .unwrap();
    assert!(!canary_pods.items.is_empty());
    for pod in &canary_pods.items {
        crash_loop(&pods, pod.metadata.name.as_deref().unwrap()).await.unwrap();
    }
    world.canary_weights_until("shop", 0, Duration::from_secs(60)).await;
    // The gate's rollback puts everything on v1 (v2 leaves the document); once the canary has
    // stopped too, its own output gives v2 0% and the gate passes it on. A poll may see either.
    let message = world.wait_pipeline("shop", "RolledBack").await;
    assert!(message == "v1 100%, v2 0%" || message == "v1 100%", "{message}");
    // The canary stops for good; the gate then has no canary traffic to judge.
    poll_until("the canary stops too", Deadline(Duration::from_secs(30)), || async {
        let pipeline = world.pipeline("shop").await.ok_or("no status")?;
        let phases: Vec<&str> = pipeline.steps.iter().map(|s| s.phase.as_str()).collect();
        if phases == ["RolledBack", "Succeeded"] {
            Ok(())
        } else {
            Err(format!("{:?}", pipeline.steps))
        }
    })
    .await;
    let pipeline = world.pipeline("shop").await.unwrap();
    let ready = find_condition(&pipeline.conditions, CONDITION_READY).unwrap();
    assert_eq!(
        (ready.reason.as_str(), ready.message.as_str()),
        ("RolledBack", "v1 100%, v2 0%")
    );
    assert!(
        pipeline.steps[0]
            .message
            .as_deref()
            .unwrap()
            .contains("step 2 (health-gate) rolled back: v2 has 0/1 replicas ready"),
        "{:?}",
        pipeline.steps[0].message
    );
    world.wait_events("shop", &["RolledBack"]).await;
}

#[tokio::test]
async fn a_health_gate_rolls_back_past_a_restart_limit() {
    let world = World::new().await;
    world
        .application(
            "shop",
            json!([
                {"name": "canary", "parameters": {"stepWeight": 20, "maxWeight": 80, "interval": "1h"}},
                {"name": "health-gate", "parameters": {"minReadyPercent": 0, "maxRestarts": 1}},
            ]),
        )
        .await;
    world.canary_weights_until("shop", 20, Duration::from_secs(120)).await;
    let pods: Api<Pod> = world.env.namespaced();
    let canary_pod = pods
        .list(&ListParams::default().labels("hierarchy.orrery.dev/version=v2"))
        .await
        .unwrap()
        .items[0]
        .metadata
        .name
        .clone()
        .unwrap();
    // One restart is within the limit: the executor reports it, the gate lets it be.
    restart(&pods, &canary_pod).await.unwrap();
    poll_until("one restart reported", Deadline(Duration::from_secs(60)), || async {
        let app = world.apps().get("shop").await.map_err(|e| e.to_string())?;
        let restarts: Vec<i32> = app
            .status
            .unwrap_or_default()
            .versions
            .iter()
            .map(|v| v.restarts)
            .collect();
        if restarts == [0, 1] {
            Ok(())
        } else {
            Err(format!("{restarts:?}"))
        }
    })
    .await;
    assert_eq!(world.canary_weight("shop").await, Some(20));
    restart(&pods, &canary_pod).await.unwrap();
    world.canary_weights_until("shop", 0, Duration::from_secs(60)).await;
    poll_until(
        "the canary rolled back for the restarts",
        Deadline(Duration::from_secs(30)),
        || async {
            let pipeline = world.pipeline("shop").await.ok_or("no status")?;
            let message = pipeline.steps[0].message.clone().unwrap_or_default();
            if message.ends_with("step 2 (health-gate) rolled back: v2 restarted 2 times (at most 1)") {
                Ok(())
            } else {
                Err(message)
            }
        },
    )
    .await;
}

#[tokio::test]
async fn metric_analysis_against_a_real_prometheus() {
    let world = World::new().await;
    let exporter = Exporter::start().await.unwrap();
    // Per canary version: no data until a version has a value, as with real per-version metrics.
    exporter.set("shop_error_ratio", &[("application", "good"), ("version", "v2")], 0.01);
    exporter.set("shop_error_ratio", &[("application", "bad"), ("version", "v2")], 0.5);
    exporter.set(
        "shop_error_ratio",
        &[("application", "cut-off"), ("version", "v2")],
        0.01,
    );
    let prometheus = Prometheus::start(&[exporter.addr()]).await.unwrap();
    let analysis = |interval: &str| {
        json!({"name": "metric-analysis", "parameters": {
            "address": prometheus.url(),
            "query": "shop_error_ratio{application=\"{{application}}\",version=\"{{canary}}\"}",
            "successCondition": "result < 0.1",
            "interval": interval,
            "failureLimit": 1,
        }})
    };
    let canary = |interval: &str| json!({"name": "canary", "parameters": {"stepWeight": 25, "maxWeight": 50, "interval": interval}});
    world.application("good", json!([canary("2s"), analysis("1s")])).await;
    world.application("bad", json!([canary("2s"), analysis("1s")])).await;

    // Good values: promoted. Bad values: two failed measurements, then rolled back.
    let (good, bad) = tokio::join!(
        world.canary_weights_until("good", 100, Duration::from_secs(120)),
        world.canary_weights_through("bad", &[25, 0], Duration::from_secs(120)),
    );
    assert_steps(&good, &[0, 25, 50, 100]);
    assert_steps(&bad, &[0, 25, 0]);
    let message = world.wait_pipeline("bad", "RolledBack").await;
    assert_eq!(message, "v1 100%, v2 0%");
    let pipeline = world.pipeline("bad").await.unwrap();
    let canary_message = pipeline.steps[0].message.clone().unwrap();
    assert!(
        canary_message.contains("step 2 (metric-analysis) rolled back: v2 failed its analysis: measured 0.5"),
        "{canary_message}"
    );

    // Prometheus down mid-canary: the pipeline stops with a condition and the route stays.
    world
        .application("cut-off", json!([canary("3s"), analysis("1s")]))
        .await;
    world
        .canary_weights_until("cut-off", 25, Duration::from_secs(120))
        .await;
    prometheus.stop();
    let message = world.wait_pipeline("cut-off", "MetricsUnavailable").await;
    assert!(
        message.starts_with("step 2 (metric-analysis): querying http://127.0.0.1:"),
        "{message}"
    );
    assert!(message.ends_with("the traffic in force stays"), "{message}");
    let pipeline = world.pipeline("cut-off").await.unwrap();
    assert!(!pipeline.complete);
    let carried: jiff::Timestamp = pipeline.steps[0].state.as_ref().unwrap()["carriedSince"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    poll_until(
        "the canary's next step to fall due",
        Deadline(Duration::from_secs(30)),
        || async {
            let due = carried + jiff::SignedDuration::from_secs(9);
            if jiff::Timestamp::now() > due {
                Ok(())
            } else {
                Err(format!("due at {due}"))
            }
        },
    )
    .await;
    let pipeline = world.pipeline("cut-off").await.unwrap();
    assert_eq!(pipeline.steps[0].state.as_ref().unwrap()["weight"], 25);
    assert_eq!(world.canary_weight("cut-off").await, Some(25));
}

#[tokio::test]
async fn an_experiment_routes_a_header_and_a_cookie_to_the_canary() {
    let world = World::new().await;
    world
        .application(
            "shop",
            json!([{"name": "experiment", "parameters": {
                "version": "v2", "headers": {"x-beta": "yes"},
                "weights": [{"version": "v1", "weight": 90}, {"version": "v2", "weight": 10}],
            }}, {"name": "experiment", "parameters": {"version": "v2", "cookie": {"name": "beta", "value": "on"}}}]),
        )
        .await;
    let rules = poll_until(
        "the route has three rules",
        Deadline(Duration::from_secs(90)),
        || async {
            let route = world.route("shop").await.ok_or("no route yet")?;
            let rules = serde_json::to_value(route.spec.rules).unwrap();
            if rules.as_array().map(Vec::len) == Some(3) {
                Ok(rules)
            } else {
                Err(rules.to_string())
            }
        },
    )
    .await;
    assert_eq!(
        rules[0]["matches"][0]["headers"],
        json!([{"name": "x-beta", "type": "Exact", "value": "yes"}])
    );
    assert_eq!(rules[0]["backendRefs"][0]["name"], "shop-v2");
    assert_eq!(rules[1]["matches"][0]["headers"][0]["name"], "Cookie");
    assert_eq!(rules[1]["matches"][0]["headers"][0]["type"], "RegularExpression");
    assert_eq!(
        rules[2]["backendRefs"],
        json!([{"name": "shop-v1", "port": 8080, "weight": 90}, {"name": "shop-v2", "port": 8080, "weight": 10}])
    );
    // The route is written before the status that reports it.
    poll_until(
        "the executor to report the matches in force",
        Deadline::default(),
        || async {
            let app = world.apps().get("shop").await.map_err(|e| e.to_string())?;
            let matches = app.status.map(|s| s.matches.len()).unwrap_or(0);
            if matches == 2 {
                Ok(())
            } else {
                Err(format!("{matches} matches"))
            }
        },
    )
    .await;
}

/// A webhook policy served by the test: answers what `reply` says, and counts calls.
async fn serve_webhook(reply: Arc<Mutex<Value>>, calls: Arc<Mutex<Vec<Value>>>) -> std::net::SocketAddr {
    let handler = move |body: String| {
        let reply = reply.clone();
        let calls = calls.clone();
        async move {
            calls
                .lock()
                .unwrap()
                .push(serde_json::from_str::<Value>(&body).unwrap());
            let answer = reply.lock().unwrap().clone();
            if answer == json!("slow") {
                // Never answers: the runner gives up at the policy's timeout.
                std::future::pending::<()>().await;
            }
            ([(http::header::CONTENT_TYPE, "application/json")], answer.to_string())
        }
    };
    let app = axum::Router::new().route("/policy", axum::routing::post(handler));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

#[tokio::test]
async fn custom_policies_in_cel_and_behind_a_webhook() {
    let world = World::new().await;
    world
        .application(
            "by-cel",
            json!([{"name": "cel", "parameters": {
                "expression": "{'weights': [{'version': 'v1', 'weight': 100 - parameters.values.share}, {'version': 'v2', 'weight': parameters.values.share}]}",
                "state": "{'versions': size(observed.versions)}",
                "values": {"share": 30},
            }}]),
        )
        .await;
    let reply = Arc::new(Mutex::new(json!({
        "output": {"weights": [{"version": "v1", "weight": 40}, {"version": "v2", "weight": 60}]},
        "state": {"calls": 1},
        "message": "sixty percent, as the webhook decided",
    })));
    let calls = Arc::new(Mutex::new(Vec::new()));
    let addr = serve_webhook(reply.clone(), calls.clone()).await;
    world
        .application(
            "by-webhook",
            json!([{"name": "webhook", "parameters": {"url": format!("http://{addr}/policy"), "timeout": "1s", "values": {"team": "shop"}}}]),
        )
        .await;

    world.canary_weights_until("by-cel", 30, Duration::from_secs(90)).await;
    let cel = world.pipeline("by-cel").await.unwrap();
    assert_eq!(cel.steps[0].state, Some(json!({"versions": 2})));
    world
        .canary_weights_until("by-webhook", 60, Duration::from_secs(90))
        .await;
    let hook = world.pipeline("by-webhook").await.unwrap();
    assert_eq!(
        hook.steps[0].message.as_deref(),
        Some("sixty percent, as the webhook decided")
    );
    let first = calls.lock().unwrap()[0].clone();
    assert_eq!(first["parameters"]["values"]["team"], "shop");
    assert_eq!(first["observed"]["application"], "by-webhook");
    assert_eq!(first["input"]["weights"], json!([{"version": "v1", "weight": 100}]));

    // Garbage, then a timeout: the step fails with a condition saying so; 60% stays.
    *reply.lock().unwrap() = json!({"weights": "all of them"});
    world.annotate("by-webhook", "example.com/poke", Some("1")).await;
    let message = world.wait_pipeline("by-webhook", "WebhookFailed").await;
    assert!(
        message.ends_with("/policy: the webhook's answer is not a valid policy result; the traffic in force stays"),
        "{message}"
    );
    assert!(
        !message.contains("all of them"),
        "nothing of the answer is echoed: {message}"
    );
    *reply.lock().unwrap() = json!("slow");
    world.annotate("by-webhook", "example.com/poke", Some("2")).await;
    poll_until("the webhook times out", Deadline(Duration::from_secs(60)), || async {
        let message = world.wait_pipeline("by-webhook", "WebhookFailed").await;
        if message.contains("timed out") {
            Ok(())
        } else {
            Err(message)
        }
    })
    .await;
    assert_eq!(world.canary_weight("by-webhook").await, Some(60));
}

#[tokio::test]
async fn pause_resume_promote_and_abort_from_kubectl() {
    let world = World::new().await;
    world
        .application(
            "shop",
            json!([{"name": "canary", "parameters": {"stepWeight": 10, "maxWeight": 90, "interval": "2s"}}]),
        )
        .await;
    world.canary_weights_until("shop", 10, Duration::from_secs(120)).await;

    world.annotate("shop", PAUSE_ANNOTATION, Some("true")).await;
    world.wait_pipeline("shop", "Paused").await;
    let paused_at = world.canary_weight("shop").await.unwrap();
    // Nothing to wait for, only a time in which nothing may happen: over a window longer than
    // two intervals, a paused canary takes no step.
    stays("the paused canary's weight", Duration::from_secs(5), || async {
        match world.canary_weight("shop").await {
            Some(weight) if weight == paused_at => Ok(()),
            other => Err(format!("{other:?}, paused at {paused_at}")),
        }
    })
    .await;
    assert!(world.pipeline("shop").await.unwrap().paused);

    world.annotate("shop", PAUSE_ANNOTATION, None).await;
    world
        .canary_weights_until("shop", paused_at + 10, Duration::from_secs(60))
        .await;

    world.annotate("shop", PROMOTE_ANNOTATION, Some("first")).await;
    world.canary_weights_until("shop", 100, Duration::from_secs(60)).await;
    assert_eq!(
        world.pipeline("shop").await.unwrap().last_promote.as_deref(),
        Some("first")
    );

    world.annotate("shop", ABORT_ANNOTATION, Some("first")).await;
    world.canary_weights_until("shop", 0, Duration::from_secs(60)).await;
    world.wait_pipeline("shop", "RolledBack").await;
    world
        .wait_events("shop", &["Paused", "Resumed", "Promoted", "Aborted"])
        .await;
}

#[tokio::test]
async fn a_restarted_runner_resumes_the_canary_at_the_same_step() {
    let mut world = World::new().await;
    world
        .application(
            "shop",
            json!([{"name": "canary", "parameters": {"stepWeight": 20, "maxWeight": 80, "interval": "3s"}}]),
        )
        .await;
    let mut seen = world.canary_weights_until("shop", 40, Duration::from_secs(120)).await;
    world.runner.take().unwrap().kill().await;
    // Down for longer than a step's interval: the restarted runner must take that step once,
    // not twice, and not skip one. Nothing moves while it is down, which is watched for the
    // whole time (there is no event to wait for, only one that must not come).
    stays(
        "the weight while the runner is down",
        Duration::from_secs(4),
        || async {
            match world.canary_weight("shop").await {
                Some(40) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    world.runner = Some(start_runner(&world.env));
    let rest = world.canary_weights_until("shop", 100, Duration::from_secs(120)).await;
    seen.extend(rest.into_iter().skip_while(|w| *w == 40));
    assert_steps(&seen, &[0, 20, 40, 60, 80, 100]);
}

#[tokio::test]
async fn bad_input_is_reported_on_the_step_and_the_traffic_stays() {
    let world = World::new().await;
    // Each pipeline starts with a step that would send half the traffic to v2.
    let half = json!({"name": "cel", "parameters": {
        "expression": "{'weights': [{'version': 'v1', 'weight': 50}, {'version': 'v2', 'weight': 50}]}"}});
    world
        .application("unclaimed", json!([half, {"name": "flagger-magic"}]))
        .await;
    world
        .application(
            "typo",
            json!([half, {"name": "canary", "parameters": {"stepWieght": 10}}]),
        )
        .await;
    world
        .application(
            "bad-cel",
            json!([half, {"name": "cel", "parameters": {"expression": "input.weights +"}}]),
        )
        .await;

    let message = world.wait_pipeline("unclaimed", "PolicyNotClaimed").await;
    assert!(
        message.starts_with("step 2 (flagger-magic): no runner claims policy \"flagger-magic\""),
        "{message}"
    );
    let message = world.wait_pipeline("typo", "InvalidParameters").await;
    assert!(
        message.starts_with("step 2 (canary): unknown field `stepWieght`, expected one of"),
        "{message}"
    );
    let message = world.wait_pipeline("bad-cel", "InvalidExpression").await;
    assert!(message.starts_with("step 2 (cel): expression: "), "{message}");
    // Nothing partial applied: no route ever carries the first step's half, watched over a
    // window after the failures are reported (nothing to wait for, only something that must
    // not happen); then each carries the Application's baseline.
    stays(
        "no route with the first step's half",
        Duration::from_secs(3),
        || async {
            for app in ["unclaimed", "typo", "bad-cel"] {
                if let Some(50) = world.canary_weight(app).await {
                    return Err(format!("{app}'s route has v2 at 50"));
                }
            }
            Ok(())
        },
    )
    .await;
    for (app, reason) in [
        ("unclaimed", "PolicyNotClaimed"),
        ("typo", "InvalidParameters"),
        ("bad-cel", "InvalidExpression"),
    ] {
        poll_until(&format!("{app}'s route"), Deadline(Duration::from_secs(60)), || async {
            match world.canary_weight(app).await {
                Some(0) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
        world.wait_events(app, &[reason]).await;
    }
    let pipeline = world.pipeline("unclaimed").await.unwrap();
    assert!(!pipeline.complete);
    assert_eq!(pipeline.steps[0].phase, "Pending");
    assert_eq!(pipeline.steps[1].phase, "Failed");
    assert_eq!(pipeline.output, None, "no output was ever complete");
    // A name the schema refuses never gets that far.
    let refused = world
        .apps()
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "refused"}, "spec": {
                "versions": [{"name": "v1", "image": "x"}], "policies": [{"name": "no spaces allowed"}]}}))
            .unwrap(),
        )
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("spec.policies[0].name"), "{refused}");
}
