//! Parses arbitrary schedules in arbitrary time zones at arbitrary times, and plans an Ignitor
//! with them. Nothing may panic or run for long, and every next firing is strictly after the
//! time it was asked from.
//!
//! Input: `SCHEDULE`, optionally a NUL and a time zone, optionally a 0xFF byte (never in
//! UTF-8) followed by the numbers below, eight bytes each, little-endian, missing ones zero:
//! the current time (seconds from 2026-01-01T00:00:00Z, wrapped into jiff's range), how long
//! ago the Ignitor was created, how long ago its last scheduled time was (0: none), its
//! `startingDeadlineSeconds` (0: none), and flags (1 suspend, 2 skip missed firings, 4 a manual
//! fire annotation).

#![no_main]

use crd_types::common::Time;
use crd_types::workflow::{IgnitorSpec, IgnitorStatus, MissedFiringPolicy};
use ignitor_scheduler::plan::{Observed, plan};
use ignitor_scheduler::schedule::Schedule;
use jiff::{SignedDuration, Timestamp};
use libfuzzer_sys::fuzz_target;

const EPOCH: i64 = 1_767_225_600; // 2026-01-01T00:00:00Z

fn number(tail: &[u8], index: usize) -> i64 {
    let mut bytes = [0u8; 8];
    if let Some(chunk) = tail.get(index * 8..) {
        let n = chunk.len().min(8);
        bytes[..n].copy_from_slice(&chunk[..n]);
    }
    i64::from_le_bytes(bytes)
}

/// `offset` seconds from 2026, wrapped into the range of times jiff represents.
fn instant(offset: i64) -> Timestamp {
    let (min, max) = (Timestamp::MIN.as_second() + 1, Timestamp::MAX.as_second() - 1);
    let span = i128::from(max) - i128::from(min);
    let second = (i128::from(EPOCH) + i128::from(offset) - i128::from(min)).rem_euclid(span) + i128::from(min);
    Timestamp::from_second(second as i64).expect("within jiff's range")
}

/// `back` seconds before `t`, at most a year, not before jiff's earliest time.
fn before(t: Timestamp, back: i64) -> Timestamp {
    let back = back.rem_euclid(366 * 86_400);
    t.checked_sub(SignedDuration::from_secs(back)).unwrap_or(Timestamp::MIN)
}

fuzz_target!(|data: &[u8]| {
    let (text, tail) = match data.iter().position(|&b| b == 0xFF) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let (scheduled, zone) = match text.split_once('\0') {
        Some((scheduled, zone)) => (scheduled, Some(zone)),
        None => (text, None),
    };
    let now = instant(number(tail, 0));
    let created = before(now, number(tail, 1));
    let last_back = number(tail, 2);
    let deadline = number(tail, 3);
    let flags = number(tail, 4);

    if let Ok(schedule @ Schedule::Cron { .. }) = Schedule::parse(scheduled, zone, now) {
        // A cron schedule is accepted only when it fires within its search horizon.
        let next = schedule.next_after(now);
        assert!(
            next.is_some(),
            "{scheduled:?} in {zone:?} accepted at {now} but never fires"
        );
        if let Some(next) = next {
            assert!(
                next > now,
                "{scheduled:?} in {zone:?}: next firing {next} not after {now}"
            );
            if let Some(after) = schedule.next_after(next) {
                assert!(after > next, "{scheduled:?} in {zone:?}: {after} not after {next}");
            }
        }
        let since = before(now, last_back);
        let (count, latest) = schedule.due_between(since, now, 50);
        assert!(count <= 50);
        assert_eq!(
            count == 0,
            latest.is_none(),
            "{scheduled:?}: {count} due, latest {latest:?}"
        );
        if let Some(latest) = latest {
            assert!(
                latest > since && latest <= now,
                "{scheduled:?}: latest {latest} outside ({since}, {now}]"
            );
        }
    }

    let spec = IgnitorSpec {
        description: None,
        scheduled: scheduled.to_owned(),
        time_zone: zone.map(str::to_owned),
        data: None,
        suspend: (flags & 1 != 0).then_some(true),
        starting_deadline_seconds: (deadline != 0).then_some(deadline),
        missed_firing_policy: (flags & 2 != 0).then_some(MissedFiringPolicy::Skip),
    };
    let status = IgnitorStatus {
        last_schedule_time: (last_back != 0).then(|| Time(before(now, last_back))),
        ..IgnitorStatus::default()
    };
    let planned = plan(&Observed {
        now,
        generation: Some(1),
        created,
        spec: &spec,
        status: &status,
        fire_annotation: (flags & 4 != 0).then_some("now"),
    });
    // Planning again from what was written is just as safe.
    let _ = plan(&Observed {
        now: planned.wake_at.unwrap_or(now).max(now),
        generation: Some(1),
        created,
        spec: &spec,
        status: &planned.status,
        fire_annotation: None,
    });
});
