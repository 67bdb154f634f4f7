//! The `job-runner` command line: one module per command, all of them
//! sharing the global options (logging, the platform's settings).
//!
//! - `run`: run a Connector from a file, with Secrets from a folder (local mode).
//! - `cluster`: run one attempt of a ConnectorRun in its pod (cluster mode).
//! - `decrypt`: decrypt one object, or a whole destination with its manifest.
//! - `verify`: check a destination against its signed manifest.
//! - `keygen`: make a key-encryption key, as a file or a Kubernetes Secret.
//! - `audit verify`: check the chains of an audit stream.

pub mod audit;
pub mod cluster;
pub mod keygen;
pub mod local;
pub mod logging;
pub mod readback;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ferry_crds::contract::env;

use crate::config;
use crate::lineage;
use logging::LogFormat;

/// An error of a command, as printed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The whole command line.
#[derive(Parser)]
#[command(
    name = "job-runner",
    version,
    about = "Ferry's runner: moves data between stores, encrypted at rest"
)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = env::LOG_FORMAT)]
    log_format: LogFormat,
    /// STS endpoint for AWS web identity (set by the platform team; in a
    /// cluster, by the operator). Default: the official regional endpoint.
    #[arg(long, global = true, env = env::STS_ENDPOINT)]
    sts_endpoint: Option<String>,
    /// The endpoint of AWS Secrets Manager and KMS (https; plain http only on
    /// loopback); default: the official regional endpoints.
    #[arg(long, global = true, env = env::AWS_ENDPOINT)]
    aws_endpoint: Option<String>,
    /// Networks (CIDRs, comma separated) no connection may go to, besides
    /// link-local and the cloud metadata addresses, which are always denied,
    /// and private ranges, denied unless allowed; in a cluster, set by the
    /// operator.
    #[arg(long, global = true, env = env::DENIED_NETWORKS, value_delimiter = ',')]
    denied_networks: Vec<String>,
    /// How long the run may last (the pod's `activeDeadlineSeconds`; in a
    /// cluster, set by the operator): STS sessions end soon after.
    #[arg(long, global = true, env = env::ACTIVE_DEADLINE_SECONDS)]
    active_deadline_seconds: Option<u64>,
    /// Private networks (CIDRs, comma separated: RFC 1918, CGNAT, IPv6
    /// unique-local) connections may go to, e.g. an on-premises SFTP server;
    /// in a cluster, set by the operator.
    #[arg(long, global = true, env = env::ALLOWED_NETWORKS, value_delimiter = ',')]
    allowed_networks: Vec<String>,
    /// The platform's Vault or OpenBao, for credentials a Connector keeps
    /// there (`credentials.vault`); in a cluster, set by the operator.
    #[arg(long, global = true, env = env::VAULT_ADDR)]
    vault_addr: Option<String>,
    /// The role a run logs in to Vault as (JWT auth).
    #[arg(long, global = true, env = env::VAULT_ROLE, requires = "vault_addr")]
    vault_role: Option<String>,
    /// The mount of Vault's JWT auth method.
    #[arg(long, global = true, env = env::VAULT_AUTH_MOUNT, default_value = "jwt")]
    vault_auth_mount: String,
    /// The run's token for Vault (a projected ServiceAccount token in a pod).
    #[arg(long, global = true, env = env::VAULT_TOKEN_FILE, default_value = ferry_crds::contract::paths::VAULT_TOKEN_FILE)]
    vault_token_file: std::path::PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a Connector outside a cluster.
    Run(local::RunArgs),
    /// Run one attempt of a ConnectorRun inside its pod (started by the operator).
    Cluster(cluster::ClusterArgs),
    /// Decrypt one object (--file) or every object of a destination folder (--dir).
    Decrypt(readback::DecryptArgs),
    /// Verify a destination folder against its signed manifest.
    Verify(readback::VerifyArgs),
    /// Make a new random 256-bit key-encryption key.
    Keygen(keygen::KeygenArgs),
    /// Check audit lines: `audit verify FILE`.
    Audit(audit::AuditArgs),
}

/// Where lineage events go (runs touching streams tagged sensitive).
#[derive(clap::Args, Clone)]
pub struct LineageArgs {
    /// POST OpenLineage run events to this URL (https; http only to a loopback
    /// host with --lineage-allow-plain-loopback).
    #[arg(long, env = env::LINEAGE_URL, conflicts_with = "lineage_file")]
    lineage_url: Option<String>,
    /// Append OpenLineage run events to this file, one per line.
    #[arg(long, env = "FERRY_LINEAGE_FILE")]
    lineage_file: Option<PathBuf>,
    /// Allow an http:// lineage URL on a loopback host.
    #[arg(long, env = "FERRY_LINEAGE_ALLOW_PLAIN_LOOPBACK")]
    lineage_allow_plain_loopback: bool,
}

impl LineageArgs {
    pub fn sink(&self) -> Result<Option<lineage::Sink>, BoxError> {
        Ok(match (&self.lineage_url, &self.lineage_file) {
            (Some(url), _) => Some(lineage::Sink::http(url, self.lineage_allow_plain_loopback)?),
            (None, Some(path)) => Some(lineage::Sink::File(path.clone())),
            (None, None) => None,
        })
    }
}

/// Runs the command line: logging, the runtime, the platform's settings, then
/// the command.
pub fn main(cli: Cli) -> ExitCode {
    // Several TLS backends are compiled in through dependencies (ring for the
    // Kubernetes client, aws-lc-rs for SSH); the process-wide rustls default is ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    logging::init_logging(cli.log_format);
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
    let network = match crate::net::NetworkGuard::new(&cli.denied_networks, &cli.allowed_networks) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("job-runner: error: --denied-networks / --allowed-networks: {e}");
            return ExitCode::FAILURE;
        }
    };
    let vault = match (cli.vault_addr, cli.vault_role) {
        (Some(addr), Some(role)) => Some(crate::vault::VaultSettings::new(
            addr,
            cli.vault_auth_mount,
            role,
            cli.vault_token_file,
        )),
        (Some(_), None) => {
            eprintln!("job-runner: error: --vault-addr needs --vault-role");
            return ExitCode::FAILURE;
        }
        _ => None,
    };
    let platform = config::Platform {
        sts_endpoint: cli.sts_endpoint,
        aws_endpoint: cli.aws_endpoint,
        aws_token_file: None,
        network,
        vault,
        run_ends: cli
            .active_deadline_seconds
            .map(|s| std::time::Instant::now() + std::time::Duration::from_secs(s)),
    };
    match runtime.block_on(dispatch(cli.command, &platform)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("job-runner: error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(command: Command, platform: &config::Platform) -> Result<(), BoxError> {
    match command {
        Command::Run(args) => local::run(args, platform).await,
        Command::Cluster(args) => cluster::cluster(args, platform).await,
        Command::Decrypt(args) => readback::decrypt(args, platform).await,
        Command::Verify(args) => readback::verify(args, platform).await,
        Command::Keygen(args) => keygen::keygen(args),
        Command::Audit(args) => audit::audit(args),
    }
}
