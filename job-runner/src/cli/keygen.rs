//! `job-runner keygen`: a new key-encryption key, as a file or a Secret.

use std::io::Write;
use std::path::PathBuf;

use crate::crypto::Kek;

use super::BoxError;

/// Arguments of `job-runner keygen`.
#[derive(clap::Args)]
pub struct KeygenArgs {
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
}

/// `job-runner keygen`.
pub fn keygen(args: KeygenArgs) -> Result<(), BoxError> {
    let KeygenArgs {
        out,
        secret,
        namespace,
        key,
        force,
    } = args;
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
