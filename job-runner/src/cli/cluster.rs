//! `job-runner cluster`: one attempt of a ConnectorRun, in its pod; every
//! argument comes from the pod's environment, which the operator sets
//! ([`ferry_crds::contract::env`]).

use std::path::PathBuf;

use ferry_crds::contract::env;

use crate::cluster::{self, RunRef};
use crate::config;
use crate::transfer::{Mode, Part};

use super::local::print_report;
use super::{BoxError, LineageArgs};

/// Arguments of `job-runner cluster`, all from the pod's environment.
#[derive(clap::Args)]
pub struct ClusterArgs {
    /// Name of the ConnectorRun.
    #[arg(long, env = env::RUN_NAME)]
    run: String,
    /// Its namespace.
    #[arg(long, env = env::RUN_NAMESPACE)]
    namespace: String,
    /// Which attempt this pod is.
    #[arg(long, env = env::RUN_ATTEMPT, default_value_t = 1)]
    attempt: i32,
    /// Hash of the Connector spec the operator pinned for the run.
    #[arg(long, env = env::SPEC_HASH)]
    spec_hash: String,
    /// The tenant's region (set by the operator from the namespace label).
    #[arg(long, env = env::TENANT_REGION)]
    tenant_region: Option<String>,
    /// The manifest the destination's record must reach (SEQUENCE:LINK), as
    /// the operator recorded it.
    #[arg(long, env = env::MANIFEST_ANCHOR)]
    manifest_anchor: Option<crate::crypto::Anchor>,
    /// Objects above 1 MiB copied at once; smaller ones up to four times as many.
    #[arg(long, env = env::CONCURRENCY, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    concurrency: u16,
    /// Seconds between progress reports.
    #[arg(long, env = env::PROGRESS_INTERVAL, default_value_t = 5)]
    progress_interval: u64,
    /// Base folder of relative local paths.
    #[arg(long, env = env::BASE_DIR, default_value = ".")]
    base_dir: PathBuf,
    /// The shard this pod is (INDEX/COUNT), when the run is spread over several.
    #[arg(long, env = env::SHARD, conflicts_with = "shards")]
    shard: Option<crate::transfer::Shard>,
    /// The last step of a run spread over this many shards.
    #[arg(long, env = env::SHARDS, value_parser = clap::value_parser!(u32).range(1..=i64::from(crate::crypto::part::MAX_SHARDS)))]
    shards: Option<u32>,
    #[command(flatten)]
    lineage: LineageArgs,
}

/// `job-runner cluster`: one attempt of a ConnectorRun, in its pod.
pub async fn cluster(args: ClusterArgs, platform: &config::Platform) -> Result<(), BoxError> {
    let run = RunRef {
        namespace: args.namespace,
        name: args.run,
        attempt: args.attempt,
        spec_hash: args.spec_hash,
        part: match (args.shard, args.shards) {
            (Some(s), _) => Part::Shard(s),
            (None, Some(n)) => Part::Commit(n),
            (None, None) => Part::Whole,
        },
    };
    let client = kube::Client::try_default()
        .await
        .map_err(|e| format!("failed to reach the Kubernetes API: {e}"))?;
    let settings = cluster::Settings {
        tenant_region: args.tenant_region,
        anchor: args.manifest_anchor,
        concurrency: usize::from(args.concurrency),
        base_dir: args.base_dir,
        progress_every: std::time::Duration::from_secs(args.progress_interval.max(1)),
        lineage: args.lineage.sink()?,
        platform: platform.clone(),
    };
    let (outcome, reported) =
        cluster::attempt(&client, &run, &settings, Box::new(std::io::stdout())).await;
    match (&outcome, reported) {
        (Ok(report), Ok(())) => {
            print_report(Mode::Sync, report);
            Ok(())
        }
        (Ok(_), Err(e)) => {
            Err(format!("the run succeeded but its result could not be reported: {e}").into())
        }
        (Err(f), _) => Err(f.to_string().into()),
    }
}
