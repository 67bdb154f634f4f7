//! The runs the Connector controller reads: one cache of ConnectorRuns per
//! scope, filled by the very watch that wakes the controller.
//!
//! Each event is applied to the cache before it reaches the controller's
//! queue, so a reconcile woken by a run's change always sees that change.
//! The cache says it is filled on a channel every waiter hears (kube-runtime's
//! own `Store::wait_until_ready` wakes only the last task that waited, and the
//! controller's own applier is one of them), and a reconcile that starts before
//! the first list has arrived waits for it, for at most [`SYNC_TIMEOUT`].

use std::time::Duration;

use ferry_crds::ConnectorRun;
use futures::{Stream, TryStreamExt};
use kube::Api;
use kube::ResourceExt;
use kube::core::DeserializeGuard;
use kube::runtime::reflector::{self, Store, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;

/// A run as the cache holds it: one that cannot be read is kept, and skipped
/// by readers.
pub type CachedRun = DeserializeGuard<ConnectorRun>;

/// How long a reconcile waits for the first list of runs.
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(30);

/// The runs of every scope, as the Connector controllers read them.
#[derive(Clone)]
pub struct RunCache {
    scopes: Vec<Scope>,
    timeout: Duration,
}

#[derive(Clone)]
struct Scope {
    namespace: Option<String>,
    store: Store<CachedRun>,
    filled: watch::Receiver<bool>,
}

/// What fills the cache of one scope: consumed by that scope's watch.
pub struct RunFeed {
    writer: Writer<CachedRun>,
    filled: watch::Sender<bool>,
}

/// The cache of a namespace has not been filled in time.
#[derive(Debug, thiserror::Error)]
#[error("the runs of namespace {namespace:?} were not listed within {waited:?}")]
pub struct NotFilled {
    /// The namespace asked for.
    pub namespace: String,
    /// How long the reconcile waited.
    pub waited: Duration,
}

impl RunCache {
    /// An empty cache for each scope (`None`: every namespace), and the feeds
    /// that fill them, in the same order.
    pub fn new(scopes: &[Option<String>]) -> (Self, Vec<RunFeed>) {
        let (scopes, feeds) = scopes
            .iter()
            .map(|namespace| {
                let (store, writer) = reflector::store();
                let (filled, heard) = watch::channel(false);
                (
                    Scope {
                        namespace: namespace.clone(),
                        store,
                        filled: heard,
                    },
                    RunFeed { writer, filled },
                )
            })
            .unzip();
        (
            Self {
                scopes,
                timeout: SYNC_TIMEOUT,
            },
            feeds,
        )
    }

    /// The readable runs in `namespace`, once its cache has been filled. A
    /// namespace outside every scope has none.
    pub async fn runs_in(&self, namespace: &str) -> Result<Vec<ConnectorRun>, NotFilled> {
        let mut runs = Vec::new();
        for scope in self.scopes.iter().filter(|s| s.covers(namespace)) {
            let mut filled = scope.filled.clone();
            match tokio::time::timeout(self.timeout, filled.wait_for(|f| *f)).await {
                Ok(Ok(_)) => {}
                _ => {
                    return Err(NotFilled {
                        namespace: namespace.to_string(),
                        waited: self.timeout,
                    });
                }
            }
            runs.extend(
                scope
                    .store
                    .state()
                    .iter()
                    .filter_map(|r| r.0.as_ref().ok())
                    .filter(|r| r.namespace().as_deref() == Some(namespace))
                    .cloned(),
            );
        }
        Ok(runs)
    }
}

impl Scope {
    fn covers(&self, namespace: &str) -> bool {
        self.namespace.as_deref().is_none_or(|n| n == namespace)
    }
}

impl RunFeed {
    /// Applies one watch event to the cache; the end of a (re)list marks it
    /// filled.
    pub fn apply(&mut self, event: &watcher::Event<CachedRun>) {
        self.writer.apply_watcher_event(event);
        if matches!(event, watcher::Event::InitDone) {
            self.filled.send_replace(true);
        }
    }

    /// Replaces the cache's content with `runs`, as a (re)list by the watch
    /// does, and marks it filled.
    pub fn relist(&mut self, runs: impl IntoIterator<Item = ConnectorRun>) {
        self.apply(&watcher::Event::Init);
        for run in runs {
            self.apply(&watcher::Event::InitApply(DeserializeGuard(Ok(run))));
        }
        self.apply(&watcher::Event::InitDone);
    }

    /// Watches the runs of `api` into the cache and yields each run touched,
    /// after the cache holds it: the trigger stream of a controller.
    pub fn watch(
        mut self,
        api: Api<CachedRun>,
    ) -> impl Stream<Item = Result<CachedRun, watcher::Error>> + Send + 'static {
        watcher(api, watcher::Config::default())
            .default_backoff()
            .map_ok(move |event| {
                self.apply(&event);
                event
            })
            .touched_objects()
    }
}

/// A cache over `runs` alone, already filled: what a controller reads once its
/// watch has listed them.
pub fn filled_with(
    scope: Option<String>,
    runs: impl IntoIterator<Item = ConnectorRun>,
) -> RunCache {
    let (cache, mut feeds) = RunCache::new(&[scope]);
    if let Some(feed) = feeds.first_mut() {
        feed.relist(runs);
    }
    cache
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connector::history::test_run;

    fn in_ns(name: &str, ns: &str) -> ConnectorRun {
        let mut r = test_run(name, None);
        r.metadata.namespace = Some(ns.into());
        r
    }

    #[tokio::test]
    async fn a_filled_cache_gives_the_runs_of_one_namespace() {
        let cache = filled_with(None, [in_ns("a", "acme"), in_ns("b", "globex")]);
        let names: Vec<String> = cache
            .runs_in("acme")
            .await
            .unwrap()
            .iter()
            .map(|r| r.name_any())
            .collect();
        assert_eq!(names, ["a"]);
        assert!(cache.runs_in("initech").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_namespace_outside_every_scope_has_no_runs() {
        let cache = filled_with(Some("acme".into()), [in_ns("a", "acme")]);
        assert!(cache.runs_in("globex").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn every_waiter_hears_the_cache_filled() {
        let (cache, mut feeds) = RunCache::new(&[None]);
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let cache = cache.clone();
                tokio::spawn(async move { cache.runs_in("acme").await.map(|r| r.len()) })
            })
            .collect();
        tokio::task::yield_now().await;
        feeds[0].relist([in_ns("a", "acme")]);
        for w in waiters {
            assert_eq!(w.await.unwrap().unwrap(), 1);
        }
    }

    #[tokio::test]
    async fn a_cache_never_filled_is_an_error_not_an_empty_list() {
        let (mut cache, feeds) = RunCache::new(&[None]);
        cache.timeout = Duration::from_millis(10);
        let err = cache.runs_in("acme").await.unwrap_err();
        assert_eq!(err.namespace, "acme");
        drop(feeds);
        cache.timeout = SYNC_TIMEOUT;
        assert!(
            cache.runs_in("acme").await.is_err(),
            "a watch that ended unfilled"
        );
    }
}
