//! The run history: [`doomed`] decides, without a client, which finished runs
//! fall beyond the Connector's history limits; [`delete`] removes one.

use ferry_crds::{ConnectorRun, RunPhase};
use jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams};

use super::history::{phase, recorded};
use crate::context::Context;
use crate::error::{Error, Step, is_not_found};

/// How many finished runs a Connector keeps, and for how long at least.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Succeeded runs kept (the Connector's `successfulRunsHistoryLimit`).
    pub succeeded: usize,
    /// Failed and rejected runs kept (`failedRunsHistoryLimit`).
    pub failed: usize,
    /// The platform team's floor: a run that finished less than this long ago
    /// is kept whatever the limits say (its records are kept as long as the
    /// platform's policy asks).
    pub keep_for: Option<SignedDuration>,
}

/// The finished runs beyond the limits, given the runs newest first: the
/// newest `limits.succeeded` succeeded runs and the newest `limits.failed`
/// failed or rejected ones are kept, every run that finished within
/// `limits.keep_for` of `now`, and every run that has not ended.
pub fn doomed(runs: &[ConnectorRun], limits: Limits, now: Timestamp) -> Vec<String> {
    let (keep_succeeded, keep_failed) = (limits.succeeded, limits.failed);
    let (mut succeeded, mut failed) = (0usize, 0usize);
    let mut out = Vec::new();
    for run in runs {
        let keep = match phase(run) {
            Some(RunPhase::Succeeded) => {
                succeeded += 1;
                succeeded <= keep_succeeded
            }
            Some(RunPhase::Failed | RunPhase::Rejected) => {
                failed += 1;
                failed <= keep_failed
            }
            _ => true,
        };
        if !keep && !within(run, limits.keep_for, now) {
            out.push(run.name_any());
        }
    }
    out
}

/// Whether `run` finished less than `keep_for` before `now` (a run without a
/// completion time counts from its creation).
fn within(run: &ConnectorRun, keep_for: Option<SignedDuration>, now: Timestamp) -> bool {
    let Some(keep_for) = keep_for else {
        return false;
    };
    let ended = recorded(run)
        .and_then(|s| s.completion_time)
        .or_else(|| run.metadata.creation_timestamp.clone())
        .map(|t| t.0);
    ended.is_none_or(|t| now.duration_since(t) < keep_for)
}

/// Deletes a run (its pod and identity go with it, by owner reference); one
/// already gone is not an error.
pub async fn delete(ctx: &Context, namespace: &str, name: &str) -> Result<(), Error> {
    let api: Api<ConnectorRun> = Api::namespaced(ctx.client.clone(), namespace);
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(Error::kube(Step::Act, "delete", "ConnectorRun", name, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::super::history::test_run as run;
    use super::*;

    #[test]
    fn the_oldest_finished_runs_beyond_each_limit_go_and_active_runs_stay() {
        use RunPhase::*;
        let runs = [
            run("r6", Some(Running)),
            run("r5", Some(Succeeded)),
            run("r4", Some(Failed)),
            run("r3", Some(Succeeded)),
            run("r2", Some(Rejected)),
            run("r1", None),
            run("r0", Some(Succeeded)),
        ];
        let now = Timestamp::UNIX_EPOCH;
        let limits = |succeeded, failed| Limits {
            succeeded,
            failed,
            keep_for: None,
        };
        assert_eq!(doomed(&runs, limits(1, 1), now), vec!["r3", "r2", "r0"]);
        assert_eq!(
            doomed(&runs, limits(0, 0), now),
            vec!["r5", "r4", "r3", "r2", "r0"]
        );
        assert!(doomed(&runs, limits(3, 2), now).is_empty());
    }

    #[test]
    fn the_platform_floor_keeps_recent_runs_beyond_the_limits() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
        let ended = |name: &str, at: &str| {
            let mut r = run(name, Some(RunPhase::Succeeded));
            r.status.as_mut().expect("status").completion_time =
                Some(Time(at.parse().expect("time")));
            r
        };
        let runs = [
            ended("new", "2026-12-05T00:00:00Z"),
            ended("recent", "2026-11-20T00:00:00Z"),
            ended("old", "2026-10-01T00:00:00Z"),
        ];
        let now: Timestamp = "2026-12-06T00:00:00Z".parse().expect("now");
        let limits = Limits {
            succeeded: 1,
            failed: 1,
            // As the chart passes it (--keep-finished-runs-for 720h).
            keep_for: Some("720h".parse().expect("a duration")),
        };
        assert_eq!(doomed(&runs, limits, now), vec!["old"], "kept for 30 days");
        let none = Limits {
            keep_for: None,
            ..limits
        };
        assert_eq!(doomed(&runs, none, now), vec!["recent", "old"]);
    }
}
