//! The runner's logs: text or JSON on stderr, RUST_LOG with the libraries that
//! see credentials capped, and `log` records (russh's) passed on to tracing.

use clap::ValueEnum;

/// Log format on stderr.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Libraries that hold credentials or see signed requests and log them at
/// debug or trace level (the AWS SDK logs the access key id and the signed
/// request; the Kubernetes client and its HTTP layers see the run's token and
/// the Secrets it fetches; the Vault client sees the run's login token and the
/// secrets it reads): capped at info whatever RUST_LOG asks.
pub const CREDENTIAL_HANDLERS: [&str; 26] = [
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
    "rustify",
    "rustls",
    "tokio_rustls",
    "tower",
    "tower_http",
    "vaultrs",
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
pub fn init_logging(format: LogFormat) {
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
