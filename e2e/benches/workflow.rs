//! Orrery's task-workflow and ignitor-scheduler beside Kubernetes' Job and CronJob controllers
//! on one real control plane. Prints figures; asserts nothing (it is not a test).
//!
//! - step-to-step latency: predecessor pod Succeeded → successor pod created, over N two-step
//!   chains, against the Job controller's Job created → pod created, over N Jobs (both paced at
//!   the same rate, observed by one watch);
//! - firing delay of `* * * * *` Ignitors against CronJobs, for the same minute;
//! - TaskRuns completed per minute when many start at once;
//! - RSS of each controller (task-workflow with 10,000 Tasks);
//! - API writes per minute while nothing happens.
//!
//! The controllers run as their release binaries (`just bench` builds them) with default
//! settings, as a user would run them (leader election off, so Lease renewals do not count as
//! writes). Pods are completed by the pod simulator.

// A benchmark that cannot proceed should stop right there, with the error.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crd_types::workflow::{Ignitor, TASK_LABEL, Task, TaskRef, TaskRun, TaskRunSpec};
use futures::StreamExt;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{ListParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, watcher};
use kube::{Api, Client, ResourceExt};
use orrery_e2e::bench::{Controller, control_plane, env_usize, invoked_as_benchmark, percentiles, wait_for};
use orrery_e2e::pod_simulator::PodSimulator;
use serde_json::json;

const NAMESPACE: &str = "bench";

/// When this process first saw things happen, from one watch per kind.
#[derive(Default)]
struct Seen {
    pod_created: HashMap<String, Instant>,
    pod_succeeded: HashMap<String, Instant>,
    pod_labels: HashMap<String, (Option<String>, Option<String>)>,
    job_created: HashMap<String, Instant>,
    ignited: HashMap<String, (Instant, f64)>,
}

fn observe(client: Client, seen: Arc<Mutex<Seen>>) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let seen_pods = seen.clone();
    tokio::spawn(async move {
        let mut stream = watcher(pods, watcher::Config::default())
            .default_backoff()
            .applied_objects()
            .boxed();
        while let Some(Ok(pod)) = stream.next().await {
            let now = Instant::now();
            let name = pod.name_any();
            let mut seen = seen_pods.lock().unwrap();
            seen.pod_created.entry(name.clone()).or_insert(now);
            seen.pod_labels.entry(name.clone()).or_insert_with(|| {
                (
                    pod.labels().get(TASK_LABEL).cloned(),
                    pod.labels().get("job-name").cloned(),
                )
            });
            if pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded") {
                seen.pod_succeeded.entry(name).or_insert(now);
            }
        }
    });
    let jobs: Api<Job> = Api::namespaced(client.clone(), NAMESPACE);
    let seen_jobs = seen.clone();
    tokio::spawn(async move {
        let mut stream = watcher(jobs, watcher::Config::default())
            .default_backoff()
            .applied_objects()
            .boxed();
        while let Some(Ok(job)) = stream.next().await {
            let now = Instant::now();
            seen_jobs
                .lock()
                .unwrap()
                .job_created
                .entry(job.name_any())
                .or_insert(now);
        }
    });
    let ignitors: Api<Ignitor> = Api::namespaced(client, NAMESPACE);
    tokio::spawn(async move {
        let mut stream = watcher(ignitors, watcher::Config::default())
            .default_backoff()
            .applied_objects()
            .boxed();
        while let Some(Ok(ignitor)) = stream.next().await {
            let Some(ignition) = ignitor.status.and_then(|s| s.last_ignition) else {
                continue;
            };
            let Some(scheduled) = ignition.scheduled_time else {
                continue;
            };
            let delay = ignition.time.0.duration_since(scheduled.0).as_secs_f64();
            seen.lock()
                .unwrap()
                .ignited
                .entry(ignitor.metadata.name.unwrap_or_default())
                .or_insert((Instant::now(), delay));
        }
    });
}

fn task(name: &str, after: Option<&str>) -> Task {
    let mut spec = json!({"template": {"spec": {"containers": [{"name": "main", "image": "busybox"}]}}, "successfulRunsHistoryLimit": 1});
    if let Some(after) = after {
        spec["startOnSuccess"] = json!([after]);
    }
    Task::new(name, serde_json::from_value(spec).expect("task spec"))
}

fn run(task: &str, name: &str) -> TaskRun {
    TaskRun::new(
        name,
        TaskRunSpec {
            task_ref: TaskRef { name: task.into() },
            initiator: None,
            data: None,
            joined: vec![],
        },
    )
}

/// Requests sent between two readings of `Controller::requests`, per chain, by method.
fn per_chain(before: &HashMap<String, f64>, after: &HashMap<String, f64>, chains: usize) -> String {
    let mut methods: Vec<(&String, f64)> = after
        .iter()
        .map(|(method, n)| (method, (n - before.get(method).unwrap_or(&0.0)) / chains as f64))
        .collect();
    methods.sort_by(|a, b| a.0.cmp(b.0));
    methods
        .iter()
        .map(|(method, n)| format!("{method} {n:.1}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if !invoked_as_benchmark() {
        println!("workflow benchmark: run it with `just bench`");
        return Ok(());
    }
    let chains = env_usize("ORRERY_BENCH_CHAINS", 1000);
    let rate = env_usize("ORRERY_BENCH_RATE", 20) as f64;
    let burst = env_usize("ORRERY_BENCH_BURST", 1000);
    let many_tasks = env_usize("ORRERY_BENCH_TASKS", 10_000);
    let cron = env_usize("ORRERY_BENCH_CRON", 100);
    let at_rest = Duration::from_secs(env_usize("ORRERY_BENCH_REST_SECONDS", 60) as u64);

    let (plane, client) = control_plane().await?;
    let namespace: Namespace = serde_json::from_value(json!({"metadata": {"name": NAMESPACE}}))?;
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await?;

    let _kubelet = PodSimulator::start(client.clone(), Some(NAMESPACE)).await?;
    let seen = Arc::new(Mutex::new(Seen::default()));
    observe(client.clone(), seen.clone());
    let workflow = Controller::start("task-workflow", &plane, Some(NAMESPACE))?;
    let scheduler = Controller::start("ignitor-scheduler", &plane, Some(NAMESPACE))?;
    let tasks: Api<Task> = Api::namespaced(client.clone(), NAMESPACE);
    let runs: Api<TaskRun> = Api::namespaced(client.clone(), NAMESPACE);
    let interval = Duration::from_secs_f64(1.0 / rate);

    // Step to step: chains a-i → b-i, each started by a TaskRun of a-i, paced at `rate`/s.
    for i in 0..chains {
        tasks
            .create(&PostParams::default(), &task(&format!("a-{i}"), None))
            .await?;
        tasks
            .create(
                &PostParams::default(),
                &task(&format!("b-{i}"), Some(&format!("a-{i}"))),
            )
            .await?;
    }
    let ready = || {
        let tasks = tasks.clone();
        async move {
            tasks
                .list(&ListParams::default())
                .await
                .map(|l| l.items.iter().all(|t| t.status.is_some()))
                .unwrap_or(false)
        }
    };
    while !ready().await {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let requests_before = workflow.requests();
    let throttled_before = workflow.throttled();
    let conflicts_before = workflow.conflicts();
    let started = tokio::time::Instant::now();
    for i in 0..chains {
        tokio::time::sleep_until(started + interval * i as u32).await;
        runs.create(&PostParams::default(), &run(&format!("a-{i}"), &format!("a-{i}-go")))
            .await?;
    }
    let chain_pods = |seen: &Seen| {
        (0..chains)
            .filter(|i| {
                seen.pod_labels.iter().any(|(pod, (task, _))| {
                    task.as_deref() == Some(&format!("b-{i}")) && seen.pod_created.contains_key(pod)
                })
            })
            .count()
    };
    wait_for("every chain's second pod", Duration::from_secs(600), || {
        chain_pods(&seen.lock().unwrap()) == chains
    })
    .await?;
    let requests = per_chain(&requests_before, &workflow.requests(), chains);
    let throttled = workflow.throttled() - throttled_before;
    let conflicts = (workflow.conflicts() - conflicts_before) / chains as f64;
    let step_latency: Vec<f64> = {
        let seen = seen.lock().unwrap();
        let pod_of = |task: &str| {
            seen.pod_labels
                .iter()
                .find(|(_, (t, _))| t.as_deref() == Some(task))
                .map(|(p, _)| p.clone())
        };
        (0..chains)
            .filter_map(|i| {
                let a = pod_of(&format!("a-{i}"))?;
                let b = pod_of(&format!("b-{i}"))?;
                Some(
                    seen.pod_created[&b]
                        .duration_since(*seen.pod_succeeded.get(&a)?)
                        .as_secs_f64()
                        * 1000.0,
                )
            })
            .collect()
    };

    // The Job controller, same pace: Job created → its pod created.
    let jobs: Api<Job> = Api::namespaced(client.clone(), NAMESPACE);
    let job_started = tokio::time::Instant::now();
    for i in 0..chains {
        tokio::time::sleep_until(job_started + interval * i as u32).await;
        let job: Job = serde_json::from_value(
            json!({"metadata": {"name": format!("job-{i}")}, "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "main", "image": "busybox"}]}}}}),
        )?;
        jobs.create(&PostParams::default(), &job).await?;
    }
    let job_pods = |seen: &Seen| seen.pod_labels.values().filter(|(_, job)| job.is_some()).count();
    wait_for("every Job's pod", Duration::from_secs(600), || {
        job_pods(&seen.lock().unwrap()) >= chains
    })
    .await?;
    let job_latency: Vec<f64> = {
        let seen = seen.lock().unwrap();
        seen.pod_labels
            .iter()
            .filter_map(|(pod, (_, job))| {
                Some(
                    seen.pod_created[pod]
                        .duration_since(*seen.job_created.get(job.as_ref()?)?)
                        .as_secs_f64()
                        * 1000.0,
                )
            })
            .collect()
    };
    println!("\nstep to step, {chains} chains at {rate}/s");
    println!(
        "  Orrery  predecessor pod Succeeded → successor pod created: {}",
        percentiles(step_latency)
    );
    println!(
        "  Job     Job created → pod created:                          {}",
        percentiles(job_latency)
    );
    println!(
        "  task-workflow API requests per chain: {requests}; {conflicts:.2} conflicts; {throttled} delayed by its client limit"
    );

    // Throughput: `burst` runs of one task, all at once.
    tasks.create(&PostParams::default(), &task("burst", None)).await?;
    let burst_started = Instant::now();
    for i in 0..burst {
        runs.create(&PostParams::default(), &run("burst", &format!("burst-{i}")))
            .await?;
    }
    // The history limit prunes finished runs, so count successes on the Task instead.
    loop {
        let status = tasks.get("burst").await?.status.unwrap_or_default();
        if status.success_count as usize >= burst {
            break;
        }
        anyhow::ensure!(
            burst_started.elapsed() < Duration::from_secs(900),
            "burst not done: {} of {burst}",
            status.success_count
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let elapsed = burst_started.elapsed().as_secs_f64();
    println!(
        "\nthroughput: {burst} TaskRuns created at once completed in {elapsed:.1}s = {:.0} TaskRuns/min",
        burst as f64 / elapsed * 60.0
    );

    // Firing delay: `cron` Ignitors and CronJobs on `* * * * *`, the same minute.
    let ignitors: Api<Ignitor> = Api::namespaced(client.clone(), NAMESPACE);
    let cronjobs: Api<CronJob> = Api::namespaced(client.clone(), NAMESPACE);
    for i in 0..cron {
        let ignitor: Ignitor = serde_json::from_value(
            json!({"metadata": {"name": format!("tick-{i}")}, "spec": {"scheduled": "* * * * *"}}),
        )?;
        ignitors.create(&PostParams::default(), &ignitor).await?;
        let cronjob: CronJob = serde_json::from_value(
            json!({"metadata": {"name": format!("tick-{i}")}, "spec": {"schedule": "* * * * *", "jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "main", "image": "busybox"}]}}}}}}),
        )?;
        cronjobs.create(&PostParams::default(), &cronjob).await?;
    }
    let cron_jobs = |seen: &Seen| seen.job_created.keys().filter(|j| j.starts_with("tick-")).count();
    wait_for(
        "a firing of every Ignitor and CronJob",
        Duration::from_secs(150),
        || {
            let seen = seen.lock().unwrap();
            seen.ignited.len() >= cron && cron_jobs(&seen) >= cron
        },
    )
    .await?;
    let (ignitor_delay, cronjob_delay) = {
        let seen = seen.lock().unwrap();
        let ignitor_delay: Vec<f64> = seen.ignited.values().map(|(_, d)| d * 1000.0).collect();
        // A CronJob's Job is named <cronjob>-<minutes since epoch>: its scheduled time.
        let wall_now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs_f64();
        let cronjob_delay: Vec<f64> = seen
            .job_created
            .iter()
            .filter(|(j, _)| j.starts_with("tick-"))
            .filter_map(|(job, at)| {
                let minutes: f64 = job.rsplit('-').next()?.parse().ok()?;
                let seen_wall = wall_now - at.elapsed().as_secs_f64();
                Some((seen_wall - minutes * 60.0) * 1000.0)
            })
            .collect();
        (ignitor_delay, cronjob_delay)
    };
    println!("\nfiring delay, {cron} schedules of `* * * * *`");
    println!(
        "  Ignitor  scheduled time → status.lastIgnition written: {}",
        percentiles(ignitor_delay)
    );
    println!(
        "  CronJob  scheduled time → Job seen by a watch:         {}",
        percentiles(cronjob_delay)
    );

    // Memory with many Tasks.
    for i in 0..many_tasks {
        tasks
            .create(&PostParams::default(), &task(&format!("idle-{i}"), None))
            .await?;
    }
    while !ready().await {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let total_tasks = tasks.list(&ListParams::default()).await?.items.len();
    println!("\nmemory (VmRSS) with {total_tasks} Tasks, {cron} Ignitors:");
    println!("  task-workflow      {:.1} MiB", workflow.rss_mib());
    println!("  ignitor-scheduler  {:.1} MiB", scheduler.rss_mib());

    // At rest: nothing is created, nothing fires (every Ignitor is removed first).
    ignitors
        .delete_collection(&Default::default(), &ListParams::default())
        .await?;
    cronjobs
        .delete_collection(&Default::default(), &ListParams::default())
        .await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (w0, s0) = (workflow.writes(), scheduler.writes());
    tokio::time::sleep(at_rest).await;
    let (w1, s1) = (workflow.writes(), scheduler.writes());
    println!(
        "\nAPI writes while nothing happens, over {:?}: task-workflow {}, ignitor-scheduler {}",
        at_rest,
        w1 - w0,
        s1 - s0
    );
    drop(workflow);
    drop(scheduler);
    Ok(())
}
