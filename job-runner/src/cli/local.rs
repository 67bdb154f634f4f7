//! `job-runner run`: a Connector from a file, with Secrets from a folder
//! (local mode).

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use crate::config::{self, SecretsDir};
use crate::job::{self, Job};
use crate::transfer::{self, EraseRequest, Mode, Part, Progress};

use super::{BoxError, LineageArgs};

/// Arguments of `job-runner run`.
#[derive(clap::Args)]
pub struct RunArgs {
    /// The Connector manifest (YAML).
    #[arg(long)]
    connector: PathBuf,
    /// Secrets as Kubernetes mounts them: DIR/<secret-name>/<key>.
    #[arg(long)]
    secrets_dir: PathBuf,
    /// `sync` copies; `plan` lists what would be copied; `erase` deletes the
    /// copies of the `--erase-key` source keys.
    #[arg(long, default_value = "sync", value_parser = parse_mode)]
    mode: Mode,
    /// With `--mode erase`: a source key (relative to the source prefix) whose
    /// copy is erased; repeat for more.
    #[arg(long = "erase-key", required_if_eq("mode", "erase"))]
    erase_keys: Vec<String>,
    /// With `--mode erase`: delete the source objects too.
    #[arg(long)]
    erase_from_source: bool,
    /// The tenant's region, for `dataResidency: in-region-only`.
    #[arg(long)]
    tenant_region: Option<String>,
    /// The manifest the destination's record must reach (SEQUENCE:LINK, as a
    /// previous run printed it): a destination rolled back from it is refused.
    #[arg(long)]
    manifest_anchor: Option<crate::crypto::Anchor>,
    /// Run id (names the manifest); generated from the time when unset.
    #[arg(long)]
    run_id: Option<String>,
    /// Objects above 1 MiB copied at once; smaller ones up to four times as many.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    concurrency: u16,
    /// Append audit lines to this file instead of stderr.
    #[arg(long)]
    audit_log: Option<PathBuf>,
    /// Base folder of relative local paths in the Connector.
    #[arg(long, default_value = ".")]
    base_dir: PathBuf,
    /// Sync one shard of a run spread over several (INDEX/COUNT, the index
    /// from 0): copy the keys it owns and store its part; needs --run-id,
    /// the same for every shard and for --commit-shards.
    #[arg(long, requires = "run_id", conflicts_with = "commit_shards")]
    shard: Option<transfer::Shard>,
    /// The last step of a run spread over COUNT shards: the run's manifest
    /// from the shards' parts; needs --run-id.
    #[arg(long, requires = "run_id", value_parser = clap::value_parser!(u32).range(1..=i64::from(crate::crypto::part::MAX_SHARDS)))]
    commit_shards: Option<u32>,
    #[command(flatten)]
    lineage: LineageArgs,
}

/// A run mode as the command line spells it (the ConnectorRun's `mode`).
fn parse_mode(s: &str) -> Result<Mode, String> {
    match s {
        "sync" => Ok(Mode::Sync),
        "plan" => Ok(Mode::Plan),
        "erase" => Ok(Mode::Erase),
        _ => Err(format!("{s:?} is not a mode: sync, plan or erase")),
    }
}

/// `job-runner run`.
pub async fn run(args: RunArgs, platform: &config::Platform) -> Result<(), BoxError> {
    let sink = args.lineage.sink()?;
    if args.mode != Mode::Erase && (!args.erase_keys.is_empty() || args.erase_from_source) {
        return Err("--erase-key and --erase-from-source go with --mode erase".into());
    }
    let part = match (args.shard, args.commit_shards) {
        (Some(s), _) => Part::Shard(s),
        (None, Some(n)) => Part::Commit(n),
        (None, None) => Part::Whole,
    };
    if part != Part::Whole && args.mode != Mode::Sync {
        return Err("--shard and --commit-shards go with --mode sync".into());
    }
    let erase = EraseRequest {
        keys: args.erase_keys,
        from_source: args.erase_from_source,
    };
    let connector = config::load_connector(&args.connector)?;
    let namespace = connector.metadata.namespace.as_deref().unwrap_or("default");
    let name = connector.metadata.name.as_deref().unwrap_or("connector");
    let run_id = args.run_id.unwrap_or_else(|| {
        let now = jiff::Timestamp::now();
        format!("{name}-{}", now.strftime("%Y%m%dT%H%M%S%.3fZ")).replace('.', "")
    });
    let audit_out: Box<dyn Write + Send> = match &args.audit_log {
        Some(p) => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| format!("failed to open audit log {}: {e}", p.display()))?,
        ),
        None => Box::new(std::io::stderr()),
    };
    let lineage_run = format!("local/{namespace}/{run_id}");
    let prepared = job::prepare(
        &connector,
        namespace,
        &run_id,
        &lineage_run,
        audit_out,
        sink,
    );
    let dir = SecretsDir::new(args.secrets_dir);
    let job = Job {
        connector: &connector,
        mode: args.mode,
        erase: Some(&erase),
        tenant_region: args.tenant_region.as_deref(),
        anchor: args.manifest_anchor.as_ref(),
        run_id: &run_id,
        concurrency: usize::from(args.concurrency),
        base_dir: &args.base_dir,
        lineage: prepared.lineage.as_ref(),
        platform,
        part,
    };
    let secrets = async { Ok(dir.snapshot(&connector.spec)) };
    let reread = || async { Ok(dir.snapshot(&connector.spec)) };
    let progress = Arc::new(Progress::default());
    let report = job::perform(job, secrets, reread, &prepared.audit, progress)
        .await
        .map_err(|f| f.message)?;
    print_report(args.mode, &report);
    Ok(())
}

/// What a run did, on stdout.
pub fn print_report(mode: Mode, report: &transfer::Report) {
    for (key, reason) in &report.refused {
        println!("refused {key}: {reason}");
    }
    match mode {
        Mode::Erase => {
            for e in &report.erased {
                let sides = match (e.from_destination, e.from_source) {
                    (true, true) => "destination and source",
                    (true, false) => "destination",
                    (false, true) => "source",
                    (false, false) => "nothing left to delete",
                };
                println!("erased {}: {sides}", e.key);
            }
            if report.versions_deleted > 0 {
                println!(
                    "erased {} earlier version(s) the destination kept",
                    report.versions_deleted
                );
            }
            if let Some(left) = &report.erase_incomplete {
                println!("warning: {left}");
            }
            println!(
                "erase: {} key(s) erased; manifest {}{}",
                report.erased.len(),
                report.manifest.as_deref().unwrap_or("-"),
                anchor(report)
            );
        }
        Mode::Plan => {
            for p in &report.planned {
                println!("would copy {} ({} bytes)", p.key, p.size);
            }
            println!(
                "plan: {} to copy, {} unchanged",
                report.planned.len(),
                report.objects_skipped
            );
        }
        Mode::Sync => println!(
            "copied {} object(s) ({} bytes, {} encrypted), skipped {} unchanged; manifest {} ({} bytes written){}",
            report.objects_copied,
            report.bytes_read,
            report.bytes_written,
            report.objects_skipped,
            report.manifest.as_deref().unwrap_or("-"),
            report.manifest_bytes,
            anchor(report)
        ),
    }
}

/// The written manifest's place, for the next run's --manifest-anchor.
fn anchor(report: &transfer::Report) -> String {
    report
        .anchor
        .as_ref()
        .map(|a| format!(" (anchor {a})"))
        .unwrap_or_default()
}
