//! Connector reconciles against the fake API: schedules, concurrency policies,
//! suspension, history pruning and the checks the schema cannot make.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use ferry_crds::{ConnectorRun, RunPhase};
use kube::api::{Patch, PatchParams};
use serde_json::json;
use support::*;

/// Every hour, created at 10:00; the test clock starts at 10:00.
fn hourly(policy: &str) -> String {
    format!("{CONNECTOR}  schedule: '0 * * * *'\n  concurrencyPolicy: {policy}\n")
}

async fn set_run_phase(w: &World, run: &str, phase: &str) {
    let patch = json!({"status": {"phase": phase, "completionTime": w.ctx.now().to_string()}});
    w.runs()
        .patch_status(run, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

async fn all_runs(w: &World) -> Vec<ConnectorRun> {
    w.runs().list(&Default::default()).await.unwrap().items
}

async fn world_with(yaml: &str) -> World {
    let w = World::new(namespace(Some("eu-west-1"), None)).await;
    let mut c = connector(yaml);
    c.metadata.creation_timestamp = None;
    w.connectors()
        .create(&Default::default(), &c)
        .await
        .unwrap();
    // The fake API stamps creation with the wall clock; pin it to the test clock.
    let patch = json!({"status": {"lastScheduleTime": "2026-11-23T10:00:00Z"}});
    w.connectors()
        .patch_status("sales", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    w
}

#[tokio::test]
async fn a_schedule_tick_creates_one_run_owned_by_the_connector() {
    let w = world_with(&hourly("Forbid")).await;
    let c = w.reconcile_connector("sales").await;
    assert!(all_runs(&w).await.is_empty(), "nothing due at 10:00");
    let status = c.status.unwrap();
    assert_eq!(
        status.next_schedule_time.unwrap().0.to_string(),
        "2026-11-23T11:00:00Z"
    );
    assert!(
        status
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True" && c.reason == "Scheduled")
    );

    w.advance(3600 + 5);
    let c = w.reconcile_connector("sales").await;
    let runs = all_runs(&w).await;
    assert_eq!(names(&runs), ["sales-29923860"]);
    let run = &runs[0];
    let owner = &run.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.controller),
        ("Connector", "sales", Some(true))
    );
    assert_eq!(
        run.metadata.annotations.as_ref().unwrap()["ferry.dev/scheduled-at"],
        "2026-11-23T11:00:00Z"
    );
    assert_eq!(
        c.status.unwrap().last_schedule_time.unwrap().0.to_string(),
        "2026-11-23T11:00:00Z"
    );

    // The same tick again creates nothing more.
    w.reconcile_connector("sales").await;
    assert_eq!(all_runs(&w).await.len(), 1);
}

#[tokio::test]
async fn forbid_holds_the_next_run_back_while_one_is_active() {
    let w = world_with(&hourly("Forbid")).await;
    w.advance(3600);
    w.reconcile_connector("sales").await;
    w.advance(3600);
    w.reconcile_connector("sales").await;
    assert_eq!(all_runs(&w).await.len(), 1, "12:00 waits for 11:00");
    set_run_phase(&w, "sales-29923860", "Succeeded").await;
    w.reconcile_connector("sales").await;
    assert_eq!(
        names(&all_runs(&w).await),
        ["sales-29923860", "sales-29923920"]
    );
}

#[tokio::test]
async fn replace_deletes_the_active_run() {
    let w = world_with(&hourly("Replace")).await;
    w.advance(3600);
    w.reconcile_connector("sales").await;
    w.advance(3600);
    w.reconcile_connector("sales").await;
    assert_eq!(names(&all_runs(&w).await), ["sales-29923920"]);
    assert!(
        w.events()
            .await
            .iter()
            .any(|e| e.reason.as_deref() == Some("RunReplaced"))
    );
}

#[tokio::test]
async fn allow_runs_them_side_by_side() {
    let w = world_with(&hourly("Allow")).await;
    w.advance(3600);
    w.reconcile_connector("sales").await;
    w.advance(3600);
    w.reconcile_connector("sales").await;
    assert_eq!(
        names(&all_runs(&w).await),
        ["sales-29923860", "sales-29923920"]
    );
}

#[tokio::test]
async fn suspended_connectors_start_nothing() {
    let w = world_with(&format!("{}  suspend: true\n", hourly("Allow"))).await;
    w.advance(3 * 3600);
    let c = w.reconcile_connector("sales").await;
    assert!(all_runs(&w).await.is_empty());
    let status = c.status.unwrap();
    assert!(
        status
            .conditions
            .iter()
            .any(|c| c.type_ == "Suspended" && c.status == "True")
    );
    assert!(status.next_schedule_time.is_none());
}

#[tokio::test]
async fn missed_schedules_are_counted_and_only_the_latest_starts() {
    let w = world_with(&hourly("Allow")).await;
    w.advance(3 * 3600 + 60);
    w.reconcile_connector("sales").await;
    assert_eq!(
        names(&all_runs(&w).await),
        ["sales-29923980"],
        "only 13:00 starts"
    );
    let m = w.ctx.metrics.render();
    assert!(
        m.contains(r#"ferry_missed_schedules_total{connector="sales",namespace="acme"} 2"#),
        "{m}"
    );
    assert!(
        w.events()
            .await
            .iter()
            .any(|e| e.reason.as_deref() == Some("MissedSchedule"))
    );
}

#[tokio::test]
async fn a_start_past_the_starting_deadline_is_missed() {
    let w = world_with(&format!(
        "{}  startingDeadlineSeconds: 60\n",
        hourly("Allow")
    ))
    .await;
    w.advance(3600 + 300);
    let c = w.reconcile_connector("sales").await;
    assert!(all_runs(&w).await.is_empty());
    assert_eq!(
        c.status.unwrap().last_schedule_time.unwrap().0.to_string(),
        "2026-11-23T11:00:00Z"
    );
}

#[tokio::test]
async fn history_is_pruned_per_outcome() {
    let w = world_with(&format!(
        "{CONNECTOR}  successfulRunsHistoryLimit: 2\n  failedRunsHistoryLimit: 1\n"
    ))
    .await;
    for (i, phase) in [
        "Succeeded",
        "Failed",
        "Succeeded",
        "Rejected",
        "Succeeded",
        "Failed",
    ]
    .iter()
    .enumerate()
    {
        let name = format!("r{i}");
        w.create_run(&name, "sales").await;
        set_run_phase(&w, &name, phase).await;
        w.advance(10);
        // Creation order decides age; the fake API stamps creation in seconds.
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    }
    w.create_run("active", "sales").await;
    w.create_run("other-connector", "other").await;
    let c = w.reconcile_connector("sales").await;
    assert_eq!(
        names(&all_runs(&w).await),
        ["active", "other-connector", "r2", "r4", "r5"]
    );
    let last = c.status.unwrap().last_run.unwrap();
    assert_eq!(last.name, "active");
    assert_eq!(last.phase, None);
}

#[tokio::test]
async fn invalid_schedules_and_missing_secrets_make_the_connector_not_ready() {
    let w = World::new(namespace(Some("eu-west-1"), None)).await;
    w.create_connector(&format!("{CONNECTOR}  schedule: '0 25 * * *'\n"))
        .await;
    let c = w.reconcile_connector("sales").await;
    let ready = c
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "InvalidSchedule")
    );
    assert!(ready.message.contains("0 25 * * *"));

    let w = World::new(namespace(Some("eu-west-1"), None)).await;
    w.create_connector(&CONNECTOR.replace("name: acme-kek", "name: missing-kek"))
        .await;
    let c = w.reconcile_connector("sales").await;
    let ready = c
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "SecretNotFound")
    );
    assert_eq!(
        ready.message,
        "Secret \"missing-kek\" (encryption key) does not exist in this namespace"
    );
    let events = w.events().await;
    assert_eq!(
        events
            .iter()
            .filter(|e| e.reason.as_deref() == Some("SecretNotFound"))
            .count(),
        1
    );
    // A second reconcile does not repeat the Event.
    w.reconcile_connector("sales").await;
    let events = w.events().await;
    assert_eq!(
        events
            .iter()
            .filter(|e| e.reason.as_deref() == Some("SecretNotFound"))
            .count(),
        1
    );
}

#[tokio::test]
async fn the_cursor_follows_the_newest_successful_sync() {
    let w = World::new(namespace(Some("eu-west-1"), None)).await;
    w.create_connector(CONNECTOR).await;
    w.create_run("r1", "sales").await;
    w.runner_reports("r1", json!({"attempt": 1, "objectsCopied": 2, "objectsSkipped": 0, "bytesRead": 1, "bytesWritten": 1, "manifest": ".ferry/manifests/r1.json"})).await;
    set_run_phase(&w, "r1", "Succeeded").await;
    let c = w.reconcile_connector("sales").await;
    assert_eq!(
        c.status.as_ref().unwrap().cursor.as_ref().unwrap().run,
        "r1"
    );
    // A failed run later does not move it.
    w.advance(60);
    w.create_run("r2", "sales").await;
    set_run_phase(&w, "r2", "Failed").await;
    let c = w.reconcile_connector("sales").await;
    let s = c.status.unwrap();
    assert_eq!(s.cursor.unwrap().run, "r1");
    assert_eq!(s.last_run.unwrap().phase, Some(RunPhase::Failed));
}

#[tokio::test]
async fn times_missed_while_forbid_holds_back_are_counted_once() {
    let w = world_with(&hourly("Forbid")).await;
    w.advance(3600);
    w.reconcile_connector("sales").await; // 11:00 starts and stays active
    w.advance(2 * 3600 + 1800); // 13:30: 12:00 missed, 13:00 due
    w.reconcile_connector("sales").await;
    w.reconcile_connector("sales").await;
    let missed = r#"ferry_missed_schedules_total{connector="sales",namespace="acme"}"#;
    assert!(
        !w.ctx.metrics.render().contains(missed),
        "nothing counted while held back"
    );
    set_run_phase(&w, "sales-29923860", "Succeeded").await;
    w.reconcile_connector("sales").await;
    w.reconcile_connector("sales").await;
    assert_eq!(
        names(&all_runs(&w).await),
        ["sales-29923860", "sales-29923980"]
    );
    assert!(
        w.ctx.metrics.render().contains(&format!("{missed} 1")),
        "12:00 counted once"
    );
}

/// A reconcile whose status write failed after it created the scheduled run:
/// deciding again finds the run and neither fails nor starts it twice.
#[tokio::test]
async fn a_run_created_before_a_lost_status_write_starts_once() {
    let w = world_with(&hourly("Forbid")).await;
    w.advance(3600 + 5);
    w.reconcile_connector("sales").await;
    assert_eq!(names(&all_runs(&w).await), ["sales-29923860"]);
    // As if the status write had failed: the schedule has not moved on.
    let patch = json!({"status": {"lastScheduleTime": "2026-11-23T10:00:00Z"}});
    w.connectors()
        .patch_status("sales", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let c = w.reconcile_connector("sales").await;
    assert_eq!(names(&all_runs(&w).await), ["sales-29923860"]);
    assert_eq!(
        c.status.unwrap().last_schedule_time.unwrap().0.to_string(),
        "2026-11-23T11:00:00Z"
    );
}

#[tokio::test]
async fn a_run_the_cache_has_not_seen_yet_starts_once() {
    // The run exists, but the watch has not delivered it when the next
    // reconcile reads its cache (and the status write that recorded it failed).
    let w = world_with(&hourly("Forbid")).await;
    w.advance(3600 + 5);
    w.reconcile_connector("sales").await;
    let patch = json!({"status": {"lastScheduleTime": "2026-11-23T10:00:00Z"}});
    w.connectors()
        .patch_status("sales", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    w.runs_feed.lock().unwrap().relist([]);
    let c = w.reconcile_connector_as_cached("sales").await;
    assert_eq!(names(&all_runs(&w).await), ["sales-29923860"]);
    assert_eq!(
        c.status.unwrap().last_schedule_time.unwrap().0.to_string(),
        "2026-11-23T11:00:00Z"
    );
}
