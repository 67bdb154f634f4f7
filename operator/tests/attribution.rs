//! Who asked for each run: the identities the chart's admission policies keep
//! in `ferry.dev/created-by` (runs) and `ferry.dev/spec-changed-by`
//! (Connectors), recorded by the operator in the run's status and in every
//! audit line about it, and passed on to the runner through the run's record.
//! The policies themselves are tested with Google's CEL implementation
//! (tests/admission.rs); here the API is the fake one, which runs no admission,
//! so the annotations are set as the policies would have left them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use ferry_crds::{Attribution, RunRecord};
use ferry_operator::config::Config;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;
use support::*;

const OPERATOR: &str = "system:serviceaccount:ferry-system:ferry-operator";
const ALICE: &str = "alice@example.com";
const BOB: &str = "oidc:bob";

fn recording() -> Config {
    Config {
        record_requesters: true,
        user_name: Some(OPERATOR.into()),
        ..Config::default()
    }
}

/// The Connector, last changed by Bob, on an hourly schedule.
async fn world(config: Config) -> World {
    let w = World::with_config(namespace(Some("eu-west-1"), None), config).await;
    let mut c = connector(&format!(
        "{CONNECTOR}  schedule: '0 * * * *'\n  concurrencyPolicy: Allow\n"
    ));
    c.metadata.creation_timestamp = None;
    c.metadata.annotations =
        Some([("ferry.dev/spec-changed-by".to_string(), BOB.to_string())].into());
    w.connectors()
        .create(&PostParams::default(), &c)
        .await
        .unwrap();
    let patch = json!({"status": {"lastScheduleTime": "2026-11-23T10:00:00Z"}});
    w.connectors()
        .patch_status("sales", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    w
}

/// Alice's run `manual-1`, as the admission policy leaves it.
async fn create_alices_run(w: &World) {
    let mut manual = run_of("manual-1", "sales");
    manual.metadata.annotations =
        Some([("ferry.dev/created-by".to_string(), ALICE.to_string())].into());
    w.runs()
        .create(&PostParams::default(), &manual)
        .await
        .unwrap();
}

fn attribution_of(run: &ferry_crds::ConnectorRun) -> Option<Attribution> {
    run.status.as_ref().unwrap().attribution.clone()
}

#[tokio::test]
async fn a_run_created_by_a_user_and_one_made_by_the_schedule_name_who_asked() {
    let w = world(recording()).await;
    create_alices_run(&w).await;
    let run = w.reconcile_run("manual-1").await;
    let expected = Attribution {
        requested_by: Some(ALICE.into()),
        connector_changed_by: Some(BOB.into()),
    };
    assert_eq!(attribution_of(&run), Some(expected.clone()));
    // The record (what the runner and later reconciles trust) says the same.
    let record = RunRecord::of(&run).unwrap().unwrap();
    assert_eq!(record.status.attribution, Some(expected));

    // The schedule's run: the operator's own name, and Bob's for the spec.
    w.advance(3600 + 5);
    w.reconcile_connector("sales").await;
    let scheduled = w.runs().get("sales-29923860").await.unwrap();
    assert_eq!(
        scheduled.metadata.annotations.as_ref().unwrap()["ferry.dev/created-by"],
        OPERATOR
    );
    let scheduled = w.reconcile_run("sales-29923860").await;
    assert_eq!(
        attribution_of(&scheduled),
        Some(Attribution {
            requested_by: Some(OPERATOR.into()),
            connector_changed_by: Some(BOB.into()),
        })
    );

    // Every audit line about a run names who asked for it.
    let lines = w.audit_lines();
    let started: Vec<_> = lines
        .iter()
        .filter(|l| l["action"] == "run.started")
        .collect();
    assert_eq!(started.len(), 2, "{lines:?}");
    assert_eq!(started[0]["run"], "manual-1");
    assert_eq!(started[0]["requestedBy"], ALICE);
    assert_eq!(started[0]["connectorChangedBy"], BOB);
    assert_eq!(started[1]["requestedBy"], OPERATOR);
}

#[tokio::test]
async fn the_attribution_is_pinned_with_the_spec_and_later_edits_do_not_rewrite_it() {
    let w = world(recording()).await;
    create_alices_run(&w).await;
    w.reconcile_run("manual-1").await;
    // Carol changes the Connector while the run is in flight: the run was
    // pinned to Bob's spec, and says so.
    let patch = json!({"metadata": {"annotations": {"ferry.dev/spec-changed-by": "carol"}}});
    w.connectors()
        .patch("sales", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    w.set_pod_status("manual-1-1", json!({"phase": "Running"}))
        .await;
    let run = w.reconcile_run("manual-1").await;
    assert_eq!(
        attribution_of(&run)
            .unwrap()
            .connector_changed_by
            .as_deref(),
        Some(BOB)
    );
}

/// Without the chart's policies anyone may write the annotations: the
/// operator then records nothing rather than a name it cannot trust.
#[tokio::test]
async fn without_the_admission_policies_nothing_is_attributed() {
    let w = world(Config::default()).await;
    create_alices_run(&w).await;
    let run = w.reconcile_run("manual-1").await;
    assert_eq!(attribution_of(&run), None);
    w.advance(3600 + 5);
    w.reconcile_connector("sales").await;
    let scheduled = w.runs().get("sales-29923860").await.unwrap();
    assert!(
        !scheduled
            .metadata
            .annotations
            .as_ref()
            .unwrap()
            .contains_key("ferry.dev/created-by")
    );
    let lines = w.audit_lines();
    assert!(
        lines.iter().all(|l| l.get("requestedBy").is_none()),
        "{lines:?}"
    );
}

/// Every admitted run carries the operator's finalizer, so that its deletion
/// waits for the operator's audit line. The deletion itself is tested end to
/// end (tests/e2e: `kubectl delete` of a finished run), against the test API,
/// which keeps an object with finalizers as the API server does; this fake
/// API deletes at once whatever the finalizers.
#[tokio::test]
async fn an_admitted_run_carries_the_audit_finalizer_until_it_is_deleted() {
    let w = world(recording()).await;
    w.create_run("manual-1", "sales").await;
    let run = w.reconcile_run("manual-1").await;
    assert_eq!(
        run.metadata.finalizers.as_deref(),
        Some(&["ferry.dev/audit-trail".to_string()][..])
    );
    w.runner_reports(
        "manual-1",
        json!({"attempt": 1, "objectsCopied": 1, "objectsSkipped": 0, "bytesRead": 1, "bytesWritten": 1,
               "manifest": ".ferry/manifests/20261123T100000000000Z-manual-1.json"}),
    )
    .await;
    w.set_pod_status("manual-1-1", json!({"phase": "Succeeded"}))
        .await;
    let run = w.reconcile_run("manual-1").await;
    assert_eq!(
        run.status.unwrap().phase,
        Some(ferry_crds::RunPhase::Succeeded)
    );
    assert_eq!(
        run.metadata.finalizers.map(|f| f.len()),
        Some(1),
        "kept after the end"
    );
}
