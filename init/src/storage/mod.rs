//! Storage bring-up and watch: the reason this appliance exists. On every blade,
//! `/dev/mapper/<alias>` must be the same LUN over every path the fabric offers.
//!
//! - `hba`: FC ports Online (LIP where needed), SCSI hosts scanned
//! - `multipath`: the multipath.conf we write, multipathd's control socket
//! - `rescan`: SCSI hosts rescanned while the blade runs, in parallel, bounded in time
//! - `table` and `reload`: a new alias table applied while the blade runs (added, removed, kept)
//! - `refresh`: the served alias file fetched again (conditionally) and applied when it changed
//! - `uevent`: the kernel's unit attentions (REPORTED LUNS DATA HAS CHANGED): that target rescanned
//! - `sysfs`: what the kernel shows of HBAs, disks and maps, under any root
//! - `health`: per alias, healthy / degraded / missing, and the log lines for each change

pub mod hba;
pub mod health;
pub mod multipath;
pub mod refresh;
pub mod reload;
pub mod rescan;
pub mod sysfs;
pub mod table;
pub mod uevent;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::{error, info, warn};

pub use crate::config::aliases::{self, Alias};
pub use crate::config::cluster::StorageConfig;
use crate::config::fetch::{get_with_retries, MAX_ALIASES_BYTES};
pub use health::{LunState, LunStatus, StorageEvent};
use sysfs::{FcHost, Sysfs};

/// Where the alias table comes from, in order of precedence.
#[derive(Debug, Clone, Default)]
pub struct AliasSources {
    /// `bladevisor.aliases=`, else `[storage] aliases-url`.
    pub url: Option<String>,
    /// `[aliases]` inside the cluster configuration.
    pub inline: Option<Vec<Alias>>,
    /// The copy baked into the image (`/etc/bladevisor/aliases`, any format).
    pub baked: PathBuf,
    pub fetch_timeout: Duration,
}

/// Resolves the alias table: fetched when a URL is given (falling back when it cannot be), else
/// the cluster configuration's own table, else the baked file. Returns the table, where it came
/// from, and what went wrong on the way.
pub fn resolve(src: &AliasSources) -> (Option<Vec<Alias>>, String, Vec<String>) {
    let mut problems = vec![];
    if let Some(url) = &src.url {
        let fetched = get_with_retries(url, src.fetch_timeout, Duration::from_secs(1), MAX_ALIASES_BYTES, |n, e| {
            warn!(attempt = n, "cannot fetch the alias file yet: {e}")
        });
        match fetched {
            Ok(text) => match aliases::parse(Path::new(url), &text) {
                Ok((format, table)) => return (Some(table), format!("fetched from {url} ({format:?})"), problems),
                Err(e) => problems.push(format!("{e}; using the fallback alias table")),
            },
            Err((e, tries)) => {
                problems.push(format!("cannot fetch {url} after {tries} tries: {e}; using the fallback alias table"))
            }
        }
    }
    if let Some(table) = &src.inline {
        return (Some(table.clone()), "the cluster configuration's [aliases]".into(), problems);
    }
    if src.baked.exists() {
        let text = std::fs::read_to_string(&src.baked).unwrap_or_default();
        match aliases::parse(&src.baked, &text) {
            Ok((format, table)) => {
                return (Some(table), format!("baked {} ({format:?})", src.baked.display()), problems)
            }
            Err(e) => problems.push(e.to_string()),
        }
    }
    (None, "none".into(), problems)
}

/// What the storage watch knows; shared between the watch thread, the boot sequence, the API.
#[derive(Debug, Default)]
pub struct Storage {
    pub sources: AliasSources,
    /// The table in force: the last good one.
    pub table: Vec<Alias>,
    pub table_source: String,
    pub luns: Vec<LunStatus>,
    pub hbas: Vec<FcHost>,
    pub default_paths: u32,
    most_seen: std::collections::BTreeMap<String, u32>,
    pub multipath_conf: PathBuf,
    /// Where the maps' nodes appear (`/dev/mapper`); unset (tests), nodes are not looked at.
    pub dev_mapper: Option<PathBuf>,
    /// Boot is still waiting for the maps: changes are not logged one by one.
    pub settling: bool,
    /// Aliases removed from the table that a guest here still uses (kept until it stops).
    pub retired: Vec<table::Retired>,
    /// The aliases the guests running here use (alias -> guest), kept up to date by PID 1.
    pub in_use: std::collections::BTreeMap<String, String>,
    /// The kernel's view (None in tests that have no tree), and the scanner of its hosts.
    pub sys: Option<Sysfs>,
    pub scanner: Option<rescan::Scanner>,
    /// How long a reload waits for its new aliases' maps ([`reload::MAP_WAIT`] on a blade).
    pub map_wait: Duration,
    /// Why the last refresh of the served alias file was not applied, while that holds.
    pub refresh_problem: Option<String>,
}

pub type Shared = Arc<Mutex<Storage>>;

impl Storage {
    /// Re-reads sysfs and returns every change since the last time.
    pub fn refresh(&mut self, sys: &Sysfs) -> Vec<StorageEvent> {
        let dev = self.dev_mapper.clone();
        let node = move |alias: &str| dev.as_ref().is_none_or(|d| d.join(alias).exists());
        let aliases = table::in_force(&self.table, &self.retired);
        let luns = health::assess(&aliases, &sys.maps(), &sys.disks(), &mut self.most_seen, self.default_paths, &node);
        let mut events = health::changes(&self.luns, &luns);
        let hbas = sys.fc_hosts();
        for h in &hbas {
            if let Some(old) = self.hbas.iter().find(|o| o.host == h.host && o.port_state != h.port_state) {
                events.push(StorageEvent::FcPort {
                    host: h.host.clone(),
                    wwpn: h.wwpn.clone(),
                    from: old.port_state.clone(),
                    to: h.port_state.clone(),
                });
            }
        }
        self.luns = luns;
        self.hbas = hbas;
        events
    }

    /// Why storage makes the blade degraded, one line per LUN that is not healthy.
    pub fn problems(&self) -> Vec<String> {
        self.luns
            .iter()
            .filter(|l| l.state != LunState::Healthy)
            .map(|l| {
                format!(
                    "LUN {} ({}) is {}: {} of {} paths up",
                    l.alias,
                    l.wwid,
                    l.state.as_str(),
                    l.paths_up,
                    l.paths_expected
                )
            })
            .collect()
    }
}

impl Storage {
    /// What an operator should know that does not make the blade degraded: aliases kept for
    /// their guests, a served alias file that was refused.
    pub fn warnings(&self) -> Vec<String> {
        let mut w: Vec<String> = self.retired.iter().map(|r| r.warning()).collect();
        w.extend(self.refresh_problem.clone());
        w
    }
}

pub fn lock(s: &Shared) -> std::sync::MutexGuard<'_, Storage> {
    // A panic while holding the lock leaves a usable snapshot: take it anyway.
    s.lock().unwrap_or_else(|p| p.into_inner())
}

/// Watches sysfs for the life of the blade (every 100 ms while the boot waits for the maps,
/// every second after), logging every change and handing it to `sink` (the main loop);
/// releases aliases kept for guests that have stopped.
pub fn watch(shared: Shared, sys: Sysfs, sink: impl Fn(StorageEvent) + Send + 'static) {
    let releasing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    crate::spawn_worker("storage-watch", move || loop {
        let (events, quiet) = {
            let mut s = lock(&shared);
            (s.refresh(&sys), s.settling)
        };
        if reload::has_free_retired(&shared) && !releasing.swap(true, std::sync::atomic::Ordering::SeqCst) {
            let (shared, releasing) = (shared.clone(), releasing.clone());
            crate::spawn_worker("storage-release", move || {
                reload::release_retired(&shared);
                releasing.store(false, std::sync::atomic::Ordering::SeqCst);
            });
        }
        for e in events {
            // While boot waits for the maps to assemble, "missing" is expected, not news: the
            // boot sequence reports the outcome once it stops waiting.
            if !quiet {
                e.log();
            }
            sink(e);
        }
        // While the boot waits for the maps, look often: each pass reads only sysfs.
        std::thread::sleep(if quiet { Duration::from_millis(100) } else { Duration::from_secs(1) });
    });
}

/// Ends the boot-time wait: from now on every change is logged; logs where each alias stands.
pub fn settled(shared: &Shared) {
    let mut s = lock(shared);
    s.settling = false;
    for e in health::changes(&[], &s.luns) {
        e.log();
    }
}

/// Puts a table in force with the retired aliases still in use: writes multipath.conf (the
/// caller reconfigures multipathd).
pub fn apply(shared: &Shared, table: Vec<Alias>, retired: Vec<table::Retired>, source: String) -> Result<(), String> {
    let conf = multipath::render_conf(&table::in_force(&table, &retired));
    let path = lock(shared).multipath_conf.clone();
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    std::fs::write(&path, conf).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    {
        let mut s = lock(shared);
        info!(aliases = table.len(), "alias table from {source}");
        s.table = table;
        s.table_source = source;
        s.retired = retired;
    }
    Ok(())
}

/// Re-reads the alias table from its sources and applies it (rescan, reconfigure, new maps
/// waited for, removed ones flushed); an invalid or unreachable one leaves the last good table
/// in force. For the API's reload and SIGHUP.
pub fn reload(shared: &Shared) -> Result<reload::ReloadReport, String> {
    let sources = lock(shared).sources.clone();
    let (table, source, problems) = resolve(&sources);
    for p in &problems {
        error!("alias reload: {p}");
    }
    let Some(table) = table else {
        return Err(format!("no usable alias table ({}); the last good table stays in force", problems.join("; ")));
    };
    if !problems.is_empty() && sources.url.is_some() {
        return Err(format!("{}; the last good table stays in force", problems.join("; ")));
    }
    reload::apply_table(shared, table, source).map_err(|e| format!("{e}; the last good table stays in force"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alias(a: &str, w: &str) -> Alias {
        Alias { alias: a.into(), wwid: w.into(), paths: None, line: 1 }
    }

    #[test]
    fn precedence_is_url_then_inline_then_baked() {
        let t = tempfile::tempdir().unwrap();
        let baked = t.path().join("aliases");
        std::fs::write(&baked, "baked1 3600a\n").unwrap();
        let mut src =
            AliasSources { baked: baked.clone(), fetch_timeout: Duration::from_millis(100), ..Default::default() };
        let (table, source, problems) = resolve(&src);
        assert_eq!(table.unwrap()[0].alias, "baked1");
        assert!(source.starts_with("baked ") && source.ends_with("(Bindings)"), "{source}");
        assert!(problems.is_empty());

        src.inline = Some(vec![alias("inline1", "3600b")]);
        assert_eq!(resolve(&src).0.unwrap()[0].alias, "inline1");

        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        src.url = Some(format!("http://127.0.0.1:{port}/aliases"));
        let (table, source, problems) = resolve(&src);
        assert_eq!(table.unwrap()[0].alias, "inline1", "falls back when the URL is unreachable");
        assert_eq!(source, "the cluster configuration's [aliases]");
        assert!(
            problems[0].starts_with(&format!("cannot fetch http://127.0.0.1:{port}/aliases after")),
            "{problems:?}"
        );
    }

    #[test]
    fn an_invalid_baked_file_is_a_problem_not_a_table() {
        let t = tempfile::tempdir().unwrap();
        let baked = t.path().join("aliases");
        std::fs::write(&baked, "vm1 3600a\nvm1 3600b\n").unwrap();
        let (table, source, problems) = resolve(&AliasSources { baked: baked.clone(), ..Default::default() });
        assert!(table.is_none());
        assert_eq!(source, "none");
        assert_eq!(problems, vec![format!("{}:2: alias vm1 is defined twice (first on line 1)", baked.display())]);
    }

    #[test]
    fn a_bad_reload_keeps_the_last_good_table() {
        let t = tempfile::tempdir().unwrap();
        let baked = t.path().join("aliases");
        std::fs::write(&baked, "vm1 3600a\n").unwrap();
        let shared: Shared = Arc::new(Mutex::new(Storage {
            sources: AliasSources { baked: baked.clone(), ..Default::default() },
            multipath_conf: t.path().join("multipath.conf"),
            ..Default::default()
        }));
        let r = reload(&shared).unwrap();
        assert!(r.message.starts_with("alias table reloaded (baked "), "{}", r.message);
        assert_eq!(lock(&shared).table[0].alias, "vm1");
        assert!(std::fs::read_to_string(t.path().join("multipath.conf")).unwrap().contains("alias \"vm1\""));
        std::fs::write(&baked, "vm1 3600a\nvm2 3600a\n").unwrap();
        let e = reload(&shared).unwrap_err();
        assert!(e.contains(":2: WWID 3600a is given two aliases") && e.contains("last good table stays"), "{e}");
        assert_eq!(lock(&shared).table.len(), 1, "the last good table is kept");
        assert!(std::fs::read_to_string(t.path().join("multipath.conf")).unwrap().contains("alias \"vm1\""));
    }
}
