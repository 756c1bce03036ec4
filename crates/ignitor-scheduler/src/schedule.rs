//! What `spec.scheduled` means: `NOW`, one RFC 3339 time, or a cron schedule in a time zone.

use std::str::FromStr;

use croner::Cron;
use croner::parser::{CronParser, Seconds};
use jiff::Timestamp;
use jiff::tz::TimeZone;

/// A parsed schedule.
#[derive(Debug, Clone)]
pub enum Schedule {
    /// Fire once, as soon as possible.
    Now,
    /// Fire once at this time.
    At(Timestamp),
    /// Fire at every occurrence of the pattern in the time zone.
    Cron {
        /// The pattern.
        cron: Box<Cron>,
        /// The zone its wall-clock fields are read in.
        zone: TimeZone,
    },
}

/// Why a schedule cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// Neither NOW, a time nor a valid cron pattern.
    #[error("invalid schedule {schedule:?}: {message}")]
    InvalidSchedule {
        /// What was written.
        schedule: String,
        /// The parser's message.
        message: String,
    },
    /// The time zone is not in the IANA database.
    #[error("unknown time zone {zone:?}: {message}")]
    UnknownTimeZone {
        /// What was written.
        zone: String,
        /// The lookup's message.
        message: String,
    },
    /// A valid pattern that matches no date (e.g. 30 February).
    #[error("cron schedule {schedule:?} never fires")]
    NeverFires {
        /// What was written.
        schedule: String,
    },
}

impl ScheduleError {
    /// Stable reason for conditions, Events and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            ScheduleError::InvalidSchedule { .. } => "InvalidSchedule",
            ScheduleError::UnknownTimeZone { .. } => "UnknownTimeZone",
            ScheduleError::NeverFires { .. } => "NeverFires",
        }
    }
}

/// How far ahead a cron schedule is searched for an occurrence before it "never fires".
const SEARCH_YEARS: i16 = 8;

impl Schedule {
    /// Parses `scheduled`, reading cron fields in `time_zone` (UTC when absent).
    pub fn parse(scheduled: &str, time_zone: Option<&str>, now: Timestamp) -> Result<Self, ScheduleError> {
        let scheduled = scheduled.trim();
        if scheduled == "NOW" {
            return Ok(Schedule::Now);
        }
        let looks_like_time =
            scheduled.len() >= 10 && scheduled.as_bytes()[4] == b'-' && scheduled.as_bytes()[7] == b'-';
        if looks_like_time {
            return Timestamp::from_str(scheduled)
                .map(Schedule::At)
                .map_err(|err| ScheduleError::InvalidSchedule {
                    schedule: scheduled.into(),
                    message: err.to_string(),
                });
        }
        let zone = match time_zone {
            None => TimeZone::UTC,
            Some(name) => TimeZone::get(name).map_err(|err| ScheduleError::UnknownTimeZone {
                zone: name.into(),
                message: err.to_string(),
            })?,
        };
        let pattern = match scheduled {
            // croner has no @midnight; it is @daily.
            "@midnight" => "@daily",
            other => other,
        };
        // croner reads an empty item of a list (`* , * * *`) as one that matches nothing and
        // then searches for seconds before it gives up: refuse it here, at once.
        if pattern
            .split_whitespace()
            .any(|field| field.split(',').any(str::is_empty))
        {
            return Err(ScheduleError::InvalidSchedule {
                schedule: scheduled.into(),
                message: "a field has an empty item in its comma-separated list".into(),
            });
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .build()
            .parse(pattern)
            .map_err(|err| ScheduleError::InvalidSchedule {
                schedule: scheduled.into(),
                message: err.to_string(),
            })?;
        let schedule = Schedule::Cron {
            cron: Box::new(cron),
            zone,
        };
        let horizon = now
            .to_zoned(TimeZone::UTC)
            .saturating_add(jiff::Span::new().years(SEARCH_YEARS));
        match schedule.next_after(now) {
            Some(next) if next <= horizon.timestamp() => Ok(schedule),
            _ => Err(ScheduleError::NeverFires {
                schedule: scheduled.into(),
            }),
        }
    }

    /// The first occurrence strictly after `after` (cron schedules only).
    pub fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        match self {
            Schedule::Cron { cron, zone } => cron
                .find_next_occurrence(&after.to_zoned(zone.clone()), false)
                .ok()
                .map(|z| z.timestamp()),
            _ => None,
        }
    }

    /// Occurrences in `(after, until]`: how many (counting at most `cap`) and the latest.
    pub fn due_between(&self, after: Timestamp, until: Timestamp, cap: u32) -> (u32, Option<Timestamp>) {
        let Schedule::Cron { cron, zone } = self else {
            return (0, None);
        };
        let mut count = 0;
        let mut cursor = after;
        while count < cap {
            match self.next_after(cursor) {
                Some(next) if next <= until => {
                    count += 1;
                    cursor = next;
                }
                _ => return (count, (count > 0).then_some(cursor)),
            }
        }
        // Past the cap only the latest matters: jump to it rather than walking every one.
        let latest = cron
            .find_previous_occurrence(&until.to_zoned(zone.clone()), true)
            .ok()
            .map(|z| z.timestamp())
            .or(Some(cursor));
        (count, latest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().expect("timestamp literal")
    }

    #[test]
    fn now_and_times_and_cron() {
        let now = t("2026-01-01T00:00:00Z");
        assert!(matches!(Schedule::parse("NOW", None, now), Ok(Schedule::Now)));
        assert!(
            matches!(Schedule::parse("2020-02-03T19:34:05Z", None, now), Ok(Schedule::At(at)) if at == t("2020-02-03T19:34:05Z"))
        );
        let cron = Schedule::parse("5 * * * *", None, now).expect("ORCA's cron example");
        assert_eq!(cron.next_after(now), Some(t("2026-01-01T00:05:00Z")));
    }

    #[test]
    fn an_optional_seconds_field_and_macros() {
        let now = t("2026-01-01T00:00:00Z");
        let every_ten_seconds = Schedule::parse("*/10 * * * * *", None, now).expect("6 fields");
        assert_eq!(every_ten_seconds.next_after(now), Some(t("2026-01-01T00:00:10Z")));
        let hourly = Schedule::parse("@hourly", None, now).expect("macro");
        assert_eq!(hourly.next_after(now), Some(t("2026-01-01T01:00:00Z")));
        let midnight = Schedule::parse("@midnight", None, now).expect("macro");
        assert_eq!(midnight.next_after(now), Some(t("2026-01-02T00:00:00Z")));
    }

    #[test]
    fn five_fields_read_as_minute_hour_day_month_weekday() {
        // The `cron` crate would read this as seconds-first; standard cron is minute-first.
        let now = t("2026-01-01T00:00:00Z"); // a Thursday
        let schedule = Schedule::parse("30 9 * * MON", None, now).expect("valid");
        assert_eq!(schedule.next_after(now), Some(t("2026-01-05T09:30:00Z")));
    }

    #[test]
    fn an_empty_list_item_is_refused_at_once() {
        // Found by fuzzing: croner took seconds to find that `,` matches nothing.
        let now = t("2026-01-01T00:00:00Z");
        for pattern in ["* , * * *", "0 1,,2 * * *", "0,5, * * * *", ",0 * * * *"] {
            // Before, this was NeverFires, reached only after the long search.
            let err = Schedule::parse(pattern, None, now).expect_err(pattern);
            assert_eq!(err.reason(), "InvalidSchedule", "{pattern}");
        }
        assert!(Schedule::parse("0 1,2 * * *", None, now).is_ok());
    }

    #[test]
    fn time_zones_shift_wall_clock_fields() {
        let now = t("2026-07-01T00:00:00Z");
        let schedule = Schedule::parse("0 9 * * *", Some("Europe/Amsterdam"), now).expect("valid");
        // 09:00 in Amsterdam in summer (UTC+2) is 07:00 UTC.
        assert_eq!(schedule.next_after(now), Some(t("2026-07-01T07:00:00Z")));
    }

    #[test]
    fn bad_input_names_what_is_wrong() {
        let now = t("2026-01-01T00:00:00Z");
        let err = Schedule::parse("61 * * * *", None, now).expect_err("minute out of range");
        assert_eq!(err.reason(), "InvalidSchedule");
        assert!(err.to_string().contains("61 * * * *"), "{err}");
        let err = Schedule::parse("* * * * *", Some("Mars/Olympus_Mons"), now).expect_err("no such zone");
        assert_eq!(err.reason(), "UnknownTimeZone");
        let err = Schedule::parse("0 0 30 2 *", None, now).expect_err("30 February");
        assert_eq!(err.reason(), "NeverFires");
        let err = Schedule::parse("2026-02-30T00:00:00Z", None, now).expect_err("no such day");
        assert_eq!(err.reason(), "InvalidSchedule");
    }

    #[test]
    fn due_between_counts_and_finds_the_latest_without_walking_forever() {
        let now = t("2026-01-01T00:00:00Z");
        let every_minute = Schedule::parse("* * * * *", None, now).expect("valid");
        let (count, latest) = every_minute.due_between(now, t("2026-01-01T00:03:30Z"), 100);
        assert_eq!((count, latest), (3, Some(t("2026-01-01T00:03:00Z"))));
        let (count, latest) = every_minute.due_between(now, t("2026-01-08T00:00:30Z"), 100);
        assert_eq!((count, latest), (100, Some(t("2026-01-08T00:00:00Z"))));
        assert_eq!(every_minute.due_between(now, now, 100), (0, None));
    }
}
