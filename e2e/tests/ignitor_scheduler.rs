//! ignitor-scheduler on the real control plane: NOW fires once, a time fires at that second,
//! cron fires at each occurrence, a restart loses and doubles nothing, manual fires count
//! once, and schedules the schema cannot judge become a Ready=False condition and an Event.

// A test that cannot proceed should stop right there, with the error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crd_types::workflow::{FIRE_ANNOTATION, Ignition, Ignitor, IgnitorSpec};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::events::v1::Event;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use orrery_e2e::{Deadline, InProcess, TestEnv, poll_until};
use serde_json::json;

fn start_scheduler(env: &TestEnv) -> InProcess {
    InProcess::start(
        env.client.clone(),
        &env.namespace,
        ignitor_scheduler::controller::NAME,
        ignitor_scheduler::run,
    )
}

fn ignitor(name: &str, scheduled: &str) -> Ignitor {
    Ignitor::new(
        name,
        IgnitorSpec {
            description: None,
            scheduled: scheduled.into(),
            time_zone: None,
            data: Some(format!("data of {name}")),
            suspend: None,
            starting_deadline_seconds: None,
            missed_firing_policy: None,
        },
    )
}

async fn ignition_at_least(api: &Api<Ignitor>, name: &str, sequence: i64) -> (Ignition, Ignitor) {
    poll_until(
        &format!("{name} to reach ignition {sequence}"),
        Deadline::default(),
        || async {
            let ignitor = api.get(name).await.map_err(|e| e.to_string())?;
            match ignitor.status.as_ref().and_then(|s| s.last_ignition.clone()) {
                Some(ignition) if ignition.sequence >= sequence => Ok((ignition, ignitor)),
                other => Err(format!("last ignition {other:?}")),
            }
        },
    )
    .await
}

fn ready(ignitor: &Ignitor) -> (String, String, String) {
    let condition = ignitor
        .status
        .as_ref()
        .and_then(|s| crd_types::common::find_condition(&s.conditions, "Ready").cloned())
        .expect("Ready condition");
    (condition.status, condition.reason, condition.message)
}

#[tokio::test]
async fn now_fires_once_and_a_manual_fire_counts_once() {
    let env = TestEnv::new().await;
    let scheduler = start_scheduler(&env);
    let api = env.namespaced::<Ignitor>();
    api.create(&PostParams::default(), &ignitor("ignitor1", "NOW"))
        .await
        .unwrap();

    let (first, _) = ignition_at_least(&api, "ignitor1", 1).await;
    assert_eq!((first.sequence, first.reason.as_str()), (1, "Now"));
    assert_eq!(first.data.as_deref(), Some("data of ignitor1"));

    // Each new annotation value fires once; re-applying the same value does not.
    for (token, expected_sequence) in [("a", 2), ("a", 2), ("b", 3)] {
        let patch = json!({"metadata": {"annotations": {FIRE_ANNOTATION: token}}});
        api.patch("ignitor1", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
        let ignitor = poll_until("the annotation to be honoured", Deadline::default(), || async {
            let ignitor = api.get("ignitor1").await.map_err(|e| e.to_string())?;
            let status = ignitor.status.clone().unwrap_or_default();
            if status.last_manual_fire.as_deref() == Some(token) {
                Ok(ignitor)
            } else {
                Err(format!("{status:?}"))
            }
        })
        .await;
        let status = ignitor.status.unwrap();
        assert_eq!(
            status.last_ignition.as_ref().map(|i| i.sequence),
            Some(expected_sequence)
        );
        assert_eq!(
            status.ignitions_count, expected_sequence,
            "NOW never fires a second time"
        );
    }
    scheduler.stop().await;
}

#[tokio::test]
async fn a_time_fires_within_a_second_of_it() {
    let env = TestEnv::new().await;
    let scheduler = start_scheduler(&env);
    let api = env.namespaced::<Ignitor>();
    let at = Timestamp::now()
        .checked_add(SignedDuration::from_secs(3))
        .unwrap()
        .round(jiff::Unit::Second)
        .unwrap();
    api.create(&PostParams::default(), &ignitor("at", &at.to_string()))
        .await
        .unwrap();

    let (ignition, ignitor) = ignition_at_least(&api, "at", 1).await;
    assert_eq!(ignition.reason, "Time");
    assert_eq!(ignition.scheduled_time.map(|t| t.0), Some(at));
    let delay = ignition.time.0.duration_since(at);
    assert!(delay >= SignedDuration::ZERO, "fired {delay:#} early");
    assert!(delay < SignedDuration::from_secs(1), "fired {delay:#} late");
    assert_eq!(ready(&ignitor).1, "Completed");
    assert_eq!(ignitor.status.unwrap().next_ignition, None);
    scheduler.stop().await;
}

#[tokio::test]
async fn cron_fires_on_schedule_and_a_restart_loses_and_doubles_nothing() {
    let env = TestEnv::new().await;
    let api = env.namespaced::<Ignitor>();
    let scheduler = start_scheduler(&env);
    api.create(&PostParams::default(), &ignitor("tick", "*/3 * * * * *"))
        .await
        .unwrap();

    let (first, ignitor) = ignition_at_least(&api, "tick", 1).await;
    let scheduled = first.scheduled_time.clone().expect("a scheduled firing").0;
    assert_eq!(first.reason, "Schedule");
    assert_eq!(scheduled.as_second() % 3, 0);
    let delay = first.time.0.duration_since(scheduled);
    assert!(
        delay >= SignedDuration::ZERO && delay < SignedDuration::from_secs(1),
        "{delay:#}"
    );
    let next = ignitor
        .status
        .as_ref()
        .and_then(|s| s.next_ignition.clone())
        .expect("nextIgnition")
        .0;
    assert_eq!(next.duration_since(scheduled), SignedDuration::from_secs(3));

    // Restart between firings: the next occurrence fires once, on time, and the last is not redone.
    scheduler.stop().await;
    let scheduler = start_scheduler(&env);
    let (second, ignitor) = ignition_at_least(&api, "tick", first.sequence + 1).await;
    let status = ignitor.status.unwrap();
    assert_eq!(second.sequence, first.sequence + 1, "no firing doubled");
    assert!(
        second.scheduled_time.as_ref().unwrap().0 > scheduled,
        "the same occurrence fired twice"
    );
    assert_eq!(status.ignitions_count, second.sequence);
    assert_eq!(
        status.missed_count,
        second.scheduled_time.unwrap().0.duration_since(scheduled).as_secs() / 3 - 1,
        "occurrences passed during the restart are counted, not lost"
    );
    scheduler.stop().await;
}

#[tokio::test]
async fn schedules_the_schema_cannot_judge_are_reported_with_the_parsers_message() {
    let env = TestEnv::new().await;
    let scheduler = start_scheduler(&env);
    let api = env.namespaced::<Ignitor>();
    let mut bad_zone = ignitor("bad-zone", "0 9 * * *");
    bad_zone.spec.time_zone = Some("Mars/Olympus_Mons".into());
    let cases = [
        (ignitor("bad-minute", "61 * * * *"), "InvalidSchedule", "61 * * * *"),
        (bad_zone, "UnknownTimeZone", "Mars/Olympus_Mons"),
        (ignitor("never", "0 0 30 2 *"), "NeverFires", "never fires"),
    ];
    for (object, _, _) in &cases {
        api.create(&PostParams::default(), object).await.unwrap();
    }
    let events: Api<Event> = env.namespaced();
    for (object, reason, message) in &cases {
        let name = object.metadata.name.clone().unwrap();
        let condition = poll_until(&format!("{name} to be not Ready"), Deadline::default(), || async {
            let ignitor = api.get(&name).await.map_err(|e| e.to_string())?;
            match ignitor.status.as_ref().map(|_| ready(&ignitor)) {
                Some(c) if c.0 == "False" => Ok(c),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
        assert_eq!(condition.1, *reason);
        assert!(condition.2.contains(message), "{condition:?}");
        poll_until(&format!("a Warning Event for {name}"), Deadline::default(), || async {
            let list = events.list(&ListParams::default()).await.map_err(|e| e.to_string())?;
            list.items
                .iter()
                .find(|e| {
                    e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name.as_str())
                        && e.type_.as_deref() == Some("Warning")
                        && e.reason.as_deref() == Some(*reason)
                })
                .map(|_| ())
                .ok_or_else(|| format!("{} events, none matching", list.items.len()))
        })
        .await;
    }
    scheduler.stop().await;
}
