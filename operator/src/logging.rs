//! The operator's logs: RUST_LOG (default `info,kube=warn`) with the libraries
//! that see Secrets capped whatever it asks.
//!
//! The operator reads Secrets' names and keys (never their values into its
//! own state), but its Kubernetes client and HTTP layers see whole response
//! bodies: at debug or trace they log them, and the Kubernetes client logs a
//! body it cannot decode at warn. A `RUST_LOG=trace` set to chase a bug must
//! not put a tenant's credentials in the log store.

/// Libraries that see the API server's responses (Secrets among them) or the
/// operator's token: capped at info.
pub const CREDENTIAL_HANDLERS: [&str; 12] = [
    "h2",
    "hyper",
    "hyper_util",
    "hyper_rustls",
    "kube",
    "kube_client",
    "kube_runtime",
    "reqwest",
    "rustls",
    "tokio_rustls",
    "tower",
    "tower_http",
];

/// The filter directives for `requested` (RUST_LOG; `None`: the default),
/// the caps last (later directives for the same target win).
pub fn filter_spec(requested: Option<&str>) -> String {
    let requested = requested
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .unwrap_or("info,kube=warn");
    format!("{requested},{}", caps())
}

fn caps() -> String {
    CREDENTIAL_HANDLERS
        .iter()
        .map(|t| format!("{t}=info"))
        // A response body the client cannot decode is logged at warn: for a
        // Secret, its values.
        .chain(["kube_client=error".to_string()])
        .collect::<Vec<_>>()
        .join(",")
}

/// The filter the operator logs through: RUST_LOG with the caps, or (RUST_LOG
/// that does not parse) `info` with the caps, said on stderr.
pub fn filter() -> tracing_subscriber::EnvFilter {
    let requested = std::env::var("RUST_LOG").ok();
    tracing_subscriber::EnvFilter::try_new(filter_spec(requested.as_deref())).unwrap_or_else(|e| {
        eprintln!("ferry-operator: ignoring RUST_LOG ({e}); logging at info");
        tracing_subscriber::EnvFilter::new(format!("info,{}", caps()))
    })
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

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

    fn logged(requested: Option<&str>, emit: impl FnOnce()) -> String {
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter_spec(requested)))
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, emit);
        let bytes = out.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    /// Attack: whoever sets the operator's RUST_LOG (a platform engineer
    /// chasing a bug, a values file) turns on trace for everything, and the
    /// Kubernetes client and HTTP layers log the Secrets they fetch. Capped:
    /// the libraries log at info at most, and the client's undecodable body
    /// not even at warn; the operator's own trace still comes out.
    #[test]
    fn rust_log_at_trace_does_not_log_the_secrets_the_client_reads() {
        for requested in [Some("trace"), Some("kube=trace,hyper=trace,debug"), None] {
            let out = logged(requested, || {
                tracing::trace!(target: "kube_client::client", "body: password=S3CRET-trace");
                tracing::debug!(target: "hyper_util::client", "body: password=S3CRET-debug");
                tracing::warn!(target: "kube_client::client", "undecodable: password=S3CRET-warn");
                tracing::debug!(target: "tower_http::trace", "headers: S3CRET-bearer");
                tracing::info!(target: "kube_runtime::controller", "reconciling ns/run");
            });
            assert!(!out.contains("S3CRET"), "{requested:?}: {out}");
            assert!(out.contains("reconciling ns/run"), "{requested:?}: {out}");
        }
        // Control: the operator's own debug output follows RUST_LOG.
        let out = logged(Some("trace"), || {
            tracing::trace!(target: "ferry_operator::run", "decided");
        });
        assert!(out.contains("decided"), "{out}");
        assert_eq!(filter_spec(Some("  ")), filter_spec(None));
    }
}
