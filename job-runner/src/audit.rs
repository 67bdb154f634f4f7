//! The runner's audit trail: one line per security-relevant action, in the
//! schema both the operator and the runner write ([`ferry_crds::AuditRecord`]).
//! The lines also go, byte for byte, to a copy that a run streams to its
//! destination, encrypted, next to its manifest ([`AuditLog::start_copy`]).

use std::io::Write;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use ferry_crds::Attribution;
pub use ferry_crds::contract::Outcome;
use ferry_crds::contract::{Actor, AuditRecord, AuditSink};

/// Lines kept before the copy starts: the few a run writes before its
/// transfer (start, Secrets, policy). Past this, as in a plan run that lists
/// every object and writes no manifest, no copy is made.
const EARLY_LINES: usize = 256 * 1024;

/// Where the copy of the lines stands.
enum Copy {
    /// Not started: the lines so far.
    Early(Vec<u8>),
    /// Streaming to the destination.
    Sending(UnboundedSender<Bytes>),
    /// Ended, or given up.
    Off,
}

/// The audit output, and every byte written to it also to the copy.
struct Tee {
    out: Box<dyn Write + Send>,
    copy: Arc<Mutex<Copy>>,
}

impl Write for Tee {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.out.write(buf)?;
        let mut copy = self.copy.lock().unwrap_or_else(|e| e.into_inner());
        match &mut *copy {
            Copy::Early(lines) if lines.len() + n <= EARLY_LINES => {
                lines.extend_from_slice(&buf[..n]);
            }
            Copy::Early(_) => *copy = Copy::Off,
            Copy::Sending(tx) => {
                if tx.send(Bytes::copy_from_slice(&buf[..n])).is_err() {
                    *copy = Copy::Off;
                }
            }
            Copy::Off => {}
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// Where audit lines go, with the fields common to a run.
#[derive(Clone)]
pub struct AuditLog {
    sink: AuditSink,
    copy: Arc<Mutex<Copy>>,
    pub connector: String,
    pub tenant: String,
    pub run: String,
    pub source: String,
    pub destination: String,
    /// Who asked for the run, as the operator recorded it.
    pub attribution: Attribution,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("run", &self.run)
            .finish_non_exhaustive()
    }
}

impl AuditLog {
    /// An audit log writing to `out`.
    pub fn new(
        out: Box<dyn Write + Send>,
        connector: &str,
        tenant: &str,
        run: &str,
        source: &str,
        destination: &str,
    ) -> Self {
        let copy = Arc::new(Mutex::new(Copy::Early(Vec::new())));
        let out = Box::new(Tee {
            out,
            copy: copy.clone(),
        });
        Self {
            sink: AuditSink::new(&format!("runner/{tenant}/{run}"), out),
            copy,
            connector: connector.into(),
            tenant: tenant.into(),
            run: run.into(),
            source: source.into(),
            destination: destination.into(),
            attribution: Attribution::default(),
        }
    }

    /// Starts the copy of this log: every line so far, then each line as it
    /// is written, until [`AuditLog::end_copy`]. `None` when there is no copy
    /// to make (already started, or too many lines went by before it).
    pub fn start_copy(&self) -> Option<UnboundedReceiver<Bytes>> {
        let mut copy = self.copy.lock().unwrap_or_else(|e| e.into_inner());
        let Copy::Early(early) = &mut *copy else {
            return None;
        };
        let early = std::mem::take(early);
        let (tx, rx) = unbounded_channel();
        tx.send(Bytes::from(early)).ok()?;
        *copy = Copy::Sending(tx);
        Some(rx)
    }

    /// Ends the copy: the stream of lines ends here.
    pub fn end_copy(&self) {
        *self.copy.lock().unwrap_or_else(|e| e.into_inner()) = Copy::Off;
    }

    /// Writes one record. An audit line that cannot be written is reported on
    /// stderr: losing it silently would defeat its purpose.
    pub fn record(
        &self,
        action: &str,
        outcome: Outcome,
        reason: Option<&str>,
        object: Option<&str>,
    ) {
        let record = AuditRecord {
            timestamp: jiff::Timestamp::now().to_string(),
            action: action.into(),
            outcome,
            reason: reason.map(str::to_string),
            connector: self.connector.clone(),
            tenant: self.tenant.clone(),
            run: self.run.clone(),
            source: self.source.clone(),
            destination: self.destination.clone(),
            object: object.map(str::to_string),
            actor: Actor::Runner,
            attribution: self.attribution.clone(),
        };
        self.sink.record(&record);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log() -> AuditLog {
        AuditLog::new(
            Box::new(std::io::sink()),
            "c",
            "t",
            "r",
            "local:a",
            "local:b",
        )
    }

    #[tokio::test]
    async fn the_copy_holds_every_line_from_the_first_until_it_ends() {
        let audit = log();
        audit.record("run.started", Outcome::Success, None, None);
        let mut rx = audit.start_copy().expect("a copy");
        assert!(audit.start_copy().is_none(), "one copy per run");
        audit.record("object.copy", Outcome::Success, None, Some("a.csv"));
        audit.end_copy();
        audit.record("run.finished", Outcome::Success, None, None);
        let mut text = Vec::new();
        while let Some(b) = rx.recv().await {
            text.extend_from_slice(&b);
        }
        let text = String::from_utf8(text).unwrap();
        let actions: Vec<_> = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["action"].clone())
            .collect();
        assert_eq!(actions, ["run.started", "object.copy"]);
        ferry_crds::contract::verify_audit(&text).unwrap();
    }

    #[test]
    fn no_copy_is_kept_in_memory_for_a_run_that_never_starts_one() {
        let audit = log();
        let key = "k".repeat(1024);
        for _ in 0..(EARLY_LINES / 1024 + 1) {
            audit.record("object.refused", Outcome::Denied, None, Some(&key));
        }
        assert!(audit.start_copy().is_none());
    }
}
