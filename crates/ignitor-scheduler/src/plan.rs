//! The pure core: from an Ignitor as observed and the current time, the status to write (with
//! the firing in it, if one is due), the Events to emit, and when to look again.

use crd_types::common::{CONDITION_READY, find_condition, micros, seconds, set_condition};
use crd_types::workflow::{EARLIER_IGNITIONS, Ignition, IgnitorSpec, IgnitorStatus, MissedFiringPolicy};
use jiff::{SignedDuration, Timestamp};

use crate::schedule::Schedule;

/// How late a cron firing may be before it counts as missed, when the Ignitor sets no
/// `startingDeadlineSeconds`.
pub const DEFAULT_LATENESS: SignedDuration = SignedDuration::from_secs(60);

/// Missed occurrences are counted one by one up to this many; past it only the latest matters.
const MISSED_COUNT_CAP: u32 = 10_000;

/// An Ignitor as the controller sees it.
#[derive(Debug, Clone)]
pub struct Observed<'a> {
    /// The current time.
    pub now: Timestamp,
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// `metadata.creationTimestamp`: a cron schedule counts occurrences from here.
    pub created: Timestamp,
    /// The spec.
    pub spec: &'a IgnitorSpec,
    /// The status (default when absent).
    pub status: &'a IgnitorStatus,
    /// The value of the manual fire annotation, if set.
    pub fire_annotation: Option<&'a str>,
}

/// An Event to emit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedEvent {
    /// Warning (true) or Normal.
    pub warning: bool,
    /// Stable reason.
    pub reason: &'static str,
    /// What happened.
    pub note: String,
}

/// What to do.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The status to write; equal to the observed one when nothing changed.
    pub status: IgnitorStatus,
    /// The firing this plan makes, if any (it is also `status.lastIgnition`).
    pub fired: Option<Ignition>,
    /// Events to emit.
    pub events: Vec<PlannedEvent>,
    /// When to reconcile again; `None` waits for a change.
    pub wake_at: Option<Timestamp>,
}

/// The reason of a suspended Ignitor's `Ready` condition.
const SUSPENDED: &str = "Suspended";

/// Decides what happens now. At most one firing per plan: when a manual fire and a scheduled
/// one are both due, the manual fire goes first and `wake_at` asks to come straight back.
pub fn plan(observed: &Observed<'_>) -> Plan {
    let now = observed.now;
    let spec = observed.spec;
    let mut status = observed.status.clone();
    status.observed_generation = observed.generation;
    let mut events = Vec::new();
    let mut fired = None;
    let was_ready = find_condition(&observed.status.conditions, CONDITION_READY).map(|c| c.status.clone());

    // A manual fire is honoured whatever the schedule says, even when it is invalid.
    if let Some(token) = observed.fire_annotation
        && status.last_manual_fire.as_deref() != Some(token)
    {
        status.last_manual_fire = Some(token.to_owned());
        fired = Some(fire(&mut status, spec, now, None, "Manual"));
    }

    let schedule = match Schedule::parse(&spec.scheduled, spec.time_zone.as_deref(), now) {
        Ok(schedule) => schedule,
        Err(err) => {
            status.next_ignition = None;
            set_ready(&mut status, observed, false, err.reason(), err.to_string());
            if was_ready.as_deref() != Some("False") {
                events.push(PlannedEvent {
                    warning: true,
                    reason: err.reason(),
                    note: err.to_string(),
                });
            }
            return finish(status, fired, events, None);
        }
    };
    let suspended = spec.suspend.unwrap_or(false);
    let deadline = spec
        .starting_deadline_seconds
        .map(SignedDuration::from_secs)
        .unwrap_or(DEFAULT_LATENESS);
    let policy = spec.missed_firing_policy.unwrap_or_default();
    let mut wake_at = None;

    match &schedule {
        Schedule::Now | Schedule::At(_) => {
            let at = match schedule {
                Schedule::At(at) => Some(at),
                _ => None,
            };
            let spent = status.fired_schedule.as_deref() == Some(spec.scheduled.as_str());
            if spent {
                status.next_ignition = None;
                set_ready(
                    &mut status,
                    observed,
                    true,
                    "Completed",
                    "the one-shot schedule has fired",
                );
            } else if suspended {
                status.next_ignition = None;
                set_ready(
                    &mut status,
                    observed,
                    true,
                    SUSPENDED,
                    "suspended; it fires once resumed",
                );
            } else if at.is_some_and(|at| at > now) {
                let at = at.unwrap_or(now);
                status.next_ignition = Some(seconds(at));
                wake_at = Some(at);
                set_ready(&mut status, observed, true, "Scheduled", format!("fires once at {at}"));
            } else if fired.is_some() {
                // The manual fire took this reconcile; the scheduled one follows at once.
                wake_at = Some(now);
            } else {
                status.fired_schedule = Some(spec.scheduled.clone());
                status.next_ignition = None;
                let late = at.map(|at| now.duration_since(at)).unwrap_or(SignedDuration::ZERO);
                let on_time = at.is_none() || late <= deadline;
                let reason = if at.is_none() { "Now" } else { "Time" };
                if on_time || policy == MissedFiringPolicy::FireOnce {
                    let reason = if on_time { reason } else { "CatchUp" };
                    fired = Some(fire(&mut status, spec, now, at, reason));
                } else {
                    status.missed_count = status.missed_count.saturating_add(1);
                    events.push(missed_event(1, late));
                }
                set_ready(
                    &mut status,
                    observed,
                    true,
                    "Completed",
                    "the one-shot schedule has fired",
                );
            }
        }
        Schedule::Cron { .. } => {
            let since = status
                .last_schedule_time
                .as_ref()
                .map(|t| t.0)
                .unwrap_or(observed.created);
            let (due, latest) = schedule.due_between(since, now, MISSED_COUNT_CAP);
            // Nothing runs while suspended (no wake-ups to note each skipped occurrence): the
            // reconcile that sees it resumed skips what passed meanwhile, as it would have.
            let resuming = !suspended
                && find_condition(&observed.status.conditions, CONDITION_READY).is_some_and(|c| c.reason == SUSPENDED);
            match latest {
                Some(_) if fired.is_some() => wake_at = Some(now),
                Some(latest) if suspended || resuming => {
                    // Skipped on purpose while suspended: not missed, not fired.
                    status.last_schedule_time = Some(seconds(latest));
                }
                Some(latest) => {
                    status.last_schedule_time = Some(seconds(latest));
                    let late = now.duration_since(latest);
                    let earlier = i64::from(due.saturating_sub(1));
                    if late <= deadline || policy == MissedFiringPolicy::FireOnce {
                        let reason = if late <= deadline && earlier == 0 {
                            "Schedule"
                        } else {
                            "CatchUp"
                        };
                        status.missed_count = status.missed_count.saturating_add(earlier);
                        if earlier > 0 {
                            events.push(missed_event(earlier, late));
                        }
                        fired = Some(fire(&mut status, spec, now, Some(latest), reason));
                    } else {
                        status.missed_count = status.missed_count.saturating_add(i64::from(due));
                        events.push(missed_event(i64::from(due), late));
                    }
                }
                None => {}
            }
            let after = status
                .last_schedule_time
                .as_ref()
                .map(|t| t.0)
                .unwrap_or(observed.created);
            if suspended {
                status.next_ignition = None;
                set_ready(
                    &mut status,
                    observed,
                    true,
                    SUSPENDED,
                    "suspended; scheduled firings are skipped",
                );
            } else {
                let next = schedule.next_after(after.max(now));
                status.next_ignition = next.map(seconds);
                if wake_at.is_none() {
                    wake_at = next;
                }
                let message = match next {
                    Some(next) => format!("next ignition at {next}"),
                    None => "no further ignitions".to_owned(),
                };
                set_ready(&mut status, observed, true, "Scheduled", message);
            }
        }
    }
    if was_ready.as_deref() == Some("False") {
        events.push(PlannedEvent {
            warning: false,
            reason: "ScheduleValid",
            note: format!("schedule {:?} is valid again", spec.scheduled),
        });
    }
    finish(status, fired, events, wake_at)
}

fn finish(
    status: IgnitorStatus,
    fired: Option<Ignition>,
    mut events: Vec<PlannedEvent>,
    wake_at: Option<Timestamp>,
) -> Plan {
    if let Some(ignition) = &fired {
        events.push(PlannedEvent {
            warning: false,
            reason: "Ignited",
            note: format!("ignition {} ({})", ignition.sequence, ignition.reason),
        });
    }
    Plan {
        status,
        fired,
        events,
        wake_at,
    }
}

fn fire(
    status: &mut IgnitorStatus,
    spec: &IgnitorSpec,
    now: Timestamp,
    scheduled: Option<Timestamp>,
    reason: &str,
) -> Ignition {
    // Counters come back from the stored status, which anyone allowed to write it may set to
    // anything: they stop at the top rather than overflow.
    let sequence = status
        .last_ignition
        .as_ref()
        .map(|i| i.sequence)
        .unwrap_or(0)
        .saturating_add(1);
    let ignition = Ignition {
        sequence,
        time: micros(now),
        scheduled_time: scheduled.map(seconds),
        data: spec.data.clone(),
        reason: reason.to_owned(),
    };
    status.ignitions_count = status.ignitions_count.saturating_add(1);
    if let Some(previous) = status.last_ignition.replace(ignition.clone()) {
        status.earlier_ignitions.insert(0, previous);
        status.earlier_ignitions.truncate(EARLIER_IGNITIONS);
    }
    ignition
}

fn missed_event(count: i64, late: SignedDuration) -> PlannedEvent {
    PlannedEvent {
        warning: true,
        reason: "MissedIgnition",
        note: format!("{count} scheduled ignition(s) missed; the latest was due {late:#} ago"),
    }
}

fn set_ready(
    status: &mut IgnitorStatus,
    observed: &Observed<'_>,
    ready: bool,
    reason: &str,
    message: impl Into<String>,
) {
    set_condition(
        &mut status.conditions,
        CONDITION_READY,
        ready,
        reason,
        message,
        observed.generation,
        seconds(observed.now),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().expect("timestamp literal")
    }

    fn spec(scheduled: &str) -> IgnitorSpec {
        IgnitorSpec {
            description: None,
            scheduled: scheduled.into(),
            time_zone: None,
            data: Some("payload".into()),
            suspend: None,
            starting_deadline_seconds: None,
            missed_firing_policy: None,
        }
    }

    fn run(spec: &IgnitorSpec, status: &IgnitorStatus, now: &str, annotation: Option<&str>) -> Plan {
        plan(&Observed {
            now: t(now),
            generation: Some(1),
            created: t("2026-01-01T00:00:00Z"),
            spec,
            status,
            fire_annotation: annotation,
        })
    }

    fn ready(plan: &Plan) -> (String, String) {
        let c = find_condition(&plan.status.conditions, CONDITION_READY).expect("Ready is always set");
        (c.status.clone(), c.reason.clone())
    }

    #[test]
    fn counters_at_their_maximum_in_the_stored_status_do_not_overflow() {
        // A status written with the largest sequence and counts made the
        // next firing overflow (a panic in the reconcile).
        let status = IgnitorStatus {
            last_ignition: Some(Ignition {
                sequence: i64::MAX,
                time: micros(t("2026-01-01T00:00:00Z")),
                scheduled_time: None,
                data: None,
                reason: "Schedule".into(),
            }),
            ignitions_count: i64::MAX,
            missed_count: i64::MAX,
            ..IgnitorStatus::default()
        };
        let manual = run(&spec("NOW"), &status, "2026-01-01T00:00:01Z", Some("again"));
        assert_eq!(manual.fired.map(|i| i.sequence), Some(i64::MAX));
        assert_eq!(manual.status.ignitions_count, i64::MAX);
        let skip = IgnitorSpec {
            missed_firing_policy: Some(MissedFiringPolicy::Skip),
            starting_deadline_seconds: Some(1),
            ..spec("* * * * *")
        };
        let missed = run(&skip, &status, "2026-01-02T00:00:30Z", None);
        assert_eq!(missed.fired, None);
        assert_eq!(missed.status.missed_count, i64::MAX);
    }

    #[test]
    fn the_status_keeps_the_firings_before_the_latest_newest_first() {
        let mut status = IgnitorStatus::default();
        for (minute, manual) in ["a", "b", "c", "d", "e", "f"].iter().enumerate() {
            let now = format!("2026-01-01T00:0{minute}:00Z");
            status = run(&spec("NOW"), &status, &now, Some(manual)).status;
        }
        assert_eq!(status.last_ignition.map(|i| i.sequence), Some(6));
        let kept: Vec<i64> = status.earlier_ignitions.iter().map(|i| i.sequence).collect();
        assert_eq!(kept, [5, 4, 3, 2]);
    }

    #[test]
    fn now_fires_exactly_once() {
        let spec = spec("NOW");
        let first = run(&spec, &IgnitorStatus::default(), "2026-01-01T00:00:01Z", None);
        let ignition = first.fired.clone().expect("fires on creation");
        assert_eq!((ignition.sequence, ignition.reason.as_str()), (1, "Now"));
        assert_eq!(ignition.data.as_deref(), Some("payload"));
        assert_eq!(first.status.fired_schedule.as_deref(), Some("NOW"));
        let again = run(&spec, &first.status, "2026-01-01T00:00:05Z", None);
        assert_eq!(again.fired, None);
        assert_eq!(again.status, first.status, "steady state writes nothing");
        assert_eq!(again.wake_at, None);
    }

    #[test]
    fn a_time_fires_once_at_that_time() {
        let spec = spec("2026-01-01T12:00:00Z");
        let early = run(&spec, &IgnitorStatus::default(), "2026-01-01T11:00:00Z", None);
        assert_eq!(early.fired, None);
        assert_eq!(early.wake_at, Some(t("2026-01-01T12:00:00Z")));
        assert_eq!(early.status.next_ignition, Some(seconds(t("2026-01-01T12:00:00Z"))));
        let due = run(&spec, &early.status, "2026-01-01T12:00:00.002Z", None);
        let ignition = due.fired.clone().expect("fires at the time");
        assert_eq!(ignition.scheduled_time, Some(seconds(t("2026-01-01T12:00:00Z"))));
        assert_eq!(ignition.reason, "Time");
        assert_eq!(ready(&due), ("True".into(), "Completed".into()));
        assert_eq!(run(&spec, &due.status, "2026-01-01T13:00:00Z", None).fired, None);
    }

    #[test]
    fn a_fractional_time_plans_the_stored_precision_so_nothing_is_rewritten() {
        let spec = spec("2026-01-01T12:00:00.750Z");
        let first = run(&spec, &IgnitorStatus::default(), "2026-01-01T11:00:00.123Z", None);
        // Round-trip through JSON as the API server does, then plan again.
        let stored: IgnitorStatus = serde_json::from_value(serde_json::to_value(&first.status).unwrap()).unwrap();
        assert_eq!(stored, first.status);
        let again = run(&spec, &stored, "2026-01-01T11:00:01.456Z", None);
        assert_eq!(again.status, stored);
    }

    #[test]
    fn cron_fires_at_each_occurrence_and_sleeps_until_the_next() {
        let spec = spec("*/5 * * * *");
        let before = run(&spec, &IgnitorStatus::default(), "2026-01-01T00:03:00Z", None);
        assert_eq!(before.fired, None);
        assert_eq!(before.wake_at, Some(t("2026-01-01T00:05:00Z")));
        let at = run(&spec, &before.status, "2026-01-01T00:05:00.010Z", None);
        let first = at.fired.clone().expect("due");
        assert_eq!((first.sequence, first.reason.as_str()), (1, "Schedule"));
        assert_eq!(first.scheduled_time, Some(seconds(t("2026-01-01T00:05:00Z"))));
        assert_eq!(at.wake_at, Some(t("2026-01-01T00:10:00Z")));
        // A replay of the same moment (a restart, a duplicate event) does not fire twice.
        let replay = run(&spec, &at.status, "2026-01-01T00:05:01Z", None);
        assert_eq!(replay.fired, None);
        assert_eq!(replay.status, at.status);
        let next = run(&spec, &at.status, "2026-01-01T00:10:00.5Z", None);
        assert_eq!(next.fired.map(|i| i.sequence), Some(2));
    }

    #[test]
    fn after_an_outage_fire_once_catches_up_and_counts_the_rest_as_missed() {
        let spec = spec("*/5 * * * *");
        let status = IgnitorStatus {
            last_schedule_time: Some(seconds(t("2026-01-01T00:05:00Z"))),
            ..IgnitorStatus::default()
        };
        // Down from 00:06 to 00:31: 00:10 … 00:30 passed (5 occurrences), the latest 1 min late.
        let plan = run(&spec, &status, "2026-01-01T00:31:30Z", None);
        let ignition = plan.fired.clone().expect("catch-up firing");
        assert_eq!(ignition.reason, "CatchUp");
        assert_eq!(ignition.scheduled_time, Some(seconds(t("2026-01-01T00:30:00Z"))));
        assert_eq!(plan.status.missed_count, 4);
        assert!(plan.events.iter().any(|e| e.reason == "MissedIgnition" && e.warning));
    }

    #[test]
    fn after_an_outage_skip_fires_nothing_past_the_deadline() {
        let mut spec = spec("*/5 * * * *");
        spec.missed_firing_policy = Some(MissedFiringPolicy::Skip);
        spec.starting_deadline_seconds = Some(30);
        let status = IgnitorStatus {
            last_schedule_time: Some(seconds(t("2026-01-01T00:05:00Z"))),
            ..IgnitorStatus::default()
        };
        let late = run(&spec, &status, "2026-01-01T00:31:00Z", None);
        assert_eq!(late.fired, None);
        assert_eq!(late.status.missed_count, 5);
        assert_eq!(late.status.next_ignition, Some(seconds(t("2026-01-01T00:35:00Z"))));
        // Within the deadline it fires as usual.
        let on_time = run(&spec, &status, "2026-01-01T00:10:20Z", None);
        assert_eq!(on_time.fired.map(|i| i.reason), Some("Schedule".into()));
    }

    #[test]
    fn a_manual_fire_counts_once_per_annotation_value() {
        let spec = spec("0 0 1 1 *");
        let first = run(&spec, &IgnitorStatus::default(), "2026-03-01T00:00:00Z", Some("1"));
        assert_eq!(first.fired.as_ref().map(|i| i.reason.as_str()), Some("Manual"));
        assert_eq!(first.fired.as_ref().and_then(|i| i.scheduled_time.clone()), None);
        let same = run(&spec, &first.status, "2026-03-01T00:00:01Z", Some("1"));
        assert_eq!(same.fired, None);
        let second = run(&spec, &first.status, "2026-03-01T00:00:02Z", Some("2"));
        assert_eq!(second.fired.map(|i| i.sequence), Some(2));
    }

    #[test]
    fn a_manual_fire_works_while_suspended_or_invalid() {
        let mut suspended = spec("* * * * *");
        suspended.suspend = Some(true);
        let plan = run(&suspended, &IgnitorStatus::default(), "2026-01-01T00:10:00Z", Some("x"));
        assert_eq!(plan.fired.map(|i| i.reason), Some("Manual".into()));
        let invalid = spec("not a schedule");
        let plan = run(&invalid, &IgnitorStatus::default(), "2026-01-01T00:10:00Z", Some("x"));
        assert_eq!(plan.fired.map(|i| i.reason), Some("Manual".into()));
    }

    #[test]
    fn suspended_schedules_skip_without_counting_misses() {
        let mut spec = spec("* * * * *");
        spec.suspend = Some(true);
        let plan = run(&spec, &IgnitorStatus::default(), "2026-01-01T00:10:30Z", None);
        assert_eq!(plan.fired, None);
        assert_eq!(plan.status.missed_count, 0);
        assert_eq!(plan.status.next_ignition, None);
        assert_eq!(plan.wake_at, None, "nothing to wake up for while suspended");
        assert_eq!(ready(&plan), ("True".into(), "Suspended".into()));
    }

    #[test]
    fn resumed_it_skips_what_passed_while_suspended_and_fires_on_schedule() {
        let mut spec = spec("* * * * *");
        spec.suspend = Some(true);
        let suspended = run(&spec, &IgnitorStatus::default(), "2026-01-01T00:10:30Z", None);
        spec.suspend = Some(false);
        // Resumed twenty minutes later: twenty occurrences passed, none missed, none caught up.
        let resumed = run(&spec, &suspended.status, "2026-01-01T00:30:30Z", None);
        assert_eq!((resumed.fired, resumed.status.missed_count), (None, 0));
        assert_eq!(resumed.wake_at, Some(t("2026-01-01T00:31:00Z")));
        let on_time = run(&spec, &resumed.status, "2026-01-01T00:31:00Z", None);
        assert_eq!(on_time.fired.map(|i| i.reason), Some("Schedule".into()));
    }

    #[test]
    fn an_invalid_schedule_is_not_ready_with_the_parsers_message_and_one_event() {
        let spec = spec("61 * * * *");
        let plan = run(&spec, &IgnitorStatus::default(), "2026-01-01T00:00:00Z", None);
        assert_eq!(ready(&plan), ("False".into(), "InvalidSchedule".into()));
        let message = &find_condition(&plan.status.conditions, CONDITION_READY)
            .unwrap()
            .message;
        assert!(message.contains("61 * * * *"), "{message}");
        assert_eq!(plan.events.len(), 1);
        assert_eq!(plan.wake_at, None, "an invalid spec waits for a change");
        let again = run(&spec, &plan.status, "2026-01-01T00:01:00Z", None);
        assert!(
            again.events.is_empty(),
            "the Warning is emitted once, not on every reconcile"
        );
        assert_eq!(again.status, plan.status);
    }
}
