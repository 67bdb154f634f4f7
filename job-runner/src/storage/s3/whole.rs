//! Whole-object reads: one streamed GET, or concurrent ranged GETs, chosen
//! per object by measuring both.
//!
//! One S3 connection delivers far less than AWS can (AWS's performance guide
//! recommends concurrent ranged GETs for large objects), but on a store that is
//! fast per connection the ranges cost more than they bring: on s3s-fs here,
//! s3->sftp with four 4 MiB ranges in flight took 3.3-3.5 s per 512 MiB, with
//! one stream 2.5-2.8 s. So every object starts as one streamed GET. At the end
//! of each window (16 MiB) but the first, which also pays for the request's
//! start, the reader checks whether the stream kept it waiting more than half
//! of the time; if so, the next window is fetched as ranges. They stay for the
//! rest of the object only when they were at least 1.5 times as fast as the
//! stream over all its windows but the first (at least two), not just its
//! last one. Otherwise the stream is reopened where the ranges stopped, and
//! ranges are tried again at the earliest eight windows later, then 16, 32
//! and 64 after each further trial lost: a store's pace changes during a long
//! read, but one that lost twice rarely turns.
//!
//! Every request after the first is pinned to the first one's ETag, so an
//! object replaced mid-read fails as `ChangedDuringRead` instead of splicing
//! two versions; an object without an ETag is only ever streamed.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream as SdkBody;
use bytes::Bytes;
use futures::StreamExt;
use futures::channel::mpsc;

use super::S3Store;
use crate::storage::StorageError;

/// Size of one ranged GET.
pub(super) const READ_RANGE: u64 = 4 << 20;
/// Ranges fetched at once, each on its own connection, ahead of the reader.
const RANGES_IN_FLIGHT: usize = 4;
/// After ranges lost a trial, this many windows are streamed before they are
/// tried again: a store's pace changes during a long read. The wait doubles
/// with each trial lost, up to `RETRY_AFTER << MAX_BACKOFF`.
const RETRY_AFTER: u32 = 8;
/// Lost trials after which the wait stops doubling.
const MAX_BACKOFF: u32 = 3;
/// Windows a stream's measured run must cover before ranges are set against
/// it: on s3s-fs here single windows took 40-170 ms, and ranges kept for
/// beating one slow window read s3->sftp 15% slower than the stream (1 GiB:
/// median 6.0 s against 5.1 s).
const MIN_RUN: u64 = 2;
/// A fetched range is handed on in slices of this size.
pub(super) const HANDOFF_SLICE: usize = 256 * 1024;

/// How whole objects are read. The default measures; tests and benchmarks can
/// pin either decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadTuning {
    /// Bytes streamed before ranges are considered, and fetched as ranges
    /// when they are tried.
    pub window: u64,
    /// Try ranges once the stream has a measured run; `None` decides by
    /// whether the stream kept the reader waiting.
    pub try_ranges: Option<bool>,
    /// Keep ranges after the trial window; `None` decides by comparing their
    /// rate with the stream's.
    pub keep_ranges: Option<bool>,
}

impl Default for ReadTuning {
    fn default() -> Self {
        Self {
            window: 16 << 20,
            try_ranges: None,
            keep_ranges: None,
        }
    }
}

/// The stream kept its reader waiting for more than half of the time: the
/// store, not what is done with the data, sets the pace.
fn stream_held_back(elapsed: Duration, waited: Duration) -> bool {
    waited * 2 > elapsed
}

/// Ranges delivered at least half as many bytes per second again as the
/// stream: enough to pay for their connections and buffers. A margin this wide
/// also absorbs the trial's bias: its ranges all start at once on fresh
/// requests, and on s3s-fs here ranges that won a trial by 1.25-1.35 times
/// then read the rest of the object slower than the stream did. Each side is
/// (bytes, time taken).
fn ranges_faster(stream: (u64, Duration), ranges: (u64, Duration)) -> bool {
    let rate = |(bytes, took): (u64, Duration)| bytes as f64 / took.as_secs_f64().max(1e-9);
    rate(ranges) >= 1.5 * rate(stream)
}

/// Where a whole read stands in choosing how to fetch.
enum Phase {
    /// Streaming the window that started at `from`: since when, and how long
    /// the reader waited for data in all. `since_trial` counts the windows
    /// streamed since ranges were last tried (or since the start). `run` is
    /// where and when the stream's measured run began: at the end of its
    /// first window, which also pays for the request's start (first byte,
    /// TCP slow start); `None` during that window.
    Streaming {
        from: u64,
        started: Instant,
        waited: Duration,
        since_trial: u32,
        run: Option<(u64, Instant)>,
    },
    /// Fetching the window from `from` as ranges, to compare with what the
    /// stream did in its measured run (bytes, time taken).
    Trying {
        from: u64,
        started: Instant,
        stream: (u64, Duration),
    },
    /// Ranges won: they fetch the rest of the object.
    Ranges,
}

impl Phase {
    /// Streaming a new window from `from`, on a stream whose measured run
    /// began at `run` (`None`: the stream was just opened).
    fn streaming(from: u64, since_trial: u32, run: Option<(u64, Instant)>) -> Self {
        Phase::Streaming {
            from,
            started: Instant::now(),
            waited: Duration::ZERO,
            since_trial,
            run,
        }
    }
}

enum Source {
    Stream(SdkBody),
    Ranges(RangesAhead),
}

/// A whole object being read, in order.
pub(super) struct WholeRead {
    store: S3Store,
    full: String,
    key: String,
    etag: Option<String>,
    total: u64,
    /// Bytes handed on so far.
    offset: u64,
    source: Source,
    phase: Phase,
    /// An error was handed on: nothing follows it.
    failed: bool,
    /// Trials the ranges lost so far.
    lost_trials: u32,
}

impl WholeRead {
    /// A read of `total` bytes whose first GET answered with `body` and `etag`.
    pub(super) fn new(
        store: S3Store,
        full: String,
        key: String,
        etag: Option<String>,
        total: u64,
        body: SdkBody,
    ) -> Self {
        Self {
            store,
            full,
            key,
            etag,
            total,
            offset: 0,
            source: Source::Stream(body),
            // Ranges may be tried once the stream has a measured run.
            phase: Phase::streaming(0, RETRY_AFTER, None),
            failed: false,
            lost_trials: 0,
        }
    }

    /// The next chunk in object order; `None` at the end and after an error.
    pub(super) async fn next_chunk(&mut self) -> Option<Result<Bytes, StorageError>> {
        if self.failed {
            return None;
        }
        let item = self.pull().await;
        match &item {
            Some(Ok(chunk)) => {
                self.offset += chunk.len() as u64;
                self.choose();
            }
            Some(Err(_)) => self.failed = true,
            None => {}
        }
        item
    }

    fn changed(&self) -> StorageError {
        StorageError::ChangedDuringRead {
            endpoint: self.store.name.clone(),
            key: self.key.clone(),
        }
    }

    async fn pull(&mut self) -> Option<Result<Bytes, StorageError>> {
        loop {
            match &mut self.source {
                Source::Stream(body) => {
                    let asked = Instant::now();
                    let next = body.next().await;
                    if let Phase::Streaming { waited, .. } = &mut self.phase {
                        *waited += asked.elapsed();
                    }
                    return match next {
                        Some(Ok(chunk)) if self.offset + chunk.len() as u64 <= self.total => {
                            Some(Ok(chunk))
                        }
                        None if self.offset == self.total => None,
                        // More or less than the object's length.
                        Some(Ok(_)) | None => Some(Err(self.changed())),
                        Some(Err(e)) => Some(Err(StorageError::Unreachable {
                            endpoint: self.store.name.clone(),
                            reason: format!("reading {:?}: {e}", self.key),
                        })),
                    };
                }
                Source::Ranges(ranges) => match ranges.next_slice().await {
                    Some(item) => return Some(item),
                    None if self.offset >= self.total => return None,
                    // The trial window is read and the stream did better: it
                    // goes on where the ranges stopped.
                    None => {
                        let resumed = self
                            .store
                            .get_from(&self.full, &self.key, self.offset, self.etag.as_deref())
                            .await;
                        match resumed {
                            Ok(Some(out)) => self.source = Source::Stream(out.body),
                            Ok(None) => return Some(Err(self.changed())),
                            Err(e) => return Some(Err(e)),
                        }
                    }
                },
            }
        }
    }

    /// After each chunk: at the end of a window, decide how to go on.
    fn choose(&mut self) {
        let window = self.store.reads.window;
        match self.phase {
            Phase::Streaming {
                from,
                started,
                waited,
                since_trial,
                run,
            } if self.offset >= from + window => {
                self.judge_stream(from, started, waited, since_trial, run);
            }
            Phase::Trying {
                from,
                started,
                stream,
            } if self.offset >= from + window => self.judge_trial(from, started, stream),
            _ => {}
        }
    }

    /// A streamed window ended: go on streaming, or try ranges for the next
    /// window when the stream looks held back.
    fn judge_stream(
        &mut self,
        from: u64,
        started: Instant,
        waited: Duration,
        since_trial: u32,
        run: Option<(u64, Instant)>,
    ) {
        let tuning = self.store.reads;
        let window = tuning.window;
        let elapsed = started.elapsed();
        let since_trial = since_trial.saturating_add(1);
        // The stream's first window is not judged: it starts the run.
        let Some((run_from, run_started)) = run else {
            self.phase = Phase::streaming(
                self.offset,
                since_trial,
                Some((self.offset, Instant::now())),
            );
            return;
        };
        let held_back = tuning
            .try_ranges
            .unwrap_or_else(|| stream_held_back(elapsed, waited));
        let worth_it = self.total - self.offset >= 2 * window;
        let measured = self.offset - run_from >= MIN_RUN * window;
        let waited_enough = since_trial >= RETRY_AFTER << self.lost_trials.min(MAX_BACKOFF);
        let trial = match &self.etag {
            Some(etag) if held_back && worth_it && measured && waited_enough => Some(etag.clone()),
            _ => None,
        };
        tracing::debug!(
            key = %self.key,
            from,
            elapsed_ms = elapsed.as_millis() as u64,
            waited_ms = waited.as_millis() as u64,
            try_ranges = trial.is_some(),
            "whole read: window streamed"
        );
        let Some(etag) = trial else {
            self.phase = Phase::streaming(self.offset, since_trial, run);
            return;
        };
        // One slow window sets off a trial, but the ranges must beat
        // the stream's whole run.
        self.phase = Phase::Trying {
            from: self.offset,
            started: Instant::now(),
            stream: (self.offset - run_from, run_started.elapsed()),
        };
        // Dropping the body closes its connection.
        self.source = Source::Ranges(RangesAhead::new(
            self.store.clone(),
            self.full.clone(),
            self.key.clone(),
            etag,
            self.offset..self.offset + window,
        ));
    }

    /// A window fetched as ranges ended: keep ranges for the rest of the
    /// object if they beat the stream's run, else go back to streaming.
    fn judge_trial(&mut self, from: u64, started: Instant, stream: (u64, Duration)) {
        let elapsed = started.elapsed();
        let keep = self
            .store
            .reads
            .keep_ranges
            .unwrap_or_else(|| ranges_faster(stream, (self.offset - from, elapsed)));
        tracing::debug!(
            key = %self.key,
            from,
            stream_mib = stream.0 >> 20,
            stream_ms = stream.1.as_millis() as u64,
            ranges_mib = (self.offset - from) >> 20,
            ranges_ms = elapsed.as_millis() as u64,
            keep_ranges = keep,
            "whole read: ranges tried"
        );
        if keep {
            if let Source::Ranges(ranges) = &mut self.source {
                ranges.extend_to(self.total);
            }
            self.phase = Phase::Ranges;
        } else {
            // `pull` reopens the stream once the trial window is read.
            self.lost_trials += 1;
            self.phase = Phase::streaming(self.offset, 0, None);
        }
    }
}

/// Ranges of an object fetched ahead of the reader: up to `RANGES_IN_FLIGHT`
/// at once, each by a task of its own that hands its range on in slices as
/// they arrive, read oldest first, so the reader never waits for a whole range.
struct RangesAhead {
    store: S3Store,
    full: String,
    key: String,
    etag: String,
    /// Start of the next range to fetch.
    next: u64,
    /// Ranges are fetched up to here.
    until: u64,
    /// The ranges being fetched, oldest first, each with the bytes it still
    /// owes the reader.
    window: VecDeque<(mpsc::UnboundedReceiver<Result<Bytes, StorageError>>, u64)>,
}

impl RangesAhead {
    /// Starts fetching `bytes`.
    fn new(
        store: S3Store,
        full: String,
        key: String,
        etag: String,
        bytes: std::ops::Range<u64>,
    ) -> Self {
        let mut ahead = Self {
            store,
            full,
            key,
            etag,
            next: bytes.start,
            until: bytes.end,
            window: VecDeque::new(),
        };
        ahead.fill();
        ahead
    }

    /// Goes on fetching up to `end`.
    fn extend_to(&mut self, end: u64) {
        self.until = end;
        self.fill();
    }

    /// Starts ranges until `RANGES_IN_FLIGHT` are in flight or none is left.
    fn fill(&mut self) {
        while self.window.len() < RANGES_IN_FLIGHT && self.next < self.until {
            let range = self.next..(self.next + READ_RANGE).min(self.until);
            self.next = range.end;
            let owed = range.end - range.start;
            let (tx, rx) = mpsc::unbounded();
            let (store, full, key, etag) = (
                self.store.clone(),
                self.full.clone(),
                self.key.clone(),
                self.etag.clone(),
            );
            tokio::spawn(async move {
                let fetched = store.fetch_range(&full, &key, range, &etag, &tx).await;
                if let Err(e) = fetched {
                    // The reader may be gone already; then nobody is owed it.
                    let _ = tx.unbounded_send(Err(e));
                }
            });
            self.window.push_back((rx, owed));
        }
    }

    /// The next slice in object order; `None` once everything up to `until`
    /// was handed on.
    async fn next_slice(&mut self) -> Option<Result<Bytes, StorageError>> {
        loop {
            let (slices, owed) = self.window.front_mut()?;
            return Some(match slices.next().await {
                Some(Ok(slice)) => {
                    *owed = owed.saturating_sub(slice.len() as u64);
                    Ok(slice)
                }
                Some(Err(e)) => Err(e),
                // The task ended without its whole range and without an
                // error: it panicked, or the runtime is shutting down.
                None if *owed > 0 => Err(StorageError::Unreachable {
                    endpoint: self.store.name.clone(),
                    reason: format!("reading {:?}: a range fetch stopped early", self.key),
                }),
                None => {
                    self.window.pop_front();
                    self.fill();
                    continue;
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn ranges_are_tried_only_when_the_stream_kept_the_reader_waiting() {
        assert!(stream_held_back(100 * MS, 60 * MS));
        assert!(!stream_held_back(100 * MS, 50 * MS));
        assert!(!stream_held_back(100 * MS, Duration::ZERO));
    }

    /// With ranges forced, a whole read hands on the stream's first window and
    /// a measured run of `MIN_RUN` windows before it asks for a range. The
    /// ranges go to a server that answers no request, so the first byte they
    /// owe is an error.
    #[tokio::test]
    async fn ranges_are_tried_only_after_a_measured_run_of_the_stream() {
        use crate::storage::s3::{S3Auth, S3Config};
        const WINDOW: u64 = 1 << 20;
        let total = 6 * WINDOW;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("object.bin");
        std::fs::write(&path, vec![7u8; total as usize]).unwrap();
        let body = SdkBody::read_from()
            .path(&path)
            .buffer_size(64 << 10)
            .build()
            .await
            .unwrap();
        // Accepts connections and closes them unanswered.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = asked.clone();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                drop(conn);
            }
        });
        let store = S3Store::new(S3Config {
            bucket: "b".into(),
            prefix: String::new(),
            region: "us-east-1".into(),
            endpoint: Some(format!("http://127.0.0.1:{port}")),
            force_path_style: true,
            insecure_plain_http_on_loopback: true,
            network: Default::default(),
            auth: S3Auth::Static {
                access_key_id: zeroize::Zeroizing::new("id".into()),
                secret_access_key: zeroize::Zeroizing::new("secret".into()),
                session_token: None,
            },
            reads: ReadTuning {
                window: WINDOW,
                try_ranges: Some(true),
                keep_ranges: None,
            },
        })
        .unwrap();
        let mut read = WholeRead::new(
            store,
            "object.bin".into(),
            "object.bin".into(),
            Some("\"etag\"".into()),
            total,
            body,
        );
        let mut handed_on = 0u64;
        let err = loop {
            match read.next_chunk().await {
                Some(Ok(chunk)) => {
                    handed_on += chunk.len() as u64;
                    if handed_on < (1 + MIN_RUN) * WINDOW {
                        assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 0);
                    }
                }
                Some(Err(e)) => break e,
                None => panic!("the ranges' server answers nothing: the read cannot end"),
            }
        };
        assert_eq!(handed_on, (1 + MIN_RUN) * WINDOW, "{err}");
        assert!(asked.load(std::sync::atomic::Ordering::SeqCst) > 0);
    }

    #[test]
    fn ranges_are_kept_only_when_half_as_fast_again() {
        let stream = (16 << 20, 150 * MS);
        // The same bytes in 100 ms: 1.5 times the rate.
        assert!(ranges_faster(stream, (16 << 20, 100 * MS)));
        assert!(!ranges_faster(stream, (16 << 20, 101 * MS)));
        assert!(!ranges_faster(stream, (16 << 20, 150 * MS)));
        // Rates, not times: twice the bytes in 1.2 times the time is faster.
        assert!(ranges_faster(stream, (32 << 20, 180 * MS)));
        // A zero time does not divide by zero.
        assert!(ranges_faster(stream, (16 << 20, Duration::ZERO)));
        assert!(!ranges_faster((16 << 20, Duration::ZERO), (16 << 20, MS)));
    }
}
