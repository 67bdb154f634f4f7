//! Cron schedules, as a CronJob reads them: five fields (or a macro such as
//! `@daily`), in the Connector's `timeZone` (UTC when unset), and the rule for
//! start times missed while the operator was down.

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use jiff::Timestamp;
use jiff::tz::TimeZone;

/// Times further back than this many occurrences are not examined one by one
/// (CronJob stops at 100 too).
pub const MAX_MISSED: usize = 100;

/// Why a schedule is not usable.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ScheduleError {
    #[error("invalid schedule {schedule:?}: {reason}")]
    Cron { schedule: String, reason: String },
    #[error(
        "invalid schedule {0:?}: a time zone cannot be given in the schedule, use spec.timeZone"
    )]
    TimeZoneInSchedule(String),
    #[error("unknown time zone {0:?}: use an IANA name such as Europe/Paris")]
    TimeZone(String),
}

/// A parsed schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Cron,
    tz: TimeZone,
}

/// What the schedule asks for now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    /// The most recent scheduled time not yet started, if any.
    pub latest: Option<Timestamp>,
    /// Scheduled times before `latest` that will never start (missed), capped at
    /// [`MAX_MISSED`].
    pub skipped: usize,
    /// The next scheduled time after now.
    pub next: Option<Timestamp>,
}

impl Schedule {
    /// Parses a schedule and its time zone.
    pub fn parse(schedule: &str, time_zone: Option<&str>) -> Result<Self, ScheduleError> {
        let upper = schedule.trim().to_ascii_uppercase();
        if upper.starts_with("TZ=") || upper.starts_with("CRON_TZ=") {
            return Err(ScheduleError::TimeZoneInSchedule(schedule.to_string()));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .build()
            .parse(schedule)
            .map_err(|e| ScheduleError::Cron {
                schedule: schedule.to_string(),
                reason: e.to_string(),
            })?;
        let tz = match time_zone {
            None => TimeZone::UTC,
            Some(name) => TimeZone::get(name).map_err(|_| ScheduleError::TimeZone(name.into()))?,
        };
        Ok(Self { cron, tz })
    }

    /// The first scheduled time strictly after `t`.
    pub fn next_after(&self, t: Timestamp) -> Option<Timestamp> {
        let zoned = t.to_zoned(self.tz.clone());
        self.cron
            .find_next_occurrence(&zoned, false)
            .ok()
            .map(|z| z.timestamp())
    }

    /// What is due at `now`, given the last scheduled time that was acted on
    /// (or the Connector's creation) and an optional starting deadline: a
    /// scheduled time older than the deadline is missed, not started late.
    pub fn due(
        &self,
        last: Timestamp,
        now: Timestamp,
        starting_deadline_seconds: Option<i64>,
    ) -> Due {
        let next = self.next_after(now);
        let latest = self
            .cron
            .find_previous_occurrence(&now.to_zoned(self.tz.clone()), true)
            .ok()
            .map(|z| z.timestamp())
            .filter(|l| *l > last);
        let Some(latest) = latest else {
            return Due {
                latest: None,
                skipped: 0,
                next,
            };
        };
        // Count the times between `last` and `latest`, without walking a year of
        // minutes after a long outage.
        let mut skipped = 0;
        let mut t = last;
        while let Some(n) = self.next_after(t) {
            if n >= latest || skipped >= MAX_MISSED {
                break;
            }
            skipped += 1;
            t = n;
        }
        match starting_deadline_seconds {
            Some(deadline) if now.as_second() - latest.as_second() > deadline => Due {
                latest: None,
                skipped: (skipped + 1).min(MAX_MISSED),
                next,
            },
            _ => Due {
                latest: Some(latest),
                skipped,
                next,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    #[test]
    fn parses_cron_and_macros_and_refuses_garbage() {
        assert!(Schedule::parse("0 2 * * *", None).is_ok());
        assert!(Schedule::parse("@hourly", None).is_ok());
        assert!(Schedule::parse("*/15 * * * MON-FRI", Some("Europe/Paris")).is_ok());
        assert!(matches!(
            Schedule::parse("61 * * * *", None),
            Err(ScheduleError::Cron { .. })
        ));
        assert!(
            matches!(
                Schedule::parse("0 0 2 * * *", None),
                Err(ScheduleError::Cron { .. })
            ),
            "no seconds field"
        );
        assert!(matches!(
            Schedule::parse("not a cron", None),
            Err(ScheduleError::Cron { .. })
        ));
        assert_eq!(
            Schedule::parse("CRON_TZ=UTC 0 2 * * *", None).unwrap_err(),
            ScheduleError::TimeZoneInSchedule("CRON_TZ=UTC 0 2 * * *".into())
        );
        assert_eq!(
            Schedule::parse("0 2 * * *", Some("Mars/Olympus")).unwrap_err(),
            ScheduleError::TimeZone("Mars/Olympus".into())
        );
    }

    #[test]
    fn next_time_follows_the_time_zone() {
        let s = Schedule::parse("0 2 * * *", Some("Europe/Paris")).unwrap();
        // 02:00 in Paris in winter is 01:00 UTC.
        assert_eq!(
            s.next_after(ts("2026-01-10T12:00:00Z")),
            Some(ts("2026-01-11T01:00:00Z"))
        );
        let utc = Schedule::parse("0 2 * * *", None).unwrap();
        assert_eq!(
            utc.next_after(ts("2026-01-10T12:00:00Z")),
            Some(ts("2026-01-11T02:00:00Z"))
        );
    }

    #[test]
    fn due_takes_the_latest_time_and_counts_the_missed_ones() {
        let s = Schedule::parse("0 * * * *", None).unwrap();
        let due = s.due(ts("2026-01-10T00:00:00Z"), ts("2026-01-10T03:30:00Z"), None);
        assert_eq!(due.latest, Some(ts("2026-01-10T03:00:00Z")));
        assert_eq!(due.skipped, 2, "01:00 and 02:00 were missed");
        assert_eq!(due.next, Some(ts("2026-01-10T04:00:00Z")));

        let nothing = s.due(ts("2026-01-10T03:00:00Z"), ts("2026-01-10T03:30:00Z"), None);
        assert_eq!(nothing.latest, None);
        assert_eq!(nothing.skipped, 0);
    }

    #[test]
    fn a_start_later_than_the_deadline_is_missed() {
        let s = Schedule::parse("0 * * * *", None).unwrap();
        let late = s.due(
            ts("2026-01-10T02:00:00Z"),
            ts("2026-01-10T03:30:00Z"),
            Some(600),
        );
        assert_eq!(late.latest, None);
        assert_eq!(late.skipped, 1);
        let in_time = s.due(
            ts("2026-01-10T02:00:00Z"),
            ts("2026-01-10T03:05:00Z"),
            Some(600),
        );
        assert_eq!(in_time.latest, Some(ts("2026-01-10T03:00:00Z")));
    }

    #[test]
    fn a_long_outage_is_capped() {
        let s = Schedule::parse("* * * * *", None).unwrap();
        let due = s.due(ts("2026-01-01T00:00:00Z"), ts("2026-01-10T00:00:00Z"), None);
        assert_eq!(due.latest, Some(ts("2026-01-10T00:00:00Z")));
        assert_eq!(due.skipped, MAX_MISSED);
    }
}
