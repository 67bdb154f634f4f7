//! `job-runner decrypt` and `job-runner verify`: reading back what Ferry wrote.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use crate::config::{self, SecretsDir};
use crate::crypto::{Anchor, Kek, KeyRing, PublicKey, PublicKeys};
use crate::readback::{self, Trust};
use crate::storage::ObjectStore;
use crate::storage::local::LocalStore;

use super::BoxError;

/// Arguments of `job-runner decrypt`.
#[derive(clap::Args)]
pub struct DecryptArgs {
    /// KEK files (raw, base64 or hex); give older keys too after a rotation.
    #[arg(long = "kek", required_unless_present = "kms")]
    keks: Vec<PathBuf>,
    #[command(flatten)]
    kms: KmsArgs,
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
}

/// Arguments of `job-runner verify`.
#[derive(clap::Args)]
pub struct VerifyArgs {
    /// KEK files (raw, base64 or hex): check the MACs (and, with --deep, the
    /// plaintexts).
    #[arg(long = "kek", required_unless_present_any = ["public_keys", "kms"])]
    keks: Vec<PathBuf>,
    #[command(flatten)]
    kms: KmsArgs,
    /// Public key files of the manifest signing key (PEM, or base64 of 32
    /// bytes): check the signatures, without the KEK. Give older keys too
    /// after a rotation.
    #[arg(long = "public-key")]
    public_keys: Vec<PathBuf>,
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
    /// The operator's record of the last manifest (SEQUENCE:LINK, the
    /// Connector's status.cursor): the chain must reach it.
    #[arg(long)]
    anchor: Option<Anchor>,
}

/// A KEK held by a KMS, for reading what runs wrote under it.
#[derive(clap::Args)]
pub struct KmsArgs {
    /// The KMS key that wrapped the run keys: `vault-transit:<mount>/<key>`
    /// (the Vault token is read from VAULT_TOKEN and needs only `update` on
    /// `<mount>/decrypt/<key>`) or `aws-kms:<region>/<key id>` (AWS keys from
    /// AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN, with
    /// `kms:Decrypt`; --aws-endpoint for a KMS elsewhere). Objects and
    /// manifests wrapped by any other key are refused.
    #[arg(long)]
    kms: Option<String>,
    /// The Vault (or OpenBao) address for --kms.
    #[arg(long, env = "VAULT_ADDR")]
    kms_addr: Option<String>,
}

/// The KEKs of the key files and, with `--kms`, run keys unwrapped by the KMS
/// as they are met (one call per run).
fn key_ring(
    keks: &[PathBuf],
    kms: &KmsArgs,
    platform: &config::Platform,
) -> Result<KeyRing, BoxError> {
    let ring = load_keys(keks)?;
    let Some(name) = &kms.kms else {
        return Ok(ring);
    };
    if name.starts_with("aws-kms:") {
        let key = crate::aws::AwsKms::for_reader(name, platform)?;
        return Ok(ring.with_kms(Arc::new(key)));
    }
    let addr = kms
        .kms_addr
        .as_deref()
        .ok_or("--kms needs the Vault address: --kms-addr or VAULT_ADDR")?;
    let token = zeroize::Zeroizing::new(
        std::env::var("VAULT_TOKEN")
            .map_err(|_| "--kms needs a Vault token with decrypt rights in VAULT_TOKEN")?,
    );
    let transit = crate::vault::VaultTransit::with_token(addr, &token, name)?;
    Ok(ring.with_kms(Arc::new(transit)))
}

/// `job-runner decrypt`: one object, or a whole destination checked against
/// its manifest.
pub async fn decrypt(args: DecryptArgs, platform: &config::Platform) -> Result<(), BoxError> {
    let keys = Arc::new(key_ring(&args.keks, &args.kms, platform)?);
    match (args.file, args.object_key) {
        (Some(file), Some(object_key)) => decrypt_file(keys, file, object_key, args.out).await,
        (None, _) => {
            let store = destination(args.dir, args.connector, args.secrets_dir, platform)?;
            let out = args.out;
            let (verified, bytes) = readback::decrypt_all(
                store.as_ref(),
                keys,
                args.manifest.as_deref(),
                &LocalStore::new(&out),
            )
            .await?;
            println!(
                "decrypted {} object(s), {bytes} bytes, from {} into {} (manifest of run {} verified)",
                verified.objects,
                store.describe(),
                out.display(),
                verified.manifest.run
            );
            Ok(())
        }
        (Some(_), None) => Err("--file needs --object-key".into()),
    }
}

/// `job-runner verify`: a destination against its signed manifest.
pub async fn verify(args: VerifyArgs, platform: &config::Platform) -> Result<(), BoxError> {
    let trust = Trust {
        keys: (!args.keks.is_empty() || args.kms.kms.is_some())
            .then(|| key_ring(&args.keks, &args.kms, platform))
            .transpose()?
            .map(Arc::new),
        public_keys: load_public_keys(&args.public_keys)?,
    };
    let store = destination(args.dir, args.connector, args.secrets_dir, platform)?;
    let chain = readback::verify_chain(store.as_ref(), trust.clone(), args.anchor.as_ref()).await?;
    let verified =
        readback::verify(store.as_ref(), trust, args.manifest.as_deref(), args.deep).await?;
    let (key, m) = (&verified.key, &verified.manifest);
    let signed = m
        .signature
        .as_ref()
        .filter(|_| !args.public_keys.is_empty())
        .map(|s| format!(", signed by {}", s.key_id))
        .unwrap_or_default();
    println!(
        "ok: {} object(s) match manifest {key} (run {}, key {}{signed}); {} manifest(s) form one chain{}",
        verified.objects,
        m.run,
        m.kek_id,
        chain.manifests,
        chain
            .newest
            .map(|a| format!(", newest {a}"))
            .unwrap_or_default()
    );
    if !chain.foreign.is_empty() {
        println!(
            "warning: {} file(s) under the manifests' folder are not this Connector's manifests and were passed over: {}",
            chain.foreign.len(),
            chain.foreign.join(", ")
        );
    }
    if !args.public_keys.is_empty() {
        println!(
            "{} manifest(s) signed; {} older unsigned manifest(s) not checked{}",
            chain.signed,
            chain.unchecked,
            if chain.unchecked > 0 {
                " (they predate signing: give --kek to check their MACs)"
            } else {
                ""
            }
        );
    }
    Ok(())
}

fn load_public_keys(paths: &[PathBuf]) -> Result<PublicKeys, BoxError> {
    let mut keys = Vec::new();
    for p in paths {
        let bytes = std::fs::read(p)
            .map_err(|e| format!("failed to read public key file {}: {e}", p.display()))?;
        keys.push(PublicKey::parse(&bytes).map_err(|e| format!("{}: {e}", p.display()))?);
    }
    Ok(PublicKeys::new(keys))
}

/// A file path as (the folder as a store, the file name as its key).
fn split_file(path: &Path, flag: &str) -> Result<(LocalStore, String), BoxError> {
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
