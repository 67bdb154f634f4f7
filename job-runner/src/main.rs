//! `job-runner`: Ferry's runner and its tools.
//!
//! - `run`: run a Connector from a file, with Secrets from a folder (local mode).
//! - `cluster`: run one attempt of a ConnectorRun in its pod (cluster mode).
//! - `decrypt`: decrypt one object, or a whole destination with its manifest.
//! - `verify`: check a destination against its signed manifest.
//! - `keygen`: make a key-encryption key, as a file or a Kubernetes Secret.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use ferry_runner::audit::{AuditLog, Outcome};
use ferry_runner::cluster::{self, RunRef};
use ferry_runner::config::{self, SecretsDir};
use ferry_runner::crypto::{Kek, KeyRing};
use ferry_runner::job::{self, Job};
use ferry_runner::lineage;
use ferry_runner::readback;
use ferry_runner::storage::ObjectStore;
use ferry_runner::storage::local::LocalStore;
use ferry_runner::transfer::{self, EraseRequest, Mode, Progress};

#[derive(Parser)]
#[command(
    name = "job-runner",
    version,
    about = "Ferry's runner: moves data between stores, encrypted at rest"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "FERRY_LOG_FORMAT")]
    log_format: LogFormat,
    /// STS endpoint for AWS web identity (set by the platform team; in a
    /// cluster, by the operator). Default: the official regional endpoint.
    #[arg(long, global = true, env = ferry_crds::STS_ENDPOINT_ENV)]
    sts_endpoint: Option<String>,
    /// Networks (CIDRs, comma separated) no connection may go to, besides
    /// link-local and the cloud metadata addresses, which are always denied; in
    /// a cluster, set by the operator (the cluster's pod and service ranges).
    #[arg(long, global = true, env = ferry_crds::DENIED_NETWORKS_ENV, value_delimiter = ',')]
    denied_networks: Vec<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum RunMode {
    Sync,
    Plan,
    Erase,
}

/// Where lineage events go (runs touching streams tagged sensitive).
#[derive(clap::Args, Clone)]
struct LineageArgs {
    /// POST OpenLineage run events to this URL (https; http only to a loopback
    /// host with --lineage-allow-plain-loopback).
    #[arg(long, env = "FERRY_LINEAGE_URL", conflicts_with = "lineage_file")]
    lineage_url: Option<String>,
    /// Append OpenLineage run events to this file, one per line.
    #[arg(long, env = "FERRY_LINEAGE_FILE")]
    lineage_file: Option<PathBuf>,
    /// Allow an http:// lineage URL on a loopback host.
    #[arg(long, env = "FERRY_LINEAGE_ALLOW_PLAIN_LOOPBACK")]
    lineage_allow_plain_loopback: bool,
}

impl LineageArgs {
    fn sink(&self) -> Result<Option<lineage::Sink>, BoxError> {
        Ok(match (&self.lineage_url, &self.lineage_file) {
            (Some(url), _) => Some(lineage::Sink::http(url, self.lineage_allow_plain_loopback)?),
            (None, Some(path)) => Some(lineage::Sink::File(path.clone())),
            (None, None) => None,
        })
    }
}

/// Arguments of `job-runner run`.
#[derive(clap::Args)]
struct RunArgs {
    /// The Connector manifest (YAML).
    #[arg(long)]
    connector: PathBuf,
    /// Secrets as Kubernetes mounts them: DIR/<secret-name>/<key>.
    #[arg(long)]
    secrets_dir: PathBuf,
    /// `sync` copies; `plan` lists what would be copied; `erase` deletes the
    /// copies of the `--erase-key` source keys.
    #[arg(long, value_enum, default_value_t = RunMode::Sync)]
    mode: RunMode,
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
    #[command(flatten)]
    lineage: LineageArgs,
}

/// Arguments of `job-runner cluster`, all from the pod's environment.
#[derive(clap::Args)]
struct ClusterArgs {
    /// Name of the ConnectorRun.
    #[arg(long, env = "FERRY_RUN_NAME")]
    run: String,
    /// Its namespace.
    #[arg(long, env = "FERRY_RUN_NAMESPACE")]
    namespace: String,
    /// Which attempt this pod is.
    #[arg(long, env = "FERRY_RUN_ATTEMPT", default_value_t = 1)]
    attempt: i32,
    /// Hash of the Connector spec the operator pinned for the run.
    #[arg(long, env = ferry_crds::SPEC_HASH_ENV)]
    spec_hash: String,
    /// The tenant's region (set by the operator from the namespace label).
    #[arg(long, env = "FERRY_TENANT_REGION")]
    tenant_region: Option<String>,
    /// Objects above 1 MiB copied at once; smaller ones up to four times as many.
    #[arg(long, env = "FERRY_CONCURRENCY", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    concurrency: u16,
    /// Seconds between progress reports.
    #[arg(long, env = "FERRY_PROGRESS_INTERVAL", default_value_t = 5)]
    progress_interval: u64,
    /// Base folder of relative local paths.
    #[arg(long, env = "FERRY_BASE_DIR", default_value = ".")]
    base_dir: PathBuf,
    #[command(flatten)]
    lineage: LineageArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run a Connector outside a cluster.
    Run(RunArgs),
    /// Run one attempt of a ConnectorRun inside its pod (started by the operator).
    Cluster(ClusterArgs),
    /// Decrypt one object (--file) or every object of a destination folder (--dir).
    Decrypt {
        /// KEK files (raw, base64 or hex); give older keys too after a rotation.
        #[arg(long = "kek", required = true)]
        keks: Vec<PathBuf>,
        /// A destination folder written by Ferry: verified against its manifest, then decrypted.
        #[arg(long, conflicts_with_all = ["file", "connector"])]
        dir: Option<PathBuf>,
        /// Or the destination of this Connector (any backend), verified then decrypted.
        #[arg(long, conflicts_with = "file", requires = "secrets_dir")]
        connector: Option<PathBuf>,
        /// Secrets for --connector: DIR/<secret-name>/<key>.
        #[arg(long)]
        secrets_dir: Option<PathBuf>,
        /// The manifest to use (its key under the destination); the newest when unset.
        #[arg(long)]
        manifest: Option<String>,
        /// One encrypted object.
        #[arg(long, requires = "object_key")]
        file: Option<PathBuf>,
        /// The object's key relative to the destination prefix (its associated data).
        #[arg(long)]
        object_key: Option<String>,
        /// Output file (--file) or folder (--dir); `-` for stdout with --file.
        #[arg(long)]
        out: PathBuf,
    },
    /// Verify a destination folder against its signed manifest.
    Verify {
        /// KEK files (raw, base64 or hex).
        #[arg(long = "kek", required = true)]
        keks: Vec<PathBuf>,
        /// The destination folder.
        #[arg(
            long,
            conflicts_with = "connector",
            required_unless_present = "connector"
        )]
        dir: Option<PathBuf>,
        /// Or the destination of this Connector (any backend).
        #[arg(long, requires = "secrets_dir")]
        connector: Option<PathBuf>,
        /// Secrets for --connector: DIR/<secret-name>/<key>.
        #[arg(long)]
        secrets_dir: Option<PathBuf>,
        /// The manifest to use; the newest when unset.
        #[arg(long)]
        manifest: Option<String>,
        /// Also decrypt every object and check its plaintext digest.
        #[arg(long)]
        deep: bool,
    },
    /// Make a new random 256-bit key-encryption key.
    Keygen {
        /// Write the key (base64) to this file, readable by its owner only.
        #[arg(long, conflicts_with = "secret", required_unless_present = "secret")]
        out: Option<PathBuf>,
        /// Print a Kubernetes Secret manifest with this name instead.
        #[arg(long)]
        secret: Option<String>,
        /// Namespace of the Secret.
        #[arg(long, requires = "secret")]
        namespace: Option<String>,
        /// Key inside the Secret.
        #[arg(long, default_value = "kek")]
        key: String,
        /// Replace an existing key file (its data becomes unreadable without a copy).
        #[arg(long)]
        force: bool,
    },
}

fn main() -> ExitCode {
    bound_allocator_footprint();
    let cli = Cli::parse();
    // Several TLS backends are compiled in through dependencies (ring for the
    // Kubernetes client, aws-lc-rs for SSH); the process-wide rustls default is ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    init_logging(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("job-runner: error: failed to start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let network = match ferry_runner::net::NetworkGuard::new(&cli.denied_networks) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("job-runner: error: --denied-networks: {e}");
            return ExitCode::FAILURE;
        }
    };
    let platform = config::Platform {
        sts_endpoint: cli.sts_endpoint,
        network,
    };
    match runtime.block_on(dispatch(cli.command, &platform)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("job-runner: error: {e}");
            ExitCode::FAILURE
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Buffers above this size get their own mapping, returned to the system when
/// freed.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 128 * 1024;

/// Keeps the runner's resident memory close to the data really in flight.
///
/// glibc raises its mmap threshold to the size of each mapped block that is
/// freed (up to 32 MiB). After the first 8 MiB part is uploaded, every 1 to
/// 8 MiB transfer buffer comes from the per-thread heaps instead, and freed
/// space in the middle of a heap stays resident: on a 4 GiB object that was
/// 30 to 50 MiB above the live heap. Setting the threshold explicitly turns
/// that adjustment off.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn bound_allocator_footprint() {
    // SAFETY: mallopt only sets a malloc parameter; it is called before any
    // other thread exists, and takes no pointers.
    #[allow(unsafe_code)]
    let ok = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) };
    if ok != 1 {
        eprintln!("job-runner: warning: could not set the allocator's mmap threshold");
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn bound_allocator_footprint() {}

/// Libraries that hold credentials or see signed requests and log them at
/// debug or trace level (the AWS SDK logs the access key id and the signed
/// request; the Kubernetes client and its HTTP layers see the run's token and
/// the Secrets it fetches): capped at info whatever RUST_LOG asks.
const CREDENTIAL_HANDLERS: [&str; 24] = [
    "aws_config",
    "aws_credential_types",
    "aws_runtime",
    "aws_sdk_s3",
    "aws_sdk_sts",
    "aws_sigv4",
    "aws_smithy_http_client",
    "aws_smithy_runtime",
    "azure_core",
    "h2",
    "hyper",
    "hyper_util",
    "hyper_rustls",
    "kube",
    "kube_client",
    "kube_runtime",
    "object_store",
    "reqwest",
    "russh",
    "russh_sftp",
    "rustls",
    "tokio_rustls",
    "tower",
    "tower_http",
];

/// Passes `log` records (russh logs through `log`) on to tracing, except one
/// error russh logs on every SSH connection that accepts packets over 64 KiB
/// ("should not larger than a TCP packet"). SSH packets are not TCP packets:
/// OpenSSH accepts 256 KiB, and Ferry asks for that on purpose (docs/runner.md,
/// SFTP). Left in, every SFTP run would log an error that means nothing.
struct LogBridge(tracing_log::LogTracer);

impl LogBridge {
    fn spurious(record: &log::Record<'_>) -> bool {
        record.level() == log::Level::Error
            && record.target().starts_with("russh")
            && record.args().to_string().starts_with("Maximum packet size")
    }
}

impl log::Log for LogBridge {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        self.0.enabled(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        if !Self::spurious(record) {
            self.0.log(record);
        }
    }

    fn flush(&self) {}
}

/// Logs to stderr in `format`, filtered by [`log_filter`]; `log` records too.
fn init_logging(format: LogFormat) {
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(log_filter());
    let installed = match format {
        LogFormat::Json => tracing::subscriber::set_global_default(builder.json().finish()),
        LogFormat::Text => tracing::subscriber::set_global_default(
            builder.without_time().with_target(false).finish(),
        ),
    };
    if installed.is_ok()
        && log::set_boxed_logger(Box::new(LogBridge(tracing_log::LogTracer::new()))).is_ok()
    {
        use tracing_log::AsLog as _;
        log::set_max_level(tracing::level_filters::LevelFilter::current().as_log());
    }
}

/// RUST_LOG (default `info`), with the credential handlers capped at info.
fn log_filter() -> tracing_subscriber::EnvFilter {
    let requested = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
    // Later directives for the same target win, so the caps go last.
    let caps: Vec<String> = CREDENTIAL_HANDLERS
        .iter()
        .map(|t| format!("{t}=info"))
        // The Kubernetes client logs a whole response body at warn when it
        // cannot decode it: for a Secret, its values.
        .chain(["kube_client=error".to_string()])
        .collect();
    let spec = format!("{requested},{}", caps.join(","));
    tracing_subscriber::EnvFilter::try_new(&spec).unwrap_or_else(|e| {
        eprintln!("job-runner: ignoring RUST_LOG ({e}); logging at info");
        tracing_subscriber::EnvFilter::new(format!("info,{}", caps.join(",")))
    })
}

async fn dispatch(command: Command, platform: &config::Platform) -> Result<(), BoxError> {
    match command {
        Command::Run(args) => run(args, platform).await,
        Command::Cluster(args) => cluster(args, platform).await,
        Command::Decrypt {
            keks,
            dir,
            connector,
            secrets_dir,
            manifest,
            file,
            object_key,
            out,
        } => {
            let keys = Arc::new(load_keys(&keks)?);
            match (file, object_key) {
                (Some(file), Some(object_key)) => decrypt_file(keys, file, object_key, out).await,
                (None, _) => {
                    let store = destination(dir, connector, secrets_dir, platform)?;
                    let (m, bytes) = readback::decrypt_all(
                        store.as_ref(),
                        keys,
                        manifest.as_deref(),
                        &LocalStore::new(&out),
                    )
                    .await?;
                    println!(
                        "decrypted {} object(s), {bytes} bytes, from {} into {} (manifest of run {} verified)",
                        m.objects.len(),
                        store.describe(),
                        out.display(),
                        m.run
                    );
                    Ok(())
                }
                (Some(_), None) => Err("--file needs --object-key".into()),
            }
        }
        Command::Verify {
            keks,
            dir,
            connector,
            secrets_dir,
            manifest,
            deep,
        } => {
            let keys = Arc::new(load_keys(&keks)?);
            let store = destination(dir, connector, secrets_dir, platform)?;
            let (key, m) =
                readback::verify(store.as_ref(), keys, manifest.as_deref(), deep).await?;
            println!(
                "ok: {} object(s) match manifest {key} (run {}, key {})",
                m.objects.len(),
                m.run,
                m.kek_id
            );
            Ok(())
        }
        Command::Keygen {
            out,
            secret,
            namespace,
            key,
            force,
        } => keygen(out, secret, namespace, key, force),
    }
}

/// A file path as (the folder as a store, the file name as its key).
fn split_file(path: &std::path::Path, flag: &str) -> Result<(LocalStore, String), BoxError> {
    let folder = path
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| format!("{flag} must name a file"))?;
    Ok((LocalStore::new(folder), name.to_string()))
}

/// The store to read back: a local folder, or a Connector's destination.
fn destination(
    dir: Option<PathBuf>,
    connector: Option<PathBuf>,
    secrets_dir: Option<PathBuf>,
    platform: &config::Platform,
) -> Result<Arc<dyn ObjectStore>, BoxError> {
    match (dir, connector, secrets_dir) {
        (Some(dir), None, _) => Ok(Arc::new(LocalStore::new(dir))),
        (None, Some(file), Some(secrets)) => {
            let connector = config::load_connector(&file)?;
            let secrets = SecretsDir::new(secrets);
            Ok(config::open_store(
                "destination",
                &connector.spec.destination,
                std::path::Path::new("."),
                &secrets,
                platform,
            )?)
        }
        _ => Err("give --dir, or --connector with --secrets-dir".into()),
    }
}

fn load_keys(paths: &[PathBuf]) -> Result<KeyRing, BoxError> {
    let mut keys = Vec::new();
    for p in paths {
        let bytes = zeroize::Zeroizing::new(
            std::fs::read(p)
                .map_err(|e| format!("failed to read key file {}: {e}", p.display()))?,
        );
        keys.push(Kek::parse(&bytes).map_err(|e| format!("key file {}: {e}", p.display()))?);
    }
    Ok(KeyRing::new(keys))
}

async fn run(args: RunArgs, platform: &config::Platform) -> Result<(), BoxError> {
    let RunArgs {
        connector: connector_path,
        secrets_dir,
        mode,
        erase_keys,
        erase_from_source,
        tenant_region,
        run_id,
        concurrency,
        audit_log,
        base_dir,
        lineage,
    } = args;
    let sink = lineage.sink()?;
    if !matches!(mode, RunMode::Erase) && (!erase_keys.is_empty() || erase_from_source) {
        return Err("--erase-key and --erase-from-source go with --mode erase".into());
    }
    let erase = EraseRequest {
        keys: erase_keys,
        from_source: erase_from_source,
    };
    let connector = config::load_connector(&connector_path)?;
    let namespace = connector
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = connector
        .metadata
        .name
        .clone()
        .unwrap_or_else(|| "connector".into());
    let run_id = run_id.unwrap_or_else(|| {
        let now = jiff::Timestamp::now();
        format!("{name}-{}", now.strftime("%Y%m%dT%H%M%S%.3fZ")).replace('.', "")
    });
    let audit_out: Box<dyn Write + Send> = match &audit_log {
        Some(p) => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| format!("failed to open audit log {}: {e}", p.display()))?,
        ),
        None => Box::new(std::io::stderr()),
    };
    let audit = AuditLog::new(
        audit_out,
        &name,
        &namespace,
        &run_id,
        &connector.spec.source.system(),
        &connector.spec.destination.system(),
    );
    let lineage = sink.and_then(|sink| {
        lineage::Lineage::for_run(
            &connector.spec,
            &namespace,
            &name,
            &format!("local/{namespace}/{run_id}"),
            sink,
        )
    });
    let dir = SecretsDir::new(secrets_dir);
    let secrets = dir.snapshot(&connector.spec);
    let job = Job {
        connector: &connector,
        mode: match mode {
            RunMode::Sync => Mode::Sync,
            RunMode::Plan => Mode::Plan,
            RunMode::Erase => Mode::Erase,
        },
        erase: Some(&erase),
        tenant_region: tenant_region.as_deref(),
        run_id: &run_id,
        concurrency: usize::from(concurrency),
        base_dir: &base_dir,
        lineage: lineage.as_ref(),
        platform,
    };
    audit.record("run.started", Outcome::Success, None, None);
    let reread = || async { Ok(dir.snapshot(&connector.spec)) };
    let progress = Arc::new(Progress::default());
    let result = job::execute_with_rotation(job, secrets, reread, &audit, progress).await;
    match &result {
        Ok(report) => {
            audit.record("run.finished", Outcome::Success, None, None);
            print_report(job.mode, report);
            Ok(())
        }
        Err(f) => {
            audit.record("run.finished", Outcome::Failure, Some(f.reason), None);
            Err(f.message.clone().into())
        }
    }
}

fn print_report(mode: Mode, report: &transfer::Report) {
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
            println!(
                "erase: {} key(s) erased; manifest {}",
                report.erased.len(),
                report.manifest.as_deref().unwrap_or("-")
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
            "copied {} object(s) ({} bytes, {} encrypted), skipped {} unchanged; manifest {}",
            report.objects_copied,
            report.bytes_read,
            report.bytes_written,
            report.objects_skipped,
            report.manifest.as_deref().unwrap_or("-")
        ),
    }
}

/// `job-runner cluster`: one attempt of a ConnectorRun, in its pod.
async fn cluster(args: ClusterArgs, platform: &config::Platform) -> Result<(), BoxError> {
    let run = RunRef {
        namespace: args.namespace,
        name: args.run,
        attempt: args.attempt,
        spec_hash: args.spec_hash,
    };
    let client = kube::Client::try_default()
        .await
        .map_err(|e| format!("failed to reach the Kubernetes API: {e}"))?;
    let settings = cluster::Settings {
        tenant_region: args.tenant_region,
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

async fn decrypt_file(
    keys: Arc<KeyRing>,
    file: PathBuf,
    object_key: String,
    out: PathBuf,
) -> Result<(), BoxError> {
    let (folder, name) = split_file(&file, "--file")?;
    let input = folder.get(&name, None).await?;
    let mut plain = readback::decrypt_stream(input, keys, object_key.clone());
    if out.as_os_str() == "-" {
        let mut stdout = tokio::io::stdout();
        while let Some(chunk) = plain.next().await {
            let chunk = chunk.map_err(|e| format!("object {object_key:?}: {e}"))?;
            stdout.write_all(&chunk).await?;
        }
        stdout.flush().await?;
        return Ok(());
    }
    let (out_folder, out_name) = split_file(&out, "--out")?;
    let n = out_folder
        .put(&out_name, plain)
        .await
        .map_err(|e| format!("object {object_key:?}: {e}"))?;
    println!("decrypted {object_key} ({n} bytes) to {}", out.display());
    Ok(())
}

fn keygen(
    out: Option<PathBuf>,
    secret: Option<String>,
    namespace: Option<String>,
    key: String,
    force: bool,
) -> Result<(), BoxError> {
    let kek = Kek::generate()?;
    if let Some(path) = out {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true);
        if force {
            opts.create(true).truncate(true);
        } else {
            opts.create_new(true);
        }
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        let mut f = opts.open(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => {
                format!("{} exists: refusing to replace a key (data encrypted under it would be lost); use --force", path.display())
            }
            _ => format!("failed to create {}: {e}", path.display()),
        })?;
        f.write_all(kek.to_base64().as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        eprintln!(
            "wrote a new key-encryption key (id {}) to {}",
            kek.id(),
            path.display()
        );
        return Ok(());
    }
    let name = secret.ok_or("give --out or --secret")?;
    let ns = namespace
        .map(|n| format!("  namespace: {n}\n"))
        .unwrap_or_default();
    let mut stdout = std::io::stdout().lock();
    write!(
        stdout,
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n{ns}  labels:\n    {}: \"{}\"\n  annotations:\n    ferry.dev/kek-id: \"{}\"\ntype: Opaque\ndata:\n  {key}: ",
        ferry_crds::SECRET_OPT_IN_LABEL,
        ferry_crds::SECRET_OPT_IN_VALUE,
        kek.id()
    )?;
    // base64 of the base64 text: the Secret's data holds the key file's content.
    use base64::Engine;
    let encoded = zeroize::Zeroizing::new(
        base64::engine::general_purpose::STANDARD.encode(kek.to_base64().as_bytes()),
    );
    stdout.write_all(encoded.as_bytes())?;
    stdout.write_all(b"\n")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use log::Log as _;

    use super::LogBridge;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| std::io::Error::other("poisoned"))?
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn log_records_reach_tracing_except_russhs_packet_size_error() {
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .finish();
        let bridge = LogBridge(tracing_log::LogTracer::new());
        let emit = |level, target, args: std::fmt::Arguments<'_>| {
            bridge.log(
                &log::Record::builder()
                    .level(level)
                    .target(target)
                    .args(args)
                    .build(),
            );
        };
        tracing::subscriber::with_default(subscriber, || {
            use log::Level::{Error, Info};
            emit(
                Error,
                "russh::client",
                format_args!(
                    "Maximum packet size ({:?}) should not larger than a TCP packet (65535)",
                    262_144
                ),
            );
            emit(Error, "russh::client", format_args!("connection reset"));
            emit(
                Error,
                "other",
                format_args!("Maximum packet size elsewhere"),
            );
            emit(
                Info,
                "russh::client",
                format_args!("Maximum packet size (info)"),
            );
        });
        let logged = out.0.lock().map(|b| b.clone()).unwrap_or_default();
        let logged = String::from_utf8_lossy(&logged);
        assert!(!logged.contains("TCP packet"), "{logged}");
        assert!(logged.contains("connection reset"), "{logged}");
        assert!(logged.contains("elsewhere"), "{logged}");
        assert!(logged.contains("(info)"), "{logged}");
    }
}
