//! What the schema cannot check about a Connector: its schedule and time zone,
//! its Secrets and the tenant's rules. The verdict is the Ready condition; a
//! Connector that breaks a rule still schedules its runs, which the run
//! controller then rejects (each rejection audited).

use ferry_crds::ConnectorSpec;

use crate::context::Context;
use crate::dereference;
use crate::error::Error;
use crate::policy::{self, Settings, Violation};
use crate::schedule::{Schedule, ScheduleError};

/// The Ready condition of a Connector.
#[derive(Debug, Clone, PartialEq)]
pub struct Readiness {
    pub ready: bool,
    pub reason: &'static str,
    pub message: String,
}

/// A Connector as far as it could be validated.
#[derive(Debug, Clone)]
pub struct Validated {
    /// The schedule, when there is one and it is valid.
    pub schedule: Option<Schedule>,
    pub readiness: Readiness,
}

/// Reads what the checks look at (the tenant's rules, which keys the Secrets
/// hold) and judges the spec.
pub async fn validate(
    ctx: &Context,
    namespace: &str,
    spec: &ConnectorSpec,
) -> Result<Validated, Error> {
    let schedule = spec
        .schedule
        .as_deref()
        .map(|s| Schedule::parse(s, spec.time_zone.as_deref()))
        .transpose();
    let tenant = dereference::tenant(ctx, namespace);
    let secrets = dereference::secret_keys(ctx, namespace, spec).await?;
    let (violations, _) = policy::check(spec, &tenant, &secrets, Settings::of(&ctx.config));
    Ok(judge(schedule, &violations))
}

/// The verdict on a parsed schedule and the rules the spec breaks: an invalid
/// schedule first, then every violation, in one message.
pub fn judge(
    schedule: Result<Option<Schedule>, ScheduleError>,
    violations: &[Violation],
) -> Validated {
    let readiness = match (&schedule, violations.first()) {
        (Err(e), _) => Readiness {
            ready: false,
            reason: "InvalidSchedule",
            message: e.to_string(),
        },
        (_, Some(first)) => Readiness {
            ready: false,
            reason: first.reason,
            message: violations
                .iter()
                .map(|v| v.message.as_str())
                .collect::<Vec<_>>()
                .join("; "),
        },
        (Ok(Some(_)), None) => Readiness {
            ready: true,
            reason: "Scheduled",
            message: "runs start on schedule".to_string(),
        },
        (Ok(None), None) => Readiness {
            ready: true,
            reason: "Ready",
            message: "runs start when a ConnectorRun is created".to_string(),
        },
    };
    Validated {
        schedule: schedule.ok().flatten(),
        readiness,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invalid_schedule_is_reported_before_any_violation_and_schedules_nothing() {
        let v = judge(
            Schedule::parse("every day", None).map(Some),
            &[Violation {
                reason: "SecretNotFound",
                message: "secret x not found".into(),
            }],
        );
        assert!(!v.readiness.ready);
        assert_eq!(v.readiness.reason, "InvalidSchedule");
        assert!(v.schedule.is_none());
    }

    #[test]
    fn every_violation_is_named_and_the_schedule_still_holds() {
        let violations = [
            Violation {
                reason: "SecretNotFound",
                message: "a".into(),
            },
            Violation {
                reason: "ResidencyViolation",
                message: "b".into(),
            },
        ];
        let v = judge(Schedule::parse("@daily", None).map(Some), &violations);
        assert_eq!(
            v.readiness,
            Readiness {
                ready: false,
                reason: "SecretNotFound",
                message: "a; b".into()
            }
        );
        assert!(v.schedule.is_some());
    }

    #[test]
    fn without_a_schedule_runs_start_by_hand() {
        let v = judge(Ok(None), &[]);
        assert!(v.readiness.ready);
        assert_eq!(v.readiness.reason, "Ready");
    }
}
