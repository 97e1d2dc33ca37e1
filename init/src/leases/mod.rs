//! Storage leases with sanlock (Debian's `sanlock` 3.8): the daemon and its watchdog
//! multiplexer supervised by PID 1, the cluster's lockspace on the lease LUN joined with this
//! blade's `host-id`, and one resource lease per guest held by the guest's QEMU process itself
//! (`exec.rs`: registered and acquired before QEMU runs, released by sanlock when it dies).
//!
//! This module builds sanlock's arguments and reads its answers (pure, tested here); running
//! them is the edge's (`run`), with a deadline.

pub mod exec;

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::ha::Ha;
use crate::config::services::{Backoff, Readiness, RestartPolicy};
use crate::config::{ClusterConfig, ServiceSpec};

pub const SANLOCK: &str = "/usr/sbin/sanlock";
pub const WDMD: &str = "/usr/sbin/wdmd";
/// The daemon's socket: ready once it exists.
pub const SOCKET: &str = "/run/sanlock/sanlock.sock";

/// This blade's place in the cluster's lease area.
#[derive(Debug, Clone, PartialEq)]
pub struct Area {
    pub ha: Ha,
    pub lockspace: String,
    /// The lease LUN's map: `/dev/mapper/<lease-alias>`.
    pub path: PathBuf,
    pub host_id: u32,
}

impl Area {
    /// The area of `node`, when the cluster has one and the node a host id.
    pub fn of(cluster: &ClusterConfig, node: &str, dev_mapper: &Path) -> Option<Area> {
        let ha = cluster.ha.clone()?;
        let host_id = cluster.nodes.get(node)?.host_id?;
        Some(Area {
            lockspace: Ha::lockspace(&cluster.cluster.name),
            path: dev_mapper.join(&ha.lease_alias),
            host_id,
            ha,
        })
    }

    fn disk(&self) -> String {
        // Aliases are [A-Za-z0-9._-]: nothing in the path needs sanlock's escapes.
        self.path.display().to_string()
    }

    /// `-s` of this blade's host id: `LOCKSPACE:HOST_ID:PATH:0`.
    pub fn lockspace_arg(&self) -> String {
        format!("{}:{}:{}:0", self.lockspace, self.host_id, self.disk())
    }

    /// `-r` of a guest's lease: `LOCKSPACE:GUEST:PATH:OFFSET`.
    pub fn resource_arg(&self, guest: &str) -> String {
        format!("{}:{}:{}:{}", self.lockspace, guest, self.disk(), self.ha.offset(guest))
    }

    /// Joins the lockspace (sanlock takes the host id's delta lease: 2 x io-timeout or more).
    pub fn join_argv(&self) -> Vec<String> {
        let io = self.ha.io_timeout_s.to_string();
        argv(&["client", "add_lockspace", "-s", &self.lockspace_arg(), "-o", &io])
    }

    /// Whether the area holds this cluster's lockspace: reading host id 1's delta lease.
    pub fn read_argv(&self) -> Vec<String> {
        let s = format!("{}:1:{}:0", self.lockspace, self.disk());
        argv(&["direct", "read_leader", "-s", &s])
    }

    /// Initialises the lockspace and one lease per guest: every command, in order.
    pub fn init_argv<'a>(&self, guests: impl Iterator<Item = &'a str>) -> Vec<Vec<String>> {
        let io = self.ha.io_timeout_s.to_string();
        let s = format!("{}:0:{}:0", self.lockspace, self.disk());
        let mut out = vec![argv(&["direct", "init", "-s", &s, "-o", &io])];
        out.extend(guests.map(|g| argv(&["direct", "init", "-r", &self.resource_arg(g)])));
        out
    }

    /// Acquires a guest's lease for a registered process (the destination of a migration).
    pub fn acquire_argv(&self, guest: &str, pid: u32) -> Vec<String> {
        argv(&["client", "acquire", "-r", &self.resource_arg(guest), "-p", &pid.to_string()])
    }

    /// Releases a guest's lease from a process (the paused source of a migration).
    pub fn release_argv(&self, guest: &str, pid: u32) -> Vec<String> {
        argv(&["client", "release", "-r", &self.resource_arg(guest), "-p", &pid.to_string()])
    }
}

fn argv(args: &[&str]) -> Vec<String> {
    std::iter::once(SANLOCK).chain(args.iter().copied()).map(String::from).collect()
}

/// The two daemons PID 1 supervises when the cluster has a lease area: wdmd, which owns
/// `/dev/watchdog` and resets the blade when sanlock stops renewing, and sanlock.
pub fn daemon_services() -> Vec<ServiceSpec> {
    let wdmd = ServiceSpec {
        ready: Readiness { path: Some("/run/wdmd/wdmd.sock".into()), ..Default::default() },
        backoff: Backoff { give_up_after: 0, ..Default::default() },
        ..ServiceSpec::new("wdmd", vec![WDMD.into(), "-D".into()], RestartPolicy::Always)
    };
    let sanlock = ServiceSpec {
        after: vec!["wdmd".into()],
        ready: Readiness { path: Some(SOCKET.into()), ..Default::default() },
        backoff: Backoff { give_up_after: 0, ..Default::default() },
        // It leaves the lockspace first at shutdown (pid1::leasekeeper::leave); give it the time.
        stop_timeout_s: 60.0,
        // -D: stay in the foreground, log to stderr (our log); -w 1: through wdmd.
        ..ServiceSpec::new(
            "sanlock",
            vec![SANLOCK.into(), "daemon".into(), "-D".into(), "-w".into(), "1".into()],
            RestartPolicy::Always,
        )
    };
    vec![wdmd, sanlock]
}

/// A guest's service made to hold its lease: QEMU started through `bladevisor lease-exec`
/// (`exe`), which drops to the guest's user itself once the lease is held (or, arriving by
/// migration, once registered); it starts after sanlock and stops before it.
pub fn leased(mut spec: ServiceSpec, area: &Area, guest: &str, register_only: bool, exe: &str) -> ServiceSpec {
    if let Some(u) = spec.unprivileged.as_mut() {
        u.drops_itself = true;
        let qemu = std::mem::take(&mut spec.argv);
        spec.argv = exec::wrap(exe, u.uid, u.gid, &area.resource_arg(guest), register_only, qemu);
    }
    spec.after.push("sanlock".into());
    spec
}

/// What `status` shows of the lease area.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LeaseStatus {
    pub lockspace: String,
    pub host_id: u32,
    /// The lease LUN's map.
    pub path: String,
    #[serde(flatten)]
    pub state: Lockspace,
    /// sanlock's I/O timeout, and the failover time it implies (a dead blade's guests may start
    /// elsewhere after this many seconds).
    pub io_timeout_s: u32,
    pub failover_s: u64,
    /// HA restarts this blade made since it booted.
    #[serde(default)]
    pub ha_restarts: u64,
    /// The lease events this blade saw, oldest first (the last [`KEEP_EVENTS`]): lockspace
    /// joined and lost, a guest's lease changing hands, HA restarts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<LeaseEvent>,
}

/// How many lease events `status` keeps.
pub const KEEP_EVENTS: usize = 32;

/// One thing that happened to the lease area or a guest's lease, as this blade saw it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LeaseEvent {
    /// How long ago, in seconds, when `status` was read (the blade's monotonic clock: a blade
    /// without time synchronisation still orders its events right).
    pub age_s: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest: Option<String>,
    pub what: String,
}

impl Area {
    pub fn status(&self, state: Lockspace, ha_restarts: u64, events: Vec<LeaseEvent>) -> LeaseStatus {
        LeaseStatus {
            lockspace: self.lockspace.clone(),
            host_id: self.host_id,
            path: self.disk(),
            state,
            io_timeout_s: self.ha.io_timeout_s,
            failover_s: self.ha.failover_s(),
            ha_restarts,
            events,
        }
    }

    /// Leaves the lockspace (at an orderly shutdown, once no guest holds a lease here), so that
    /// sanlock can stop without the watchdog resetting the blade.
    pub fn leave_argv(&self) -> Vec<String> {
        argv(&["client", "rem_lockspace", "-s", &self.lockspace_arg()])
    }

    /// Whether this blade is in the lockspace: `sanlock client inq_lockspace` succeeds.
    pub fn inquire_argv(&self) -> Vec<String> {
        argv(&["client", "inq_lockspace", "-s", &self.lockspace_arg()])
    }
}

/// Who holds a guest's lease, as the lease LUN says.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", tag = "lease")]
pub enum LeaseState {
    /// Never taken, or released (its QEMU ended cleanly, or a migration handed it over).
    Free,
    /// Held by this host id; `live` while that host renews its lockspace.
    Held { host_id: u32, live: bool },
    /// Could not be read.
    Unknown { why: String },
}

impl Area {
    /// Reads a guest's lease leader record.
    pub fn read_lease_argv(&self, guest: &str) -> Vec<String> {
        argv(&["direct", "read_leader", "-r", &self.resource_arg(guest)])
    }

    /// Every host of the lockspaces, as this blade's sanlock sees their renewals (`gets -h 1`
    /// prints each host's state word; `host_status` does not).
    pub fn host_status_argv(&self) -> Vec<String> {
        argv(&["client", "gets", "-h", "1"])
    }
}

fn field(output: &str, name: &str) -> Option<u64> {
    output.lines().find_map(|l| l.trim().strip_prefix(name)?.trim().parse().ok())
}

/// `sanlock client gets -h 1` lines (`h 2 gen 1 timestamp 840 LIVE`): each host's state word.
pub fn host_states(output: &str) -> std::collections::BTreeMap<u32, String> {
    output
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            match w.as_slice() {
                ["h", id, "gen", _, "timestamp", _, state, ..] => Some((id.parse().ok()?, state.to_string())),
                _ => None,
            }
        })
        .collect()
}

/// A lease's holder from its leader record (`owner_id`, `timestamp`: 0 once released) and the
/// hosts' states: held by a host that is not LIVE means that host stopped renewing.
pub fn lease_state(leader: Result<&str, &str>, hosts: &std::collections::BTreeMap<u32, String>) -> LeaseState {
    let out = match leader {
        Ok(o) => o,
        Err(e) => return LeaseState::Unknown { why: first_line(e) },
    };
    match (field(out, "owner_id"), field(out, "timestamp")) {
        (Some(0), _) | (_, Some(0)) => LeaseState::Free,
        (Some(id), Some(_)) => {
            let id = id as u32;
            LeaseState::Held { host_id: id, live: hosts.get(&id).is_none_or(|s| s != "DEAD") }
        }
        _ => LeaseState::Unknown { why: format!("unreadable leader record: {}", first_line(out)) },
    }
}

/// Where this blade stands in the lease area.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", tag = "state", content = "why")]
pub enum Lockspace {
    /// Joining (taking the host id's delta lease takes a few io timeouts).
    Joining,
    /// Joined: guests may take their leases.
    Joined,
    /// The area holds no lockspace of this cluster: `bladevisor leases init` first.
    NotInitialised(String),
    /// Something else is wrong (sanlock down, the LUN missing, ...).
    Failed(String),
}

impl Lockspace {
    /// For an operator: what the state means and, where one is needed, what to do.
    pub fn describe(&self) -> String {
        match self {
            Lockspace::Joined => "joined".into(),
            Lockspace::Joining => "joining".into(),
            Lockspace::NotInitialised(w) => format!("NOT INITIALISED ({w}): bladevisor leases init"),
            Lockspace::Failed(w) => format!("FAILED: {w}"),
        }
    }
}

/// Reads `sanlock direct read_leader -s` of an area: Ok when it holds `lockspace`, else where
/// that leaves the blade.
pub fn read_leader_says(lockspace: &str, ok: bool, output: &str) -> Result<(), Lockspace> {
    let named = output.lines().any(|l| {
        let l = l.trim();
        l.strip_prefix("space_name").map(|v| v.trim() == lockspace).unwrap_or(false)
    });
    match (ok, named) {
        (true, true) => Ok(()),
        (true, false) => {
            Err(Lockspace::NotInitialised(format!("the lease LUN holds another lockspace: {}", first_line(output))))
        }
        // A blank LUN reads back zeros (sanlock: -1, or -223 for a bad magic); an I/O error
        // (-5) or anything else is a LUN that cannot be read.
        (false, _) if ["done -1", "error -1", "-223"].iter().any(|c| output.lines().any(|l| l.trim().ends_with(c))) => {
            Err(Lockspace::NotInitialised(format!("no lockspace on the lease LUN ({})", first_line(output))))
        }
        (false, _) => Err(Lockspace::Failed(format!("cannot read the lease LUN: {}", first_line(output)))),
    }
}

/// The line of sanlock's output that says what went wrong (or the first), for a message.
fn first_line(s: &str) -> String {
    let lines = || s.lines().map(str::trim).filter(|l| !l.is_empty());
    let line = lines().find(|l| l.contains("error") || l.contains("fail")).or_else(|| lines().next());
    crate::config::error::shorten(line.unwrap_or(""), 160)
}

/// Runs a sanlock command with a deadline (a child the main loop's reaper leaves to us); its
/// output, or why it failed.
pub fn run(argv: &[String], limit: Duration) -> Result<String, String> {
    let (code, text) = crate::child::run(argv, limit)?;
    if code == 0 {
        Ok(text)
    } else {
        Err(format!("{} failed (exit {code}): {}", argv[1..3.min(argv.len())].join(" "), first_line(&text)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn area() -> Area {
        let text =
            "[cluster]\nname = \"lab\"\n[nodes.blade1]\nhost-id = 7\n[aliases]\nlab-leases = { wwid = \"3600a09\" }\n\
                    [ha]\nlease-alias = \"lab-leases\"\nio-timeout-s = 3\nslots = 16\n";
        let c = crate::config::cluster::parse_cluster(Path::new("c.toml"), text).unwrap();
        Area::of(&c, "blade1", Path::new("/dev/mapper")).unwrap()
    }

    #[test]
    fn sanlock_is_told_the_lockspace_and_each_guests_lease_on_the_lease_lun() {
        let a = area();
        assert_eq!(a.lockspace_arg(), "lab:7:/dev/mapper/lab-leases:0");
        let off = a.ha.offset("web");
        assert_eq!(a.resource_arg("web"), format!("lab:web:/dev/mapper/lab-leases:{off}"));
        assert_eq!(
            a.join_argv().join(" "),
            "/usr/sbin/sanlock client add_lockspace -s lab:7:/dev/mapper/lab-leases:0 -o 3"
        );
        let init = a.init_argv(["web", "db"].into_iter());
        assert_eq!(init[0].join(" "), "/usr/sbin/sanlock direct init -s lab:0:/dev/mapper/lab-leases:0 -o 3");
        assert_eq!(init.len(), 3);
        assert_eq!(a.acquire_argv("web", 42)[3..], ["-r".to_string(), a.resource_arg("web"), "-p".into(), "42".into()]);
    }

    #[test]
    fn an_area_without_this_clusters_lockspace_is_not_initialised() {
        let good = "space_name lab\nresource_name 7e0b\nlocal_host_id 0\n";
        assert_eq!(read_leader_says("lab", true, good), Ok(()));
        assert!(
            matches!(read_leader_says("lab", true, "space_name other\n"), Err(Lockspace::NotInitialised(w)) if w.contains("another"))
        );
        assert!(
            matches!(read_leader_says("lab", false, "read_leader error -223\n"), Err(Lockspace::NotInitialised(w)) if w.contains("-223"))
        );
        let blank = "read_leader done -1";
        assert!(matches!(read_leader_says("lab", false, blank), Err(Lockspace::NotInitialised(_))));
        let lost = "read_leader done -5\n";
        assert!(matches!(read_leader_says("lab", false, lost), Err(Lockspace::Failed(w)) if w.contains("cannot read")));
    }

    #[test]
    fn a_lease_is_free_held_by_a_live_host_or_held_by_a_dead_one() {
        let hosts = host_states("h 1 gen 3 timestamp 8840 LIVE\nh 2 gen 1 timestamp 770 DEAD\n");
        assert_eq!(hosts.get(&2).map(String::as_str), Some("DEAD"));
        let leader = |owner, ts| format!("read_leader done 0\nowner_id {owner}\nowner_generation 1\ntimestamp {ts}\n");
        assert_eq!(lease_state(Ok(&leader(1, 812)), &hosts), LeaseState::Held { host_id: 1, live: true });
        assert_eq!(lease_state(Ok(&leader(2, 700)), &hosts), LeaseState::Held { host_id: 2, live: false });
        assert_eq!(lease_state(Ok(&leader(2, 0)), &hosts), LeaseState::Free, "released");
        assert_eq!(lease_state(Ok(&leader(0, 0)), &hosts), LeaseState::Free, "never taken");
        assert!(matches!(lease_state(Err("read_leader error -5"), &hosts), LeaseState::Unknown { .. }));
        // A host this blade has not heard of yet is not taken for dead.
        assert_eq!(lease_state(Ok(&leader(7, 12)), &hosts), LeaseState::Held { host_id: 7, live: true });
    }

    #[test]
    fn a_node_without_a_host_id_or_a_cluster_without_ha_has_no_area() {
        let c = crate::config::cluster::parse_cluster(Path::new("c.toml"), "[cluster]\nname = \"lab\"\n[nodes.b]\n")
            .unwrap();
        assert!(Area::of(&c, "b", Path::new("/dev/mapper")).is_none());
        assert_eq!(daemon_services()[1].after, vec!["wdmd".to_string()]);
    }
}
