//! `job-runner keygen`: a new key-encryption key, or a manifest signing key,
//! as a file or a Secret.

use std::io::Write;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::crypto::{Kek, ManifestSigner};

use super::BoxError;

/// Arguments of `job-runner keygen`.
#[derive(clap::Args)]
pub struct KeygenArgs {
    /// Write the key to this file, readable by its owner only (a KEK as
    /// base64; a signing key as PKCS#8 PEM, its public key next to it as
    /// FILE.pub).
    #[arg(long, conflicts_with = "secret", required_unless_present = "secret")]
    out: Option<PathBuf>,
    /// Print a Kubernetes Secret manifest with this name instead.
    #[arg(long)]
    secret: Option<String>,
    /// Namespace of the Secret.
    #[arg(long, requires = "secret")]
    namespace: Option<String>,
    /// Key inside the Secret (default `kek`, or `signing-key` with --signing).
    #[arg(long)]
    key: Option<String>,
    /// Make an Ed25519 manifest signing key (`encryption.signingKeyRef`)
    /// instead of a KEK; its public key is what auditors verify with.
    #[arg(long)]
    signing: bool,
    /// With --signing: write the public key (PEM) here (with --out, the
    /// default is FILE.pub; with --secret, it is printed on stderr).
    #[arg(long, requires = "signing")]
    public_out: Option<PathBuf>,
    /// Replace an existing key file (its data becomes unreadable without a copy).
    #[arg(long)]
    force: bool,
}

/// `job-runner keygen`.
pub fn keygen(args: KeygenArgs) -> Result<(), BoxError> {
    if args.signing {
        return signing_key(args);
    }
    let kek = Kek::generate()?;
    let text = Zeroizing::new(format!("{}\n", kek.to_base64().as_str()));
    if let Some(path) = &args.out {
        write_private(path, text.as_bytes(), args.force)?;
        eprintln!(
            "wrote a new key-encryption key (id {}) to {}",
            kek.id(),
            path.display()
        );
        return Ok(());
    }
    print_secret(&args, "kek", ("ferry.dev/kek-id", kek.id()), text.trim())
}

fn signing_key(args: KeygenArgs) -> Result<(), BoxError> {
    let signer = ManifestSigner::generate()?;
    let pem = signer.to_pem()?;
    let public = signer.public().to_pem()?;
    let id = signer.public().id();
    let public_out = args.public_out.clone().or_else(|| {
        args.out.as_ref().map(|p| {
            let mut name = p.as_os_str().to_owned();
            name.push(".pub");
            PathBuf::from(name)
        })
    });
    if let Some(path) = &public_out {
        write_file(path, public.as_bytes(), args.force, 0o644)?;
        eprintln!(
            "wrote the public key (id {id}) to {}: give it to whoever verifies the records",
            path.display()
        );
    }
    if let Some(path) = &args.out {
        write_private(path, pem.as_bytes(), args.force)?;
        eprintln!(
            "wrote a new manifest signing key (id {id}) to {}",
            path.display()
        );
        return Ok(());
    }
    print_secret(
        &args,
        "signing-key",
        ("ferry.dev/signing-key-id", id),
        pem.as_str(),
    )?;
    if public_out.is_none() {
        eprint!("public key (id {id}), for whoever verifies the records:\n{public}");
    }
    Ok(())
}

/// Prints a Secret holding `content` under the chosen key.
fn print_secret(
    args: &KeygenArgs,
    default_key: &str,
    (annotation, id): (&str, &str),
    content: &str,
) -> Result<(), BoxError> {
    let name = args.secret.as_deref().ok_or("give --out or --secret")?;
    let key = args.key.as_deref().unwrap_or(default_key);
    let ns = args
        .namespace
        .as_deref()
        .map(|n| format!("  namespace: {n}\n"))
        .unwrap_or_default();
    let mut stdout = std::io::stdout().lock();
    write!(
        stdout,
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n{ns}  labels:\n    {}: \"{}\"\n  annotations:\n    {annotation}: \"{id}\"\ntype: Opaque\ndata:\n  {key}: ",
        ferry_crds::SECRET_OPT_IN_LABEL,
        ferry_crds::SECRET_OPT_IN_VALUE,
    )?;
    // The Secret's data holds what the key file would.
    use base64::Engine;
    let encoded = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(content));
    stdout.write_all(encoded.as_bytes())?;
    stdout.write_all(b"\n")?;
    Ok(())
}

fn write_private(path: &Path, content: &[u8], force: bool) -> Result<(), BoxError> {
    write_file(path, content, force, 0o600)
}

fn write_file(path: &Path, content: &[u8], force: bool, mode: u32) -> Result<(), BoxError> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true);
    if force {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, mode);
    #[cfg(not(unix))]
    let _ = mode;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let mut f = opts.open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => {
            format!("{} exists: refusing to replace a key (what it protects or signs would be lost); use --force", path.display())
        }
        _ => format!("failed to create {}: {e}", path.display()),
    })?;
    f.write_all(content)?;
    f.sync_all()?;
    Ok(())
}
