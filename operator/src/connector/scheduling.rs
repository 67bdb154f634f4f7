//! The schedule, as a decision and its effects. [`decide`] is pure: from the
//! schedule, the last time acted on, now and the runs, it says which run to
//! start (or why none), which runs `Replace` ends, and what the status records.
//! [`start`] carries out the run part of a decision; it comes before the
//! status write, and is safe to repeat when that write fails: the run's name is
//! derived from its scheduled time.

use std::collections::BTreeMap;
use std::time::Duration;

use ferry_crds::{
    CREATED_BY_ANNOTATION, ConcurrencyPolicy, Connector, ConnectorRef, ConnectorRun,
    ConnectorRunSpec, RunMode,
};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};

use super::history::is_active;
use super::prune;
use crate::context::Context;
use crate::error::{Error, Step, is_already_exists};
use crate::names;
use crate::schedule::Schedule;

/// How soon a run held back by `Forbid` is looked at again.
pub const HELD_BACK_RETRY: Duration = Duration::from_secs(10);

/// What a Connector's schedule is asked about.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    pub connector: &'a str,
    pub schedule: &'a Schedule,
    pub policy: ConcurrencyPolicy,
    pub starting_deadline_seconds: Option<i64>,
    /// The last scheduled time acted on, or the Connector's creation.
    pub last: Timestamp,
    pub now: Timestamp,
    /// The Connector's runs, newest first.
    pub runs: &'a [ConnectorRun],
}

/// Which scheduled run to start now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// Nothing is due.
    Nothing,
    /// The run due at `at` exists already (an earlier reconcile created it).
    Exists { at: Timestamp },
    /// Create `run` for `at`, after deleting the active runs in `replace`
    /// (`concurrencyPolicy: Replace`).
    Create {
        at: Timestamp,
        run: String,
        replace: Vec<String>,
    },
    /// `concurrencyPolicy: Forbid` holds the run due at `at` back while the
    /// runs in `active` have not ended: try again soon, until the starting
    /// deadline passes.
    HeldBack { at: Timestamp, active: Vec<String> },
}

/// What the schedule decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub start: Start,
    /// The new `lastScheduleTime`, when the schedule moved on.
    pub last_schedule_time: Option<Timestamp>,
    /// Scheduled times that will never start, counted once: when the schedule
    /// moves past them.
    pub missed: usize,
    /// The next scheduled time.
    pub next: Option<Timestamp>,
}

impl Decision {
    /// When to look at the Connector again, for the schedule's sake.
    pub fn requeue_after(&self, now: Timestamp) -> Option<Duration> {
        if matches!(self.start, Start::HeldBack { .. }) {
            return Some(HELD_BACK_RETRY);
        }
        self.next
            .map(|next| Duration::from_secs((next.as_second() - now.as_second()).max(1) as u64))
    }

    /// [`Decision::requeue_after`] as a controller action.
    pub fn requeue(&self, now: Timestamp) -> Action {
        self.requeue_after(now)
            .map_or(Action::await_change(), Action::requeue)
    }
}

/// Decides what the schedule asks for at `now`.
pub fn decide(i: Inputs<'_>) -> Decision {
    let due = i.schedule.due(i.last, i.now, i.starting_deadline_seconds);
    let (start, moved_to) = match due.latest {
        Some(at) => {
            let start = start_at(&i, at);
            let moved = !matches!(start, Start::HeldBack { .. });
            (start, moved.then_some(at))
        }
        // Every due time is past its deadline: remember the latest as handled.
        None if due.skipped > 0 => {
            let latest_missed = i.schedule.due(i.last, i.now, None).latest.unwrap_or(i.now);
            (Start::Nothing, Some(latest_missed))
        }
        None => (Start::Nothing, None),
    };
    Decision {
        start,
        missed: if moved_to.is_some() { due.skipped } else { 0 },
        last_schedule_time: moved_to,
        next: due.next,
    }
}

fn start_at(i: &Inputs<'_>, at: Timestamp) -> Start {
    let run = names::scheduled_run(i.connector, at.as_second());
    if i.runs.iter().any(|r| r.name_any() == run) {
        return Start::Exists { at };
    }
    let active: Vec<String> = i
        .runs
        .iter()
        .filter(|r| is_active(r))
        .map(|r| r.name_any())
        .collect();
    match i.policy {
        ConcurrencyPolicy::Forbid if !active.is_empty() => Start::HeldBack { at, active },
        ConcurrencyPolicy::Replace => Start::Create {
            at,
            run,
            replace: active,
        },
        _ => Start::Create {
            at,
            run,
            replace: Vec::new(),
        },
    }
}

/// Carries out the run part of a decision: deletes the runs it replaces, then
/// creates its run. Returns the created run, if any.
pub async fn start(
    ctx: &Context,
    connector: &Connector,
    start: &Start,
) -> Result<Option<ConnectorRun>, Error> {
    let (namespace, name) = (
        connector.namespace().unwrap_or_default(),
        connector.name_any(),
    );
    let reference = connector.object_ref(&());
    match start {
        Start::HeldBack { active, .. } => {
            tracing::info!(namespace, connector = name, active = ?active, "scheduled run held back: concurrencyPolicy Forbid");
            Ok(None)
        }
        Start::Nothing | Start::Exists { .. } => Ok(None),
        Start::Create { at, run, replace } => {
            for old in replace {
                prune::delete(ctx, &namespace, old).await?;
                let note = format!("deleted active run {old} (concurrencyPolicy Replace)");
                ctx.event(&reference, false, "RunReplaced", "Schedule", note)
                    .await;
            }
            let api: Api<ConnectorRun> = Api::namespaced(ctx.client.clone(), &namespace);
            let mut new = new_run(connector, run, *at);
            if let Some(identity) = ctx
                .config
                .user_name
                .as_ref()
                .filter(|_| ctx.config.record_requesters)
            {
                // The schedule's runs are the operator's requests: said the way
                // the admission policies say a person's.
                new.annotations_mut()
                    .insert(CREATED_BY_ANNOTATION.to_string(), identity.clone());
            }
            match api.create(&PostParams::default(), &new).await {
                Ok(created) => {
                    let note = format!("created run {run} for {at}");
                    ctx.event(&reference, false, "RunCreated", "Schedule", note)
                        .await;
                    Ok(Some(created))
                }
                Err(e) if is_already_exists(&e) => Ok(None),
                Err(e) => Err(Error::kube(Step::Act, "create", "ConnectorRun", run, e)),
            }
        }
    }
}

/// The ConnectorRun `name` that the schedule starts at `at`: owned by the
/// Connector, labelled with it, and marked with its scheduled time.
pub fn new_run(connector: &Connector, name: &str, at: Timestamp) -> ConnectorRun {
    let connector_name = connector.name_any();
    let labels = BTreeMap::from([
        (
            names::LABEL_CONNECTOR.to_string(),
            names::label_value(&connector_name),
        ),
        (
            names::LABEL_MANAGED_BY.to_string(),
            names::MANAGED_BY.to_string(),
        ),
    ]);
    ConnectorRun {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: connector.namespace(),
            labels: Some(labels),
            annotations: Some(BTreeMap::from([(
                names::ANNOTATION_SCHEDULED_AT.to_string(),
                at.to_string(),
            )])),
            owner_references: connector.controller_owner_ref(&()).map(|o| vec![o]),
            ..Default::default()
        },
        spec: ConnectorRunSpec {
            connector_ref: ConnectorRef {
                name: connector_name,
            },
            mode: RunMode::Sync,
            erase: None,
        },
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::history::test_run as run;
    use super::*;
    use ferry_crds::RunPhase;

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    fn hourly() -> Schedule {
        Schedule::parse("0 * * * *", None).expect("schedule")
    }

    fn inputs<'a>(
        schedule: &'a Schedule,
        runs: &'a [ConnectorRun],
        policy: ConcurrencyPolicy,
    ) -> Inputs<'a> {
        Inputs {
            connector: "sales",
            schedule,
            policy,
            starting_deadline_seconds: None,
            last: ts("2026-11-23T10:00:00Z"),
            now: ts("2026-11-23T11:00:30Z"),
            runs,
        }
    }

    #[test]
    fn a_due_time_creates_its_run_once() {
        let s = hourly();
        let d = decide(inputs(&s, &[], ConcurrencyPolicy::Allow));
        let at = ts("2026-11-23T11:00:00Z");
        let name = names::scheduled_run("sales", at.as_second());
        assert_eq!(
            d.start,
            Start::Create {
                at,
                run: name.clone(),
                replace: vec![]
            }
        );
        assert_eq!(d.last_schedule_time, Some(at));
        assert_eq!(d.next, Some(ts("2026-11-23T12:00:00Z")));
        assert_eq!(
            d.requeue(ts("2026-11-23T11:00:30Z")),
            Action::requeue(Duration::from_secs(3570))
        );
        // Seen again (a status write failed): the run exists, nothing is created.
        let runs = [run(&name, None)];
        let again = decide(inputs(&s, &runs, ConcurrencyPolicy::Allow));
        assert_eq!(again.start, Start::Exists { at });
        assert_eq!(again.last_schedule_time, Some(at));
    }

    #[test]
    fn forbid_holds_back_without_moving_on_and_replace_names_the_runs_it_ends() {
        let s = hourly();
        let runs = [
            run("old", Some(RunPhase::Running)),
            run("done", Some(RunPhase::Succeeded)),
        ];
        let held = decide(inputs(&s, &runs, ConcurrencyPolicy::Forbid));
        assert!(
            matches!(&held.start, Start::HeldBack { active, .. } if active == &["old".to_string()])
        );
        assert_eq!(held.last_schedule_time, None);
        assert_eq!(
            held.requeue(ts("2026-11-23T11:00:30Z")),
            Action::requeue(HELD_BACK_RETRY)
        );
        let replaced = decide(inputs(&s, &runs, ConcurrencyPolicy::Replace));
        assert!(
            matches!(&replaced.start, Start::Create { replace, .. } if replace == &["old".to_string()])
        );
    }

    #[test]
    fn times_past_the_deadline_are_missed_once_and_not_started() {
        let s = hourly();
        let mut i = inputs(&s, &[], ConcurrencyPolicy::Allow);
        i.last = ts("2026-11-23T07:00:00Z");
        i.starting_deadline_seconds = Some(10);
        let d = decide(i);
        assert_eq!(d.start, Start::Nothing);
        assert_eq!(d.missed, 4, "08:00, 09:00, 10:00 and 11:00");
        assert_eq!(d.last_schedule_time, Some(ts("2026-11-23T11:00:00Z")));
        // Held back, nothing is counted yet: the times are counted when passed.
        let runs = [run("old", Some(RunPhase::Running))];
        let mut i = inputs(&s, &runs, ConcurrencyPolicy::Forbid);
        i.last = ts("2026-11-23T08:00:00Z");
        let held = decide(i);
        assert!(matches!(held.start, Start::HeldBack { .. }));
        assert_eq!(held.missed, 0);
    }

    #[test]
    fn a_scheduled_run_is_owned_by_and_labelled_with_its_connector() {
        let c: Connector = serde_json::from_value(serde_json::json!({
            "apiVersion": "ferry.dev/v1alpha1", "kind": "Connector",
            "metadata": {"name": "sales", "namespace": "acme", "uid": "u1"},
            "spec": {
                "source": {"s3": {"bucket": "b", "region": "eu-west-1", "credentials": {"secretRef": {"name": "s"}}}},
                "destination": {"s3": {"bucket": "d", "region": "eu-west-1", "credentials": {"secretRef": {"name": "s"}}}},
                "encryption": {"keyRef": {"secretRef": {"name": "k"}}},
            },
        }))
        .expect("connector");
        let r = new_run(&c, "sales-1", ts("2026-11-23T11:00:00Z"));
        assert_eq!(r.namespace().as_deref(), Some("acme"));
        assert_eq!(r.spec.connector_ref.name, "sales");
        assert_eq!(r.owner_references()[0].uid, "u1");
        assert_eq!(r.labels()[names::LABEL_CONNECTOR], "sales");
    }
}
