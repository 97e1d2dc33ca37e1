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

/// Assesses every alias from what sysfs shows. `most_seen` (per WWID) is updated.
pub fn assess(
    aliases: &[Alias],
    maps: &[Map],
    disks: &[Disk],
    most_seen: &mut BTreeMap<String, u32>,
    default_paths: u32,
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

/// One line per change between two assessments: paths lost and back, state changes.
pub fn changes(before: &[LunStatus], after: &[LunStatus]) -> Vec<String> {
    let mut out = vec![];
    for now in after {
        let prev = before.iter().find(|b| b.alias == now.alias);
        let healthy =
            |l: &LunStatus| -> Vec<String> { l.paths.iter().filter(|p| p.healthy()).map(|p| p.dev.clone()).collect() };
        let was = prev.map(healthy).unwrap_or_default();
        let is = healthy(now);
        let counts = format!("{} of {} paths up, {}", now.paths_up, now.paths_expected, state_word(now.state));
        for lost in was.iter().filter(|d| !is.contains(d)) {
            let p = prev.and_then(|p| p.paths.iter().find(|x| &x.dev == lost));
            let via = p.and_then(|p| p.hba.clone()).map(|h| format!(" via {h}")).unwrap_or_default();
            let why =
                now.paths.iter().find(|x| &x.dev == lost).map(|x| x.state.clone()).unwrap_or_else(|| "removed".into());
            out.push(format!("LUN {}: path {lost}{via} lost ({why}): {counts}", now.alias));
        }
        for back in is.iter().filter(|d| !was.contains(d)) {
            if prev.is_some() {
                let via = now
                    .paths
                    .iter()
                    .find(|x| &x.dev == back)
                    .and_then(|p| p.hba.clone())
                    .map(|h| format!(" via {h}"))
                    .unwrap_or_default();
                out.push(format!("LUN {}: path {back}{via} up: {counts}", now.alias));
            }
        }
        match prev {
            Some(p) if p.state != now.state => out.push(format!(
                "LUN {} ({}): {} -> {}",
                now.alias,
                now.wwid,
                state_word(p.state),
                state_word(now.state)
            )),
            None => out.push(format!(
                "LUN {} ({}): {}{}",
                now.alias,
                now.wwid,
                counts,
                now.dm.as_ref().map(|d| format!(", /dev/mapper/{} is {d}", now.alias)).unwrap_or_default()
            )),
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
        assess(a, &s.maps(), &s.disks(), seen, 1)
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
        let first = changes(&[], &healthy);
        assert_eq!(first, vec![format!("LUN vm1 ({W}): 2 of 2 paths up, healthy, /dev/mapper/vm1 is dm-0")]);

        fake::set_disk_state(t.path(), "sdc", "transport-offline");
        let degraded = run(&s, &aliases, &mut seen);
        assert_eq!((degraded[0].paths_up, degraded[0].state), (1, LunState::Degraded));
        assert_eq!(
            changes(&healthy, &degraded),
            vec![
                "LUN vm1: path sdc via host3 lost (transport-offline): 1 of 2 paths up, DEGRADED".to_string(),
                format!("LUN vm1 ({W}): healthy -> DEGRADED"),
            ]
        );

        fake::set_disk_state(t.path(), "sdc", "running");
        let back = run(&s, &aliases, &mut seen);
        assert_eq!(
            changes(&degraded, &back),
            vec![
                "LUN vm1: path sdc via host3 up: 2 of 2 paths up, healthy".to_string(),
                format!("LUN vm1 ({W}): DEGRADED -> healthy")
            ]
        );
        assert!(changes(&back, &back).is_empty(), "no change, no line");
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
        assert_eq!(
            changes(&before, &after)[0],
            "LUN vm1: path sdc via host3 lost (removed): 1 of 2 paths up, DEGRADED"
        );
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
    fn an_alias_without_a_map_is_missing() {
        let (_t, s) = setup();
        let aliases = [alias("ghost", "3600a0b800099", Some(2))];
        let st = run(&s, &aliases, &mut BTreeMap::new());
        assert_eq!((st[0].state, st[0].paths_up, st[0].dm.clone()), (LunState::Missing, 0, None));
        assert_eq!(changes(&[], &st), vec!["LUN ghost (3600a0b800099): 0 of 2 paths up, MISSING"]);
    }
}
