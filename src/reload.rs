//! Reload triggers: SIGHUP, and changes to any file the snapshot was built from.
//!
//! This module decides *when* to rebuild; [`crate::snapshot::SnapshotStore::reload`] decides
//! *whether* the result may serve. Rebuilds run on the blocking pool, one at a time, so the
//! query path never waits. A burst of file events (editors write, rename and chmod in quick
//! succession) is folded into one reload.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use notify::{RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use crate::{
    dns::notify::Notifier,
    metrics::Metrics,
    snapshot::{ReloadOutcome, SnapshotStore},
};

/// How long the files must stay quiet before a change triggers a reload.
const SETTLE: Duration = Duration::from_millis(150);

/// Runs until `shutdown` turns true. Zones whose serial a reload changed are announced to
/// their `notify` secondaries (RFC 1996).
pub async fn run(
    store: Arc<SnapshotStore>,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
) {
    run_with_notifier(store, metrics, Arc::new(Notifier::default()), shutdown).await
}

/// [`run`] with the caller's [`Notifier`] (to expose its metrics).
pub async fn run_with_notifier(
    store: Arc<SnapshotStore>,
    metrics: Arc<Metrics>,
    notifier: Arc<Notifier>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(signal) => Some(signal),
        Err(error) => {
            warn!(%error, "cannot listen for SIGHUP; reload on file change only");
            None
        }
    };
    let (events_tx, mut events) = mpsc::channel::<()>(64);
    let mut watch = FileWatch::new(events_tx);
    watch.follow(&store.load().watched_files());

    loop {
        tokio::select! {
            Some(()) = recv_hangup(&mut hangup) => {
                info!("SIGHUP: reloading");
            }
            Some(()) = events.recv() => {
                // Fold the burst: wait until nothing has changed for SETTLE.
                while let Ok(Some(())) = tokio::time::timeout(SETTLE, events.recv()).await {}
                info!("configuration files changed: reloading");
            }
            _ = shutdown.changed() => return,
        }
        let before = store.load_full();
        let reloading = store.clone();
        let outcome = match tokio::task::spawn_blocking(move || reloading.reload()).await {
            Ok(outcome) => outcome,
            Err(join_error) => {
                error!(%join_error, "reload task failed; still serving the previous snapshot");
                metrics.reload_rejected();
                continue;
            }
        };
        match outcome {
            ReloadOutcome::Loaded { generation, took } => {
                info!(generation, took_ms = took.as_millis() as u64, "reloaded");
                metrics.reload_loaded(generation);
                let after = store.load_full();
                watch.follow(&after.watched_files());
                notifier.after_reload(&before.zones, &after.zones, &after.config.zones);
            }
            ReloadOutcome::Rejected(error) => {
                error!(%error, "reload rejected; still serving the previous snapshot");
                metrics.reload_rejected();
            }
        }
    }
}

async fn recv_hangup(signal: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match signal {
        Some(signal) => signal.recv().await,
        None => std::future::pending().await,
    }
}

/// Watches the folders of the snapshot's files (not the files: editors and `mv` replace them,
/// which would silently end a watch on the old inode) and reports changes to those files.
struct FileWatch {
    watcher: Option<notify::RecommendedWatcher>,
    files: Arc<std::sync::RwLock<HashSet<PathBuf>>>,
    folders: HashSet<PathBuf>,
}

impl FileWatch {
    fn new(events: mpsc::Sender<()>) -> FileWatch {
        let files: Arc<std::sync::RwLock<HashSet<PathBuf>>> = Arc::default();
        let seen = files.clone();
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let Ok(event) = event else { return };
            if matches!(event.kind, notify::EventKind::Access(_)) {
                return;
            }
            let files = seen.read().unwrap_or_else(|p| p.into_inner());
            if event
                .paths
                .iter()
                .any(|p| files.contains(p) || is_atomic_swap(p))
            {
                // Full channel: a reload is already pending, which will see this change too.
                let _ = events.try_send(());
            }
        });
        let watcher = match watcher {
            Ok(watcher) => Some(watcher),
            Err(error) => {
                warn!(%error, "cannot watch files; reload on SIGHUP only");
                None
            }
        };
        FileWatch {
            watcher,
            files,
            folders: HashSet::new(),
        }
    }

    fn follow(&mut self, files: &[PathBuf]) {
        let Some(watcher) = &mut self.watcher else {
            return;
        };
        let absolute: HashSet<PathBuf> = files.iter().map(|f| absolute(f)).collect();
        let folders: HashSet<PathBuf> = absolute
            .iter()
            .filter_map(|f| f.parent().map(Path::to_path_buf))
            .collect();
        for gone in self.folders.difference(&folders) {
            let _ = watcher.unwatch(gone);
        }
        for new in folders.difference(&self.folders) {
            if let Err(error) = watcher.watch(new, RecursiveMode::NonRecursive) {
                warn!(folder = %new.display(), %error, "cannot watch folder");
            }
        }
        self.folders = folders;
        *self.files.write().unwrap_or_else(|p| p.into_inner()) = absolute;
    }
}

/// Kubernetes (and other atomic writers) update a mounted ConfigMap or Secret by swapping a
/// `..data` symlink (and `..<timestamp>` folders) beside the files: the watched names
/// themselves never see an event.
pub fn is_atomic_swap(path: &Path) -> bool {
    path.file_name()
        .and_then(|name| name.to_str())
        .is_some_and(|name| name.starts_with(".."))
}

/// The path as the watcher reports it: canonical folder (no `..`, no symlinks) + file name.
fn absolute(path: &Path) -> PathBuf {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return path.to_path_buf();
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    std::fs::canonicalize(parent)
        .map(|folder| folder.join(name))
        .unwrap_or_else(|_| path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_writer_names_are_recognised() {
        assert!(is_atomic_swap(Path::new("/etc/meridian/..data")));
        assert!(is_atomic_swap(Path::new(
            "/etc/meridian/..2026_11_21_07_00_00.1234"
        )));
        assert!(!is_atomic_swap(Path::new("/etc/meridian/meridian.toml")));
        assert!(!is_atomic_swap(Path::new("/etc/meridian/.hidden")));
    }
}
