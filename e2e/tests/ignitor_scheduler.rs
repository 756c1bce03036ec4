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

fn from_spec(name: &str, spec: serde_json::Value) -> Ignitor {
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).expect("ignitor literal")
}

/// Waits until `seconds` have passed since `from`, checking all along that `unchanged` holds:
/// the wait is for time to pass (a schedule's occurrences), not for anything to happen.
async fn while_time_passes<F, Fut>(from: Timestamp, seconds: i64, unchanged: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    poll_until(
        &format!("{seconds} s to pass with nothing changing"),
        Deadline(std::time::Duration::from_secs(seconds as u64 + 30)),
        || async {
            unchanged().await.map_err(|changed| format!("changed: {changed}"))?;
            if Timestamp::now().duration_since(from) >= SignedDuration::from_secs(seconds) {
                Ok(())
            } else {
                Err("time has not passed yet".into())
            }
        },
    )
    .await;
}

#[tokio::test]
async fn the_seeds_five_field_cron_fires_within_its_minute_in_its_time_zone() {
    let env = TestEnv::new().await;
    let api = env.namespaced::<Ignitor>();
    let scheduler = start_scheduler(&env);
    // The seed's own form, minute first. Kolkata is UTC+05:30: minute 5 there is minute 35 in
    // UTC, which shows the zone is applied.
    let zone = json!("Asia/Kolkata");
    api.create(
        &PostParams::default(),
        &from_spec("hourly", json!({"scheduled": "5 * * * *", "timeZone": zone})),
    )
    .await
    .unwrap();
    api.create(
        &PostParams::default(),
        &from_spec("minutely", json!({"scheduled": "* * * * *", "timeZone": zone})),
    )
    .await
    .unwrap();
    let next = poll_until("hourly's next ignition", Deadline::default(), || async {
        let ignitor = api.get("hourly").await.map_err(|e| e.to_string())?;
        ignitor
            .status
            .and_then(|s| s.next_ignition)
            .ok_or_else(|| "no nextIgnition yet".to_owned())
    })
    .await;
    let utc = next.0.to_zoned(jiff::tz::TimeZone::UTC);
    assert_eq!((utc.minute(), utc.second()), (35, 0), "{next:?}");
    assert!(next.0.duration_since(Timestamp::now()) <= SignedDuration::from_hours(1));

    // Every minute: it fires within the minute, on its second 0.
    let first = poll_until(
        "minutely to fire",
        Deadline(std::time::Duration::from_secs(75)),
        || async {
            let ignitor = api.get("minutely").await.map_err(|e| e.to_string())?;
            ignitor
                .status
                .and_then(|s| s.last_ignition)
                .ok_or_else(|| "not fired yet".to_owned())
        },
    )
    .await;
    let scheduled = first.scheduled_time.expect("a scheduled firing").0;
    assert_eq!((first.reason.as_str(), scheduled.as_second() % 60), ("Schedule", 0));
    let delay = first.time.0.duration_since(scheduled);
    assert!(delay < SignedDuration::from_secs(1), "fired {delay:#} late");
    scheduler.stop().await;
}

#[tokio::test]
async fn suspended_it_skips_its_firings_and_resumed_it_fires_on_schedule() {
    let env = TestEnv::new().await;
    let api = env.namespaced::<Ignitor>();
    let scheduler = start_scheduler(&env);
    api.create(
        &PostParams::default(),
        &from_spec("paused", json!({"scheduled": "*/2 * * * * *", "suspend": true})),
    )
    .await
    .unwrap();
    poll_until("paused to say it is suspended", Deadline::default(), || async {
        let status = api
            .get("paused")
            .await
            .map_err(|e| e.to_string())?
            .status
            .unwrap_or_default();
        let reason = crd_types::common::find_condition(&status.conditions, "Ready").map(|c| c.reason.clone());
        match reason.as_deref() {
            Some("Suspended") if status.next_ignition.is_none() => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    // Three occurrences pass: none fires, none counts as missed.
    while_time_passes(Timestamp::now(), 6, || async {
        let status = api
            .get("paused")
            .await
            .map_err(|e| e.to_string())?
            .status
            .unwrap_or_default();
        match (status.ignitions_count, status.missed_count) {
            (0, 0) => Ok(()),
            counts => Err(format!("{counts:?}")),
        }
    })
    .await;
    let resumed = Timestamp::now();
    api.patch(
        "paused",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"suspend": false}})),
    )
    .await
    .unwrap();
    let (ignition, ignitor) = ignition_at_least(&api, "paused", 1).await;
    assert_eq!(
        ignition.reason, "Schedule",
        "what passed while suspended is not caught up"
    );
    assert!(ignition.scheduled_time.unwrap().0 >= resumed.checked_sub(SignedDuration::from_secs(1)).unwrap());
    assert_eq!(ignitor.status.unwrap().missed_count, 0);
    scheduler.stop().await;
}

#[tokio::test]
async fn firings_missed_while_away_are_caught_up_once_or_skipped_as_asked() {
    let env = TestEnv::new().await;
    let api = env.namespaced::<Ignitor>();
    let scheduler = start_scheduler(&env);
    for (name, policy) in [("catch-up", "FireOnce"), ("skip", "Skip")] {
        let spec = json!({"scheduled": "*/2 * * * * *", "startingDeadlineSeconds": 1, "missedFiringPolicy": policy});
        api.create(&PostParams::default(), &from_spec(name, spec))
            .await
            .unwrap();
    }
    let (catch_up, _) = ignition_at_least(&api, "catch-up", 1).await;
    let (skip, _) = ignition_at_least(&api, "skip", 1).await;
    scheduler.stop().await;

    // Away for three occurrences and more: the next one after the restart is late past its
    // deadline of 1 s for both.
    while_time_passes(Timestamp::now(), 7, || async { Ok(()) }).await;
    let restarted = Timestamp::now();
    let scheduler = start_scheduler(&env);

    // FireOnce: one catch-up firing at once, the others counted as missed.
    let (caught, ignitor) = ignition_at_least(&api, "catch-up", catch_up.sequence + 1).await;
    assert_eq!(caught.sequence, catch_up.sequence + 1);
    assert_eq!(caught.reason, "CatchUp");
    assert!(caught.time.0.duration_since(restarted) < SignedDuration::from_secs(5));
    assert!(ignitor.status.unwrap().missed_count >= 2);

    // Skip: no catch-up; every occurrence passed is counted as missed, and the next firing is
    // an on-time one after the restart.
    let (next, ignitor) = ignition_at_least(&api, "skip", skip.sequence + 1).await;
    assert_eq!(next.sequence, skip.sequence + 1);
    assert_eq!(next.reason, "Schedule");
    assert!(next.scheduled_time.unwrap().0 >= restarted);
    assert!(ignitor.status.unwrap().missed_count >= 3);
    scheduler.stop().await;
}
