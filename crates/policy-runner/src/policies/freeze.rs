//! `freeze`: no change inside a window: what is in force stays (an Application's traffic, or
//! the spec a Project, Cluster or VirtualCluster applies), whatever earlier steps want.
//! Outside every window it passes its input on.
//!
//! | parameter | meaning | default |
//! |---|---|---|
//! | `windows` | `[{start, end}]`, RFC 3339 times | none |
//! | `daily` | `[{start: "22:00", end: "06:00"}]`, each day (an end before the start is the next day) | none |
//! | `timeZone` | IANA name the daily windows are in | `UTC` |

use crd_types::common::Parameters;
use jiff::civil::Time;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};
use serde::Deserialize;

use crate::policy::{Answer, Document, Failure, Outcome, Phase, Policy, Step, parameters};

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Raw {
    #[serde(default)]
    windows: Vec<Window>,
    #[serde(default)]
    daily: Vec<Daily>,
    #[serde(default = "utc")]
    time_zone: String,
}

fn utc() -> String {
    "UTC".to_owned()
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Window {
    start: Timestamp,
    end: Timestamp,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Daily {
    start: Time,
    end: Time,
}

/// The parsed parameters.
#[derive(Clone, Debug)]
pub struct Freeze {
    raw: Raw,
    zone: TimeZone,
}

/// Parses `freeze`'s parameters.
///
/// # Errors
///
/// Unknown parameters, no window, a window ending before it starts, or an unknown time zone.
pub fn parse<D: Document>(given: &Parameters) -> Result<Box<dyn Policy<D>>, Failure> {
    let raw: Raw = parameters(given)?;
    if raw.windows.is_empty() && raw.daily.is_empty() {
        return Err(Failure::new(
            "InvalidParameters",
            "a freeze needs windows or daily windows",
        ));
    }
    if let Some(w) = raw.windows.iter().find(|w| w.end <= w.start) {
        return Err(Failure::new(
            "InvalidParameters",
            format!("window {} to {} ends before it starts", w.start, w.end),
        ));
    }
    let zone = TimeZone::get(&raw.time_zone)
        .map_err(|error| Failure::new("InvalidParameters", format!("timeZone {:?}: {error}", raw.time_zone)))?;
    Ok(Box::new(Freeze { raw, zone }))
}

impl Freeze {
    /// The end of the window `now` is in, if it is in one.
    fn frozen_until(&self, now: Timestamp) -> Option<Timestamp> {
        let absolute = self
            .raw
            .windows
            .iter()
            .filter(|w| w.start <= now && now < w.end)
            .map(|w| w.end);
        let today = now.to_zoned(self.zone.clone()).date();
        let daily = self.raw.daily.iter().flat_map(|d| {
            // A window that started yesterday may still be open.
            [today.yesterday().ok(), Some(today)]
                .into_iter()
                .flatten()
                .filter_map(move |day| {
                    let start = day.to_datetime(d.start).to_zoned(self.zone.clone()).ok()?;
                    let end_day = if d.end > d.start {
                        day
                    } else {
                        day.checked_add(1.day()).ok()?
                    };
                    let end = end_day.to_datetime(d.end).to_zoned(self.zone.clone()).ok()?;
                    (start.timestamp() <= now && now < end.timestamp()).then(|| end.timestamp())
                })
        });
        absolute.chain(daily).max()
    }
}

impl<D: Document> Policy<D> for Freeze {
    fn run(&self, step: &Step<'_, D>, _: Option<Answer>) -> Result<Outcome<D>, Failure> {
        Ok(match self.frozen_until(step.now) {
            Some(until) => Outcome::pass(
                D::held(step.input, step.observed),
                Phase::Holding,
                format!("frozen until {until}: {} stays", D::IN_FORCE),
            )
            .waking_at(Some(until)),
            None => Outcome::pass(step.input.clone(), Phase::Succeeded, "not frozen"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::split;
    use crate::testing::{answer, at, observed, params};
    use crd_types::hierarchy::TrafficDocument;
    use serde_json::json;

    fn freeze_at(p: serde_json::Value, now: Timestamp) -> Outcome {
        let world = observed(&[("v1", 1, 1), ("v2", 1, 1)], &[("v1", 90), ("v2", 10)]);
        let input = TrafficDocument {
            weights: split("v1", "v2", 20),
            ..TrafficDocument::default()
        };
        answer(
            &*parse::<TrafficDocument>(&params(p)).unwrap(),
            &input,
            &world,
            None,
            now,
            Default::default(),
            None,
        )
        .unwrap()
    }

    #[test]
    fn inside_a_window_the_traffic_in_force_stays_until_it_ends() {
        let p = json!({"windows": [{"start": at(0).to_string(), "end": at(100).to_string()}]});
        let inside = freeze_at(p.clone(), at(50));
        assert_eq!(inside.phase, Phase::Holding);
        assert_eq!(inside.output.weights, split("v1", "v2", 10));
        assert_eq!(inside.wake_at, Some(at(100)));
        let after = freeze_at(p, at(100));
        assert_eq!(after.output.weights, split("v1", "v2", 20));
    }

    #[test]
    fn a_daily_window_over_midnight_in_a_time_zone() {
        let p = json!({"daily": [{"start": "22:00", "end": "06:00"}], "timeZone": "Europe/Amsterdam"});
        let zone = TimeZone::get("Europe/Amsterdam").unwrap();
        let local = |text: &str| {
            text.parse::<jiff::civil::DateTime>()
                .unwrap()
                .to_zoned(zone.clone())
                .unwrap()
                .timestamp()
        };
        let night = freeze_at(p.clone(), local("2027-03-02T02:00"));
        assert_eq!(night.phase, Phase::Holding);
        assert_eq!(night.wake_at, Some(local("2027-03-02T06:00")));
        assert_eq!(
            freeze_at(p.clone(), local("2027-03-02T23:00")).wake_at,
            Some(local("2027-03-03T06:00"))
        );
        assert_eq!(freeze_at(p, local("2027-03-02T12:00")).phase, Phase::Succeeded);
    }

    #[test]
    fn refuses_no_window_a_backwards_one_or_an_unknown_zone() {
        assert!(parse::<TrafficDocument>(&params(json!({}))).is_err());
        let backwards = json!({"windows": [{"start": at(10).to_string(), "end": at(0).to_string()}]});
        assert!(
            parse::<TrafficDocument>(&params(backwards))
                .unwrap_err()
                .message
                .contains("ends before")
        );
        let zone = json!({"daily": [{"start": "01:00", "end": "02:00"}], "timeZone": "Mars/Olympus"});
        assert!(
            parse::<TrafficDocument>(&params(zone))
                .unwrap_err()
                .message
                .contains("Mars/Olympus")
        );
    }
}
