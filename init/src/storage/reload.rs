//! Applying an alias table while the blade runs (`reload-aliases`, SIGHUP, the refresh of a
//! served alias file): write multipath.conf, rescan the SCSI hosts, reconfigure multipathd,
//! wait (bounded) for the new aliases' maps, and flush the maps of aliases that left the table,
//! deleting their SCSI devices once the array no longer presents them. An alias still used by
//! a guest running here is kept until the guest stops ([`Retired`]).
//!
//! One reload at a time: the API's, SIGHUP's, the refresh's and a retired alias's release wait
//! for each other. A crash of PID 1 or a power loss in the middle loses nothing the SAN holds:
//! multipath.conf is written before multipathd is told, and a reboot assembles the table it
//! fetches then.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::aliases::Alias;
use super::rescan::ScanReport;
use super::sysfs::Sysfs;
use super::table::{self, Retired};
use super::{health, lock, multipath, LunState, Shared};

/// How long a reload waits for the hosts' scans, and then for the new aliases' maps (a blade's
/// `Storage::map_wait`).
pub const SCAN_DEADLINE: Duration = Duration::from_secs(20);
pub const MAP_WAIT: Duration = Duration::from_secs(20);

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A new alias after the reload: found or not, with how many paths.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Added {
    pub alias: String,
    pub wwid: String,
    pub state: LunState,
    pub paths_up: u32,
}

/// An alias that left the table: whether its map is gone, and what became of its paths.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removed {
    pub alias: String,
    pub wwid: String,
    pub flushed: bool,
    pub note: String,
}

/// What a reload did (the API's answer; `message` is its one-line summary).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadReport {
    /// The one-line summary (named `ok` like every done message of the API).
    #[serde(rename = "ok")]
    pub message: String,
    pub source: String,
    pub scan: ScanReport,
    #[serde(default)]
    pub added: Vec<Added>,
    #[serde(default)]
    pub removed: Vec<Removed>,
    /// Aliases removed from the table but kept while a guest uses them.
    #[serde(default)]
    pub retired: Vec<Retired>,
    /// From the request to the new aliases healthy (or the wait's end).
    #[serde(default)]
    pub took_ms: u64,
}

impl ReloadReport {
    fn summarise(&mut self) {
        let mut s = format!("alias table reloaded ({}); {}", self.source, self.scan.summary());
        for a in &self.added {
            s.push_str(&format!("; new {}: {} ({} paths)", a.alias, a.state.as_str(), a.paths_up));
        }
        for r in &self.removed {
            s.push_str(&format!("; removed {}: {}", r.alias, r.note));
        }
        for r in &self.retired {
            s.push_str(&format!("; KEPT {}", r.warning()));
        }
        self.message = s;
    }
}

/// Applies `new` (from `source`): the whole reload. Refused (the last good table stays) when it
/// would change a LUN a running guest uses.
pub fn apply_table(shared: &Shared, new: Vec<Alias>, source: String) -> Result<ReloadReport, String> {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let started = Instant::now();
    let (old, retired, in_use, sys, scanner, map_wait) = {
        let s = lock(shared);
        (s.table.clone(), s.retired.clone(), s.in_use.clone(), s.sys.clone(), s.scanner.clone(), s.map_wait)
    };
    let change = table::diff(&old, &retired, &new, &in_use)?;
    let goes = paths_of(sys.as_ref(), &change.removed);
    super::apply(shared, new, change.retired.clone(), source.clone())?;
    let scan = match &scanner {
        Some(sc) => sc.all(SCAN_DEADLINE),
        None => ScanReport::default(),
    };
    reconfigure();
    let added = wait_for(shared, &change.added, Instant::now() + map_wait);
    let removed = flush(shared, &change.removed, &goes);
    for r in &change.retired {
        warn!("{}", r.warning());
    }
    let took_ms = started.elapsed().as_millis() as u64;
    let mut report =
        ReloadReport { message: String::new(), source, scan, added, removed, retired: change.retired, took_ms };
    report.summarise();
    info!("{}", report.message);
    Ok(report)
}

fn reconfigure() {
    match multipath::command("reconfigure", Duration::from_secs(30)) {
        Ok(r) => info!("multipathd reconfigure: {r}"),
        Err(e) => warn!("{e}"),
    }
}

/// The paths (sd devices) of the maps of `aliases`, before they are flushed.
fn paths_of(sys: Option<&Sysfs>, aliases: &[(String, String)]) -> BTreeMap<String, Vec<String>> {
    let Some(sys) = sys else { return BTreeMap::new() };
    let maps = sys.maps();
    aliases
        .iter()
        .map(|(alias, wwid)| {
            let slaves = maps.iter().find(|m| m.wwid.as_deref() == Some(wwid)).map(|m| m.slaves.clone());
            (alias.clone(), slaves.unwrap_or_default())
        })
        .collect()
}

/// Where the new aliases stand, once all are healthy or at `until`.
fn wait_for(shared: &Shared, added: &[Alias], until: Instant) -> Vec<Added> {
    loop {
        let now: Vec<Added> = {
            let s = lock(shared);
            let Some(sys) = s.sys.clone() else {
                return added
                    .iter()
                    .map(|a| Added {
                        alias: a.alias.clone(),
                        wwid: a.wwid.clone(),
                        state: LunState::Missing,
                        paths_up: 0,
                    })
                    .collect();
            };
            let dev = s.dev_mapper.clone();
            let node = move |alias: &str| dev.as_ref().is_none_or(|d| d.join(alias).exists());
            let mut seen = BTreeMap::new();
            health::assess(added, &sys.maps(), &sys.disks(), &mut seen, s.default_paths, &node)
                .into_iter()
                .map(|l| Added { alias: l.alias, wwid: l.wwid, state: l.state, paths_up: l.paths_up })
                .collect()
        };
        if now.iter().all(|a| a.state == LunState::Healthy) || Instant::now() >= until {
            return now;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Flushes the maps of `removed` and deletes their former paths that the array no longer
/// presents (a path that still reads stays: unclaimed, blacklisted, harmless).
fn flush(shared: &Shared, removed: &[(String, String)], paths: &BTreeMap<String, Vec<String>>) -> Vec<Removed> {
    let (sys, dev_dir) = {
        let s = lock(shared);
        (s.sys.clone(), s.dev_mapper.as_ref().and_then(|d| d.parent().map(Path::to_path_buf)))
    };
    removed
        .iter()
        .map(|(alias, wwid)| {
            let present = |sys: &Sysfs| sys.maps().iter().any(|m| m.wwid.as_deref() == Some(wwid));
            if sys.as_ref().is_some_and(present) {
                if let Err(e) = multipath::command(&format!("del map {alias}"), Duration::from_secs(30)) {
                    warn!(alias = %alias, "cannot flush the map: {e}");
                }
            }
            let flushed = !sys.as_ref().is_some_and(present);
            let mut gone = vec![];
            let mut kept = vec![];
            if flushed {
                for dev in paths.get(alias).into_iter().flatten() {
                    let reads = dev_dir.as_ref().is_none_or(|d| presented(&d.join(dev)));
                    match sys.as_ref().filter(|_| !reads) {
                        Some(sys) if sys.delete_disk(dev).is_ok() => gone.push(dev.clone()),
                        _ => kept.push(dev.clone()),
                    }
                }
            }
            let note = match (flushed, gone.is_empty(), kept.is_empty()) {
                (false, _, _) => "its map could not be flushed (multipathd refused: is it open?)".to_string(),
                (true, true, true) => "map flushed".to_string(),
                (true, _, true) => format!("map flushed, SCSI devices {} deleted", gone.join(" ")),
                (true, _, false) => format!(
                    "map flushed{}; {} still presented by the array: left unclaimed",
                    if gone.is_empty() { String::new() } else { format!(", {} deleted", gone.join(" ")) },
                    kept.join(" ")
                ),
            };
            info!(alias = %alias, wwid = %wwid, "alias removed: {note}");
            Removed { alias: alias.clone(), wwid: wwid.clone(), flushed, note }
        })
        .collect()
}

/// Whether a path's device still reads: its first 4 KiB, past the page cache.
pub fn presented(dev: &Path) -> bool {
    let block = std::fs::metadata(dev).is_ok_and(|m| m.file_type().is_block_device());
    let flags = if block { nix::libc::O_DIRECT } else { 0 };
    let Ok(mut f) = std::fs::OpenOptions::new().read(true).custom_flags(flags).open(dev) else { return false };
    // O_DIRECT wants an aligned buffer: take the aligned 4 KiB inside 8 KiB.
    let mut buf = vec![0u8; 8192];
    let skip = buf.as_ptr().align_offset(4096).min(4096);
    f.read_exact(&mut buf[skip..skip + 4096]).is_ok()
}

/// Releases the retired aliases whose guests stopped: their maps are flushed as a removal's.
pub fn release_retired(shared: &Shared) -> Vec<Removed> {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let (free, sys) = {
        let s = lock(shared);
        let free: Vec<(String, String)> = s
            .retired
            .iter()
            .filter(|r| !s.in_use.contains_key(&r.alias))
            .map(|r| (r.alias.clone(), r.wwid.clone()))
            .collect();
        (free, s.sys.clone())
    };
    if free.is_empty() {
        return vec![];
    }
    let goes = paths_of(sys.as_ref(), &free);
    let (tab, keep, source) = {
        let s = lock(shared);
        let keep: Vec<Retired> =
            s.retired.iter().filter(|r| !free.iter().any(|(a, _)| a == &r.alias)).cloned().collect();
        (s.table.clone(), keep, s.table_source.clone())
    };
    if let Err(e) = super::apply(shared, tab, keep, source) {
        warn!("cannot release the retired aliases: {e}");
        return vec![];
    }
    reconfigure();
    flush(shared, &free, &goes)
}

/// Whether any retired alias's guest has stopped (cheap: for the watch's every pass).
pub fn has_free_retired(shared: &Shared) -> bool {
    let s = lock(shared);
    s.retired.iter().any(|r| !s.in_use.contains_key(&r.alias))
}

#[cfg(test)]
mod tests {
    use super::super::sysfs::fake;
    use super::super::{AliasSources, Storage};
    use super::*;
    use std::sync::Arc;

    fn a(alias: &str, wwid: &str) -> Alias {
        Alias { alias: alias.into(), wwid: wwid.into(), paths: Some(2), line: 1 }
    }

    fn blade(root: &Path) -> Shared {
        Arc::new(Mutex::new(Storage {
            sources: AliasSources::default(),
            multipath_conf: root.join("multipath.conf"),
            sys: Some(Sysfs::new(root)),
            scanner: Some(super::super::rescan::Scanner::new(Sysfs::new(root))),
            default_paths: 1,
            ..Default::default()
        }))
    }

    #[test]
    fn a_new_alias_is_scanned_for_and_reported_with_its_paths() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        fake::scsi_host(r, "host0");
        fake::scsi_host(r, "host1");
        let shared = blade(r);
        apply_table(&shared, vec![a("vm1", "3600a")], "test".into()).unwrap();
        // The array presents a new LUN on both paths; the table gains its alias.
        fake::disk(r, "sdc", "host0", "600b", "running");
        fake::disk(r, "sdd", "host1", "600b", "running");
        fake::map(r, "dm-1", "vm2", "3600b", &["sdc", "sdd"]);
        let rep = apply_table(&shared, vec![a("vm1", "3600a"), a("vm2", "3600b")], "test".into()).unwrap();
        assert_eq!(rep.scan.hosts.len(), 2, "every host was rescanned: {rep:?}");
        assert_eq!(std::fs::read_to_string(r.join("class/scsi_host/host1/scan")).unwrap(), "- - -");
        assert_eq!(
            rep.added,
            vec![Added { alias: "vm2".into(), wwid: "3600b".into(), state: LunState::Healthy, paths_up: 2 }]
        );
        assert!(rep.message.contains("new vm2: healthy (2 paths)"), "{}", rep.message);
        assert!(std::fs::read_to_string(r.join("multipath.conf")).unwrap().contains("alias \"vm2\""));
    }

    #[test]
    fn a_removed_alias_in_use_stays_until_its_guest_stops_then_goes_with_its_dead_paths() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        fake::scsi_host(r, "host0");
        fake::disk(r, "sdb", "host0", "600a", "running");
        let shared = blade(r);
        apply_table(&shared, vec![a("vm1", "3600a"), a("vm2", "3600b")], "test".into()).unwrap();
        lock(&shared).in_use = [("vm1".to_string(), "web".to_string())].into();
        let rep = apply_table(&shared, vec![a("vm2", "3600b")], "test".into()).unwrap();
        assert!(rep.removed.is_empty());
        assert_eq!(rep.retired.len(), 1);
        assert!(rep.message.contains("KEPT alias vm1 (3600a) was removed"), "{}", rep.message);
        assert!(std::fs::read_to_string(r.join("multipath.conf")).unwrap().contains("alias \"vm1\""));
        assert!(lock(&shared).warnings().iter().any(|w| w.contains("guest web uses it")));
        assert!(!has_free_retired(&shared));
        // web stops: the alias is released; its map is gone (the fake has none), the conf no
        // longer names it, and the status warning is gone.
        lock(&shared).in_use.clear();
        assert!(has_free_retired(&shared));
        let gone = release_retired(&shared);
        assert_eq!(gone.len(), 1, "{gone:?}");
        assert!(gone[0].flushed, "{gone:?}");
        assert!(!std::fs::read_to_string(r.join("multipath.conf")).unwrap().contains("alias \"vm1\""));
        assert!(lock(&shared).warnings().is_empty());
    }

    #[test]
    fn a_path_that_no_longer_reads_is_not_presented() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("sdb");
        assert!(!presented(&f), "a device that is gone");
        std::fs::write(&f, vec![7u8; 4096]).unwrap();
        assert!(presented(&f));
        std::fs::write(&f, b"short").unwrap();
        assert!(!presented(&f), "a read that fails");
    }
}
