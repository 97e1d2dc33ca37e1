//! LUN health: for each alias, its map, its paths and whether it is healthy, degraded (fewer
//! healthy paths than expected) or missing; and the log lines that tell an operator what changed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::aliases::Alias;
use super::sysfs::{Disk, Map};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LunState {
    Healthy,
    Degraded,
    Missing,
}

impl LunState {
    pub fn as_str(self) -> &'static str {
        match self {
            LunState::Healthy => "healthy",
            LunState::Degraded => "degraded",
            LunState::Missing => "missing",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathStatus {
    /// `sdb`
    pub dev: String,
    /// The SCSI host it goes through (`host3`), when known.
    pub hba: Option<String>,
    /// The kernel's device state: `running` is the only healthy one.
    pub state: String,
}

impl PathStatus {
    pub fn healthy(&self) -> bool {
        self.state == "running"
    }
}

/// One alias as `/v1/status` reports it (field names fixed by the API contract).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LunStatus {
    pub alias: String,
    pub wwid: String,
    pub paths_up: u32,
    pub paths_expected: u32,
    pub state: LunState,
    /// `dm-0`, when the map exists.
    pub dm: Option<String>,
    pub size_bytes: Option<u64>,
    pub paths: Vec<PathStatus>,
}

/// Expected paths: the alias file's count, else the most healthy paths seen since boot or the
/// configured default, whichever is higher (a path that was there and is gone is always a loss).
pub fn expected(alias: &Alias, most_seen: u32, default_paths: u32) -> u32 {
    alias.paths.unwrap_or(most_seen.max(default_paths)).max(1)
}

/// Assesses every alias from what sysfs shows. `most_seen` (per WWID) is updated. A map whose
/// `/dev/mapper/<alias>` node udev has not made yet (`node(alias)` is false) is still missing:
/// nothing can open it.
pub fn assess(
    aliases: &[Alias],
    maps: &[Map],
    disks: &[Disk],
    most_seen: &mut BTreeMap<String, u32>,
    default_paths: u32,
    node: &dyn Fn(&str) -> bool,
) -> Vec<LunStatus> {
    aliases
        .iter()
        .map(|a| {
            let map = maps.iter().find(|m| m.wwid.as_deref() == Some(a.wwid.as_str()));
            let paths: Vec<PathStatus> = match map {
                Some(m) => m
                    .slaves
                    .iter()
                    .map(|s| {
                        let d = disks.iter().find(|d| &d.dev == s);
                        PathStatus {
                            dev: s.clone(),
                            hba: d.and_then(|d| d.host.clone()),
                            state: d.map(|d| d.state.clone()).unwrap_or_else(|| "gone".into()),
                        }
                    })
                    .collect(),
                None => vec![],
            };
            let up = paths.iter().filter(|p| p.healthy()).count() as u32;
            let seen = most_seen.entry(a.wwid.clone()).or_insert(0);
            *seen = (*seen).max(up);
            let want = expected(a, *seen, default_paths);
            let state = match (map, up) {
                (None, _) | (Some(_), 0) => LunState::Missing,
                _ if !node(&a.alias) => LunState::Missing,
                _ if up < want => LunState::Degraded,
                _ => LunState::Healthy,
            };
            LunStatus {
                alias: a.alias.clone(),
                wwid: a.wwid.clone(),
                paths_up: up,
                paths_expected: want,
                state,
                dm: map.map(|m| m.dm.clone()),
                size_bytes: map.map(|m| m.size_bytes),
                paths,
            }
        })
        .collect()
}

fn state_word(s: LunState) -> &'static str {
    match s {
        LunState::Healthy => "healthy",
        LunState::Degraded => "DEGRADED",
        LunState::Missing => "MISSING",
    }
}

/// Paths up and expected, and the state that makes: how every path event ends its line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub up: u32,
    pub expected: u32,
    pub state: LunState,
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} of {} paths up, {}", self.up, self.expected, state_word(self.state))
    }
}

/// A change the storage watch saw. The log line and its level come from it, and the main loop
/// reacts to it (a guest waiting for a disk is placed when its LUN appears).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageEvent {
    /// An alias assessed for the first time (at boot, or new in the table).
    Found {
        alias: String,
        wwid: String,
        counts: Counts,
        dm: Option<String>,
    },
    /// A path stopped being healthy; `why` is its device state, or `removed`.
    PathLost {
        alias: String,
        dev: String,
        via: Option<String>,
        why: String,
        counts: Counts,
    },
    PathBack {
        alias: String,
        dev: String,
        via: Option<String>,
        counts: Counts,
    },
    StateChanged {
        alias: String,
        wwid: String,
        from: LunState,
        to: LunState,
    },
    /// An FC port's state changed (`Online`, `Linkdown`, ...).
    FcPort {
        host: String,
        wwpn: String,
        from: String,
        to: String,
    },
}

impl StorageEvent {
    /// The alias it concerns, if any.
    pub fn alias(&self) -> Option<&str> {
        match self {
            StorageEvent::Found { alias, .. }
            | StorageEvent::PathLost { alias, .. }
            | StorageEvent::PathBack { alias, .. }
            | StorageEvent::StateChanged { alias, .. } => Some(alias),
            StorageEvent::FcPort { .. } => None,
        }
    }

    /// Whether an operator should look: a lost path, a LUN that is not healthy, a port down.
    pub fn is_bad(&self) -> bool {
        match self {
            StorageEvent::Found { counts, .. } => counts.state != LunState::Healthy,
            StorageEvent::PathLost { .. } => true,
            StorageEvent::PathBack { .. } => false,
            StorageEvent::StateChanged { to, .. } => *to != LunState::Healthy,
            StorageEvent::FcPort { to, .. } => to != "Online",
        }
    }

    /// Logs it at the level it deserves.
    pub fn log(&self) {
        if self.is_bad() {
            tracing::warn!("{self}");
        } else {
            tracing::info!("{self}");
        }
    }
}

fn via(hba: &Option<String>) -> String {
    hba.as_ref().map(|h| format!(" via {h}")).unwrap_or_default()
}

impl std::fmt::Display for StorageEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StorageEvent::Found { alias, wwid, counts, dm } => {
                let dm = dm.as_ref().map(|d| format!(", /dev/mapper/{alias} is {d}")).unwrap_or_default();
                write!(f, "LUN {alias} ({wwid}): {counts}{dm}")
            }
            StorageEvent::PathLost { alias, dev, via: v, why, counts } => {
                write!(f, "LUN {alias}: path {dev}{} lost ({why}): {counts}", via(v))
            }
            StorageEvent::PathBack { alias, dev, via: v, counts } => {
                write!(f, "LUN {alias}: path {dev}{} up: {counts}", via(v))
            }
            StorageEvent::StateChanged { alias, wwid, from, to } => {
                write!(f, "LUN {alias} ({wwid}): {} -> {}", state_word(*from), state_word(*to))
            }
            StorageEvent::FcPort { host, wwpn, from, to } => write!(f, "FC port {host} ({wwpn}): {from} -> {to}"),
        }
    }
}

/// Every change between two assessments: paths lost and back, states changed, aliases found.
pub fn changes(before: &[LunStatus], after: &[LunStatus]) -> Vec<StorageEvent> {
    let mut out = vec![];
    for now in after {
        let prev = before.iter().find(|b| b.alias == now.alias);
        let healthy =
            |l: &LunStatus| -> Vec<String> { l.paths.iter().filter(|p| p.healthy()).map(|p| p.dev.clone()).collect() };
        let was = prev.map(healthy).unwrap_or_default();
        let is = healthy(now);
        let counts = Counts { up: now.paths_up, expected: now.paths_expected, state: now.state };
        let alias = now.alias.clone();
        for lost in was.iter().filter(|d| !is.contains(d)) {
            let via = prev.and_then(|p| p.paths.iter().find(|x| &x.dev == lost)).and_then(|p| p.hba.clone());
            let why =
                now.paths.iter().find(|x| &x.dev == lost).map(|x| x.state.clone()).unwrap_or_else(|| "removed".into());
            out.push(StorageEvent::PathLost { alias: alias.clone(), dev: lost.clone(), via, why, counts });
        }
        if prev.is_some() {
            for back in is.iter().filter(|d| !was.contains(d)) {
                let via = now.paths.iter().find(|x| &x.dev == back).and_then(|p| p.hba.clone());
                out.push(StorageEvent::PathBack { alias: alias.clone(), dev: back.clone(), via, counts });
            }
        }
        match prev {
            Some(p) if p.state != now.state => {
                out.push(StorageEvent::StateChanged { alias, wwid: now.wwid.clone(), from: p.state, to: now.state })
            }
            None => out.push(StorageEvent::Found { alias, wwid: now.wwid.clone(), counts, dm: now.dm.clone() }),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::sysfs::{fake, Sysfs};
    use super::*;

    fn alias(a: &str, wwid: &str, paths: Option<u32>) -> Alias {
        Alias { alias: a.into(), wwid: wwid.into(), paths, line: 1 }
    }

    const W: &str = "35000c50015ea71ac";

    fn setup() -> (tempfile::TempDir, Sysfs) {
        let t = tempfile::tempdir().unwrap();
        fake::disk(t.path(), "sdb", "host2", &W[1..], "running");
        fake::disk(t.path(), "sdc", "host3", &W[1..], "running");
        fake::map(t.path(), "dm-0", "vm1", W, &["sdb", "sdc"]);
        let s = Sysfs::new(t.path());
        (t, s)
    }

    fn run(s: &Sysfs, a: &[Alias], seen: &mut BTreeMap<String, u32>) -> Vec<LunStatus> {
        assess(a, &s.maps(), &s.disks(), seen, 1, &|_| true)
    }

    /// The changes as the log shows them.
    fn lines(before: &[LunStatus], after: &[LunStatus]) -> Vec<String> {
        changes(before, after).iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn a_path_fails_and_returns() {
        let (t, s) = setup();
        let aliases = [alias("vm1", W, Some(2))];
        let mut seen = BTreeMap::new();
        let healthy = run(&s, &aliases, &mut seen);
        assert_eq!((healthy[0].paths_up, healthy[0].paths_expected, healthy[0].state), (2, 2, LunState::Healthy));
        assert_eq!(healthy[0].dm.as_deref(), Some("dm-0"));
        assert_eq!(healthy[0].paths[0].hba.as_deref(), Some("host2"));
        let first = lines(&[], &healthy);
        assert_eq!(first, vec![format!("LUN vm1 ({W}): 2 of 2 paths up, healthy, /dev/mapper/vm1 is dm-0")]);

        fake::set_disk_state(t.path(), "sdc", "transport-offline");
        let degraded = run(&s, &aliases, &mut seen);
        assert_eq!((degraded[0].paths_up, degraded[0].state), (1, LunState::Degraded));
        assert_eq!(
            lines(&healthy, &degraded),
            vec![
                "LUN vm1: path sdc via host3 lost (transport-offline): 1 of 2 paths up, DEGRADED".to_string(),
                format!("LUN vm1 ({W}): healthy -> DEGRADED"),
            ]
        );

        fake::set_disk_state(t.path(), "sdc", "running");
        let back = run(&s, &aliases, &mut seen);
        assert_eq!(
            lines(&degraded, &back),
            vec![
                "LUN vm1: path sdc via host3 up: 2 of 2 paths up, healthy".to_string(),
                format!("LUN vm1 ({W}): DEGRADED -> healthy")
            ]
        );
        assert!(lines(&back, &back).is_empty(), "no change, no line");
        // The level comes from the event: a loss warns, a return informs.
        let events = changes(&healthy, &degraded);
        assert!(events.iter().all(|e| e.is_bad() && e.alias() == Some("vm1")), "{events:?}");
        assert!(changes(&degraded, &back).iter().all(|e| !e.is_bad()));
    }

    #[test]
    fn a_removed_path_is_a_loss_even_without_a_configured_count() {
        let (t, s) = setup();
        let aliases = [alias("vm1", W, None)];
        let mut seen = BTreeMap::new();
        let before = run(&s, &aliases, &mut seen);
        assert_eq!(before[0].paths_expected, 2, "learnt from what was seen");
        fake::remove_disk(t.path(), "sdc");
        fake::map(t.path(), "dm-0", "vm1", W, &["sdb"]);
        let after = run(&s, &aliases, &mut seen);
        assert_eq!((after[0].paths_up, after[0].paths_expected, after[0].state), (1, 2, LunState::Degraded));
        assert_eq!(lines(&before, &after)[0], "LUN vm1: path sdc via host3 lost (removed): 1 of 2 paths up, DEGRADED");
    }

    #[test]
    fn the_configured_default_sets_a_floor_for_learnt_counts() {
        let a = alias("vm1", W, None);
        assert_eq!(expected(&a, 1, 2), 2);
        assert_eq!(expected(&a, 4, 2), 4);
        assert_eq!(expected(&alias("vm1", W, Some(3)), 4, 2), 3);
        assert_eq!(expected(&a, 0, 0), 1);
    }

    #[test]
    fn a_map_whose_node_udev_has_not_made_yet_is_missing_then_healthy() {
        let (_t, s) = setup();
        let aliases = [alias("vm1", W, Some(2))];
        let mut seen = BTreeMap::new();
        let early = assess(&aliases, &s.maps(), &s.disks(), &mut seen, 1, &|_| false);
        assert_eq!((early[0].state, early[0].paths_up), (LunState::Missing, 2), "nothing can open it yet");
        let later = assess(&aliases, &s.maps(), &s.disks(), &mut seen, 1, &|a| a == "vm1");
        assert_eq!(later[0].state, LunState::Healthy);
        // The node's arrival is an event: placement reacts to it.
        let events = changes(&early, &later);
        assert!(
            events.iter().any(|e| matches!(e, StorageEvent::StateChanged { to: LunState::Healthy, .. })),
            "{events:?}"
        );
    }

    #[test]
    fn an_alias_without_a_map_is_missing() {
        let (_t, s) = setup();
        let aliases = [alias("ghost", "3600a0b800099", Some(2))];
        let st = run(&s, &aliases, &mut BTreeMap::new());
        assert_eq!((st[0].state, st[0].paths_up, st[0].dm.clone()), (LunState::Missing, 0, None));
        assert_eq!(lines(&[], &st), vec!["LUN ghost (3600a0b800099): 0 of 2 paths up, MISSING"]);
    }
}
