//! The run history: [`doomed`] decides, without a client, which finished runs
//! fall beyond the Connector's history limits; [`delete`] removes one.

use ferry_crds::{ConnectorRun, RunPhase};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams};

use super::history::phase;
use crate::context::Context;
use crate::error::{Error, Step, is_not_found};

/// The finished runs beyond the limits, given the runs newest first: the
/// newest `keep_succeeded` succeeded runs and the newest `keep_failed` failed
/// or rejected ones are kept, and every run that has not ended.
pub fn doomed(runs: &[ConnectorRun], keep_succeeded: usize, keep_failed: usize) -> Vec<String> {
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
        if !keep {
            out.push(run.name_any());
        }
    }
    out
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
        assert_eq!(doomed(&runs, 1, 1), vec!["r3", "r2", "r0"]);
        assert_eq!(doomed(&runs, 0, 0), vec!["r5", "r4", "r3", "r2", "r0"]);
        assert!(doomed(&runs, 3, 2).is_empty());
    }
}
