//! Hot reload: a changed `routes.toml` or schema file, SIGHUP, or `POST /admin/reload` runs the
//! startup path again (read → interpolate → validate config and schema → build the snapshot) and
//! swaps the result in. A failure changes nothing: the old snapshot keeps serving and the reload
//! status shows why. Requests in flight finish on the snapshot they started with; unchanged parts
//! keep their state (see [`Snapshot::reload`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use notify::{RecursiveMode, Watcher};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::edge::Gateway;
use crate::snapshot::{Deps, Snapshot};

/// The environment `${VAR}` reads, kept for every reload.
pub type SharedEnv = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// How long the files must be quiet before a change reloads: editors write in several steps.
const DEBOUNCE: Duration = Duration::from_millis(250);

/// Reloads one config file into one gateway.
pub struct Reloader {
    path: PathBuf,
    env: SharedEnv,
    deps: Deps,
    gateway: Arc<Gateway>,
    status: Mutex<Status>,
    /// One reload at a time.
    running: Mutex<()>,
    /// `--listen` given on the command line: it wins over the file's on every reload too.
    listen: Option<std::net::SocketAddr>,
    /// Tells the watcher to follow the config to its new schema directory after a reload.
    resync: Mutex<Option<tokio::sync::mpsc::UnboundedSender<Watch>>>,
}

/// What the watcher task is told.
enum Watch {
    /// A watched file changed.
    Changed,
    /// A reload applied a new config: watch what it names.
    Resync,
}

/// What `/admin/status` reports about the active config.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// A digest of the active config and schema files.
    pub version: String,
    /// When the active snapshot was loaded (RFC 3339).
    pub loaded_at: String,
    pub last_reload: Option<Attempt>,
}

/// One reload attempt.
#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    pub at: String,
    /// "file", "sighup", "admin" (or "startup").
    pub trigger: &'static str,
    /// "applied", "unchanged" or "failed".
    pub result: &'static str,
    /// Every error, as `file:line:column: error: ...`, when it failed.
    pub errors: Vec<String>,
    /// Settings that changed but only take effect after a restart.
    pub needs_restart: Vec<String>,
    pub changes: Changes,
}

/// What a new config changes against the active one.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Changes {
    pub routes_added: Vec<String>,
    pub routes_removed: Vec<String>,
    pub routes_changed: Vec<String>,
    pub services_added: Vec<String>,
    pub services_removed: Vec<String>,
    pub services_changed: Vec<String>,
    /// Other sections (`server`, `auth`, `graphql`, `rate_limits.NAME`...) that changed.
    pub sections_changed: Vec<String>,
    pub schema_changed: bool,
}

impl Changes {
    pub fn between(old: &Snapshot, new: &Snapshot) -> Self {
        let (a, b) = (&old.config.fingerprints, &new.config.fingerprints);
        let routes = |s: &Snapshot| -> BTreeMap<String, String> {
            s.config
                .routes
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let methods = r.methods.as_ref().map_or("*".to_owned(), |m| {
                        m.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(",")
                    });
                    let what = s
                        .config
                        .fingerprints
                        .get(&format!("routes.{i}"))
                        .unwrap_or_default();
                    (format!("{methods} {}", r.path.as_str()), what.to_owned())
                })
                .collect()
        };
        let (old_routes, new_routes) = (routes(old), routes(new));
        let mut changes = Changes::default();
        diff(
            &old_routes,
            &new_routes,
            &mut changes.routes_added,
            &mut changes.routes_removed,
            &mut changes.routes_changed,
        );
        let services = |f: &crate::config::Fingerprints| -> BTreeMap<String, String> {
            f.named("services.")
                .map(|(n, v)| (n.to_owned(), v.to_owned()))
                .collect()
        };
        diff(
            &services(a),
            &services(b),
            &mut changes.services_added,
            &mut changes.services_removed,
            &mut changes.services_changed,
        );
        let sections = |f: &crate::config::Fingerprints| -> BTreeMap<String, String> {
            f.named("")
                .filter(|(n, _)| !n.starts_with("services.") && !n.starts_with("routes."))
                .map(|(n, v)| (n.to_owned(), v.to_owned()))
                .collect()
        };
        let (old_sections, new_sections) = (sections(a), sections(b));
        for name in old_sections.keys().chain(new_sections.keys()) {
            if old_sections.get(name) != new_sections.get(name) && !changes.sections_changed.contains(name) {
                changes.sections_changed.push(name.clone());
            }
        }
        changes.schema_changed = schema_digest(old) != schema_digest(new);
        changes
    }

    pub fn is_empty(&self) -> bool {
        *self == Changes::default()
    }
}

fn diff(
    old: &BTreeMap<String, String>,
    new: &BTreeMap<String, String>,
    added: &mut Vec<String>,
    removed: &mut Vec<String>,
    changed: &mut Vec<String>,
) {
    for (key, value) in new {
        match old.get(key) {
            None => added.push(key.clone()),
            Some(v) if v != value => changed.push(key.clone()),
            Some(_) => {}
        }
    }
    removed.extend(old.keys().filter(|k| !new.contains_key(*k)).cloned());
}

fn schema_digest(s: &Snapshot) -> Option<&str> {
    s.graphql.as_ref().map(|g| g.source_digest())
}

/// A digest of a snapshot's config sections and schema files: its version.
pub fn version(snapshot: &Snapshot) -> String {
    let mut hash = Sha256::new();
    for (name, value) in snapshot.config.fingerprints.named("") {
        hash.update(name.as_bytes());
        hash.update([0]);
        hash.update(value.as_bytes());
        hash.update([0]);
    }
    if let Some(digest) = schema_digest(snapshot) {
        hash.update(digest.as_bytes());
    }
    hex::encode(&hash.finalize()[..8])
}

/// Settings read once when the process starts: a change is reported, not applied.
fn needs_restart(old: &Config, new: &Config) -> Vec<String> {
    let (a, b) = (&old.server, &new.server);
    let mut out = Vec::new();
    let mut check = |changed: bool, name: &str| {
        if changed {
            out.push(name.to_owned());
        }
    };
    check(a.listen != b.listen, "server.listen");
    check(a.worker_threads != b.worker_threads, "server.worker_threads");
    check(a.max_connections != b.max_connections, "server.max_connections");
    check(
        a.header_read_timeout != b.header_read_timeout,
        "server.header_read_timeout",
    );
    check(
        a.shutdown_timeout != b.shutdown_timeout,
        "server.shutdown_timeout",
    );
    check(
        old.admin.as_ref().map(|x| x.listen) != new.admin.as_ref().map(|x| x.listen),
        "admin.listen",
    );
    check(old.telemetry != new.telemetry, "telemetry");
    out
}

fn now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

impl Reloader {
    /// A reloader for the gateway serving `path` (already loaded, at startup).
    pub fn new(
        path: PathBuf,
        env: SharedEnv,
        deps: Deps,
        gateway: Arc<Gateway>,
        listen: Option<std::net::SocketAddr>,
    ) -> Arc<Self> {
        let status = Status {
            version: version(&gateway.snapshot()),
            loaded_at: now(),
            last_reload: None,
        };
        Arc::new(Self {
            path,
            env,
            deps,
            gateway,
            status: Mutex::new(status),
            running: Mutex::new(()),
            listen,
            resync: Mutex::new(None),
        })
    }

    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.gateway
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn env(&self) -> &SharedEnv {
        &self.env
    }

    pub fn status(&self) -> Status {
        self.status.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Loads the file again and swaps the new snapshot in if it is valid and differs.
    pub fn reload(&self, trigger: &'static str) -> Attempt {
        let _one = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.gateway.snapshot();
        let mut attempt = Attempt {
            at: now(),
            trigger,
            result: "failed",
            errors: Vec::new(),
            needs_restart: Vec::new(),
            changes: Changes::default(),
        };
        match Snapshot::reload(&self.path, &*self.env, &self.deps, Some(&current)) {
            Ok(mut new) => {
                if let Some(listen) = self.listen {
                    new.config.server.listen = listen;
                }
                let new_version = version(&new);
                if new_version == version(&current) {
                    attempt.result = "unchanged";
                } else {
                    attempt.result = "applied";
                    attempt.changes = Changes::between(&current, &new);
                    attempt.needs_restart = needs_restart(&current.config, &new.config);
                    self.gateway.swap(new);
                    tracing::info!(trigger, version = %new_version, changes = ?attempt.changes, "config reloaded");
                    if !attempt.needs_restart.is_empty() {
                        tracing::warn!(settings = ?attempt.needs_restart, "these settings change only after a restart");
                    }
                    let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
                    status.version = new_version;
                    status.loaded_at = attempt.at.clone();
                    drop(status);
                    if let Some(resync) = &*self.resync.lock().unwrap_or_else(|e| e.into_inner()) {
                        let _ = resync.send(Watch::Resync);
                    }
                }
            }
            Err(errors) => {
                attempt.errors = errors.0.iter().map(ToString::to_string).collect();
                for e in &attempt.errors {
                    tracing::error!(
                        trigger,
                        "config reload failed, the previous config keeps serving: {e}"
                    );
                }
            }
        }
        crate::telemetry::metrics::reload(attempt.result);
        self.status.lock().unwrap_or_else(|e| e.into_inner()).last_reload = Some(attempt.clone());
        attempt
    }

    /// Reloads on SIGHUP and whenever the config file or a schema file changes, until the
    /// reloader is dropped. A reload that points the schema elsewhere moves the watch with it.
    pub fn watch(self: &Arc<Self>) {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            // Installed before this returns: a SIGHUP right after startup reloads rather than
            // ending the process (the default action).
            match signal(SignalKind::hangup()) {
                Err(e) => tracing::warn!(error = %e, "cannot install the SIGHUP handler"),
                Ok(mut hangups) => {
                    let weak = Arc::downgrade(self);
                    tokio::spawn(async move {
                        while hangups.recv().await.is_some() {
                            let Some(reloader) = weak.upgrade() else { return };
                            let _ = tokio::task::spawn_blocking(move || reloader.reload("sighup")).await;
                        }
                    });
                }
            }
        }
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Watch>();
        let config_name = self.path.file_name().map(|n| n.to_owned());
        let schema_dirs: Arc<Mutex<Vec<PathBuf>>> = Arc::default();
        let dirs = schema_dirs.clone();
        let events = tx.clone();
        let mut watcher = match notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let Ok(event) = event else { return };
            if event.kind.is_access() {
                return;
            }
            // The config file itself (editors save by rename), a Kubernetes ConfigMap's `..data`
            // swap, or anything in a schema directory.
            let dirs = dirs.lock().unwrap_or_else(|e| e.into_inner());
            let relevant = event.paths.iter().any(|p| {
                p.file_name().is_some_and(|n| {
                    Some(n) == config_name.as_deref() || n.to_string_lossy().starts_with("..")
                }) || dirs.iter().any(|d| p.starts_with(d))
            });
            if relevant {
                let _ = events.send(Watch::Changed);
            }
        }) {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the config files; reload with SIGHUP or POST /admin/reload");
                return;
            }
        };
        let mut watched = Vec::new();
        self.sync_watches(&mut watcher, &mut watched, &schema_dirs);
        *self.resync.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            while let Some(message) = rx.recv().await {
                let Some(reloader) = weak.upgrade() else { return };
                if matches!(message, Watch::Changed) {
                    // Wait until the files are quiet, then reload once.
                    while let Ok(Some(Watch::Changed)) = tokio::time::timeout(DEBOUNCE, rx.recv()).await {}
                    let r = reloader.clone();
                    let _ = tokio::task::spawn_blocking(move || r.reload("file")).await;
                }
                reloader.sync_watches(&mut watcher, &mut watched, &schema_dirs);
            }
        });
    }

    /// Watches what the active config names, and stops watching what it no longer does.
    fn sync_watches(
        &self,
        watcher: &mut notify::RecommendedWatcher,
        watched: &mut Vec<(PathBuf, RecursiveMode)>,
        schema_dirs: &Mutex<Vec<PathBuf>>,
    ) {
        let wanted = self.watched_paths();
        for (path, _) in watched.iter().filter(|w| !wanted.contains(w)) {
            let _ = watcher.unwatch(path);
        }
        for (path, mode) in wanted.iter().filter(|w| !watched.contains(w)) {
            if let Err(e) = watcher.watch(path, *mode) {
                tracing::warn!(path = %path.display(), error = %e, "cannot watch this path for changes");
            }
        }
        *schema_dirs.lock().unwrap_or_else(|e| e.into_inner()) =
            wanted.iter().skip(1).map(|(p, _)| p.clone()).collect();
        *watched = wanted;
    }

    /// The config file's directory (not recursive: its siblings are not ours) and the schema
    /// directory (recursive).
    fn watched_paths(&self) -> Vec<(PathBuf, RecursiveMode)> {
        let dir = match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let mut paths = vec![(dir, RecursiveMode::NonRecursive)];
        if let Some(g) = &self.gateway.snapshot().config.graphql {
            let schema = if g.schema_dir.is_relative() {
                std::env::current_dir()
                    .map(|d| d.join(&g.schema_dir))
                    .unwrap_or(g.schema_dir.clone())
            } else {
                g.schema_dir.clone()
            };
            paths.push((schema, RecursiveMode::Recursive));
        }
        paths
    }
}
