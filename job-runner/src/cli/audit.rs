//! `job-runner audit verify`: checks that a stream of audit lines (the
//! operator's and the runners', as the log pipeline kept them, or the copy a
//! run left at its destination) forms unbroken chains, and names the first
//! line that does not.

use std::io::Read;
use std::path::PathBuf;

use ferry_crds::contract::verify_audit;

use super::BoxError;

/// Arguments of `job-runner audit`.
#[derive(clap::Args)]
pub struct AuditArgs {
    #[command(subcommand)]
    command: AuditCommand,
}

#[derive(clap::Subcommand)]
enum AuditCommand {
    /// Check the chains of an audit stream: every writer's lines numbered from
    /// 1 without a gap, each naming the SHA-256 of the one before.
    Verify {
        /// The audit lines (JSON, one per line; other log lines are left
        /// aside); `-` for stdin.
        file: PathBuf,
    },
}

/// `job-runner audit`.
pub fn audit(args: AuditArgs) -> Result<(), BoxError> {
    let AuditCommand::Verify { file } = args.command;
    let mut text = String::new();
    if file.as_os_str() == "-" {
        std::io::stdin().read_to_string(&mut text)?;
    } else {
        text = std::fs::read_to_string(&file)
            .map_err(|e| format!("failed to read {}: {e}", file.display()))?;
    }
    let verified = verify_audit(&text).map_err(|e| format!("audit chain broken at {e}"))?;
    println!(
        "ok: {} audit line(s) from {} writer(s) form unbroken chains ({} other line(s) left aside)",
        verified.lines, verified.writers, verified.ignored
    );
    Ok(())
}
