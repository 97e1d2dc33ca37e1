//! What the parts of bladevisor say to each other: the blade's status, a guest's state, the
//! requests each audience may make (operators, peers), their answers and refusals, and the route
//! table that turns a request into a URL and back. It sits below the API, the coordinator, PID 1
//! and the CLI, and above the leaves whose types the status carries (supervisor, storage,
//! migration); it does nothing itself.

pub mod cluster;
pub mod request;
pub mod routes;
pub mod state;
pub mod stats;

use serde::{Deserialize, Serialize};

use crate::supervisor::ServiceStatus;
pub use state::{GuestState, GuestStatus};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServiceAction {
    Start,
    Stop,
    Restart,
    /// SIGKILL, with no stop requested: the supervisor sees a crash and applies the policy.
    Kill,
}

impl ServiceAction {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceAction::Start => "start",
            ServiceAction::Stop => "stop",
            ServiceAction::Restart => "restart",
            ServiceAction::Kill => "kill",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "start" => Some(ServiceAction::Start),
            "stop" => Some(ServiceAction::Stop),
            "restart" => Some(ServiceAction::Restart),
            "kill" => Some(ServiceAction::Kill),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PowerAction {
    Reboot,
    Poweroff,
    Halt,
    /// Boot the kernel an upgrade loaded (never asked for by name: `upgrade` does it).
    Kexec,
}

impl PowerAction {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "reboot" => Some(PowerAction::Reboot),
            "poweroff" => Some(PowerAction::Poweroff),
            "halt" => Some(PowerAction::Halt),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            PowerAction::Reboot => "reboot",
            PowerAction::Poweroff => "poweroff",
            PowerAction::Halt => "halt",
            PowerAction::Kexec => "kexec",
        }
    }
}

/// One named step of the boot, as `status` shows it: where the time to ready went.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BootPhase {
    pub name: String,
    pub ms: u64,
    /// Reasons for degradation it added.
    pub problems: usize,
}

/// Memory as the operator budgets it for guests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Memory {
    pub total_mib: u64,
    pub used_mib: u64,
    pub available_mib: u64,
    /// Where the blade's own memory goes (from `/proc/meminfo`, MiB): total, free and
    /// available, page cache (active and inactive file pages, mapped) and buffers, processes'
    /// anonymous memory, shared memory and tmpfs (the root image), pages that cannot be evicted
    /// (mlocked daemons), the kernel's slab, stacks, page tables and vmalloc (modules).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub detail: std::collections::BTreeMap<String, u64>,
}

impl Memory {
    /// From the text of `/proc/meminfo`, read once, and the free pages on the kernel's per-CPU
    /// lists (`per_cpu_free_kib`): the totals as the operator budgets them and the detail.
    /// Available is MemAvailable plus those free pages, which the kernel counts in neither
    /// MemFree nor MemAvailable though any allocation may take them; used is the rest of
    /// MemTotal. The detail keeps MemAvailable as the kernel gives it.
    pub fn from_meminfo(text: &str, per_cpu_free_kib: u64) -> Memory {
        let kib = meminfo_kib(text);
        let field = |k: &str| kib.get(k).copied().unwrap_or(0);
        let total_kib = field("MemTotal");
        let available_kib = field("MemAvailable").saturating_add(per_cpu_free_kib).min(total_kib);
        let mut detail: std::collections::BTreeMap<String, u64> =
            kib.iter().map(|(k, v)| (k.to_string(), v / 1024)).collect();
        detail.insert(PER_CPU_FREE.into(), per_cpu_free_kib / 1024);
        Memory {
            total_mib: total_kib / 1024,
            used_mib: (total_kib - available_kib) / 1024,
            available_mib: available_kib / 1024,
            detail,
        }
    }
}

/// The fields of `/proc/meminfo` that `Memory` reads and its detail carries, in KiB.
fn meminfo_kib(text: &str) -> std::collections::BTreeMap<&str, u64> {
    const KEYS: [&str; 18] = [
        "MemTotal",
        "MemFree",
        "MemAvailable",
        "Active(file)",
        "Inactive(file)",
        "Mapped",
        "Buffers",
        "Cached",
        "AnonPages",
        "Shmem",
        "Unevictable",
        "Mlocked",
        "KReclaimable",
        "SUnreclaim",
        "KernelStack",
        "PageTables",
        "Percpu",
        "VmallocUsed",
    ];
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            let kib: u64 = v.split_whitespace().next()?.parse().ok()?;
            KEYS.contains(&k).then_some((k, kib))
        })
        .collect()
}

/// `Memory::detail`'s key for the free pages held on the kernel's per-CPU lists.
pub const PER_CPU_FREE: &str = "FreeInPerCpuLists";

/// KiB of free pages the kernel holds on its per-CPU page lists, from the text of
/// `/proc/zoneinfo` (each CPU's `count:` in each zone's pagesets, in pages). They are free to any
/// allocation (the kernel drains the lists when memory runs short) but `/proc/meminfo` counts them
/// in neither MemFree nor MemAvailable; by default each list may hold up to the zone's low
/// watermark divided by its CPUs, tens of MiB once the boot has churned through pages.
pub fn per_cpu_free_kib(zoneinfo: &str, page_kib: u64) -> u64 {
    zoneinfo
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("count:")?.trim().parse::<u64>().ok())
        .fold(0u64, |sum, pages| sum.saturating_add(pages.saturating_mul(page_kib)))
}

/// Where the blade's CPU time has gone since boot, in seconds summed over its CPUs (from
/// `/proc/stat`'s first line and PID 1's own `/proc/self/stat`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct CpuTime {
    /// Running anything: processes (user, nice, system), interrupts, and what a hypervisor
    /// under this blade took (steal).
    pub busy_s: f64,
    /// Idle, or waiting for I/O.
    pub idle_s: f64,
    /// bladevisor itself (PID 1, its threads, not its services).
    pub init_s: f64,
}

impl CpuTime {
    /// From the texts of `/proc/stat` and `/proc/self/stat`, with the kernel's clock ticks per
    /// second (`sysconf(_SC_CLK_TCK)`). None when `/proc/stat` has no `cpu` line.
    pub fn from_proc(stat: &str, self_stat: &str, ticks_per_s: u64) -> Option<CpuTime> {
        let per_s = ticks_per_s.max(1) as f64;
        // cpu  user nice system idle iowait irq softirq steal guest guest_nice; guest time is
        // already counted in user.
        let line = stat.lines().find(|l| l.split_whitespace().next() == Some("cpu"))?;
        let f: Vec<u64> = line.split_whitespace().skip(1).map(|v| v.parse().unwrap_or(0)).collect();
        let at = |i: usize| f.get(i).copied().unwrap_or(0);
        let busy = at(0) + at(1) + at(2) + at(5) + at(6) + at(7);
        let idle = at(3) + at(4);
        // pid (comm) state ppid ... utime stime: fields 14 and 15, counted after the command's
        // closing parenthesis (the name may hold spaces and parentheses).
        let after = self_stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let g: Vec<u64> = after.split_whitespace().map(|v| v.parse().unwrap_or(0)).collect();
        let init = g.get(11).copied().unwrap_or(0) + g.get(12).copied().unwrap_or(0);
        Some(CpuTime { busy_s: busy as f64 / per_s, idle_s: idle as f64 / per_s, init_s: init as f64 / per_s })
    }
}

/// `GET /v1/status`: one JSON object describing the blade.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub node: String,
    pub version: String,
    pub ready: bool,
    /// Milliseconds from kernel start to ready.
    pub ready_ms: Option<u64>,
    pub uptime_s: f64,
    pub shutting_down: Option<PowerAction>,
    /// Why the blade is not fully healthy, one line per reason.
    pub degraded: Vec<String>,
    /// What an operator should know that is not a fault (no lease area, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    pub orphans_reaped: u64,
    /// The cluster this blade belongs to, once its configuration is known.
    pub cluster: Option<String>,
    /// Which configuration is in use: fetched from a URL, or the baked copy.
    pub config_source: Option<String>,
    /// Where this blade's peer token came from, or why it has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<String>,
    /// How the clock was set at boot from the cluster's NTP servers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock: Option<String>,
    /// When this blade's TLS certificate expires (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_not_after: Option<i64>,
    /// The management interface and its address.
    pub management: Option<String>,
    /// The boot's named phases in order, with how long each took (empty until boot is done).
    #[serde(default)]
    pub boot_phases: Vec<BootPhase>,
    /// Outgoing migrations since boot, by how they ended, and their downtime (absent before
    /// the first).
    #[serde(default, skip_serializing_if = "stats::MigrationStats::is_empty")]
    pub migration_stats: stats::MigrationStats,
    /// While the blade boots: the phase under way and how long it has taken so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub booting: Option<String>,
    /// Every alias of the alias table: its WWID, paths and state.
    pub luns: Vec<crate::storage::LunStatus>,
    /// The FC HBA ports (none in the QEMU lab, which has no FC).
    pub hbas: Vec<crate::storage::sysfs::FcHost>,
    /// Where the alias table in force came from.
    pub aliases_source: Option<String>,
    /// The guests placed on this blade.
    pub guests: Vec<GuestStatus>,
    /// Why this blade takes no guests, when it is drained.
    #[serde(default)]
    pub drained: Option<String>,
    /// True while `drained` is not settled: after a boot, until the peers have said whether
    /// they remember this blade drained, it reads as not drained.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub drain_pending: bool,
    /// Peers that said they are drained (remembered across their reboots).
    #[serde(default)]
    pub drained_nodes: Vec<String>,
    /// Recent migrations from and to this blade, newest last.
    #[serde(default)]
    pub migrations: Vec<crate::migration::MigrationStatus>,
    /// The last evacuation of this blade.
    #[serde(default)]
    pub evacuation: Option<crate::migration::Evacuation>,
    /// An upgrade under way, or the last one that failed (absent: none since this boot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade: Option<crate::release::upgrade::UpgradeStatus>,
    /// The in-place upgrade (kexec) this boot is, if it is one: from which release, what its
    /// evacuation moved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgraded: Option<crate::release::upgrade::Upgraded>,
    /// Whether guests run with KVM (else TCG, much slower).
    pub kvm: bool,
    pub cpus: usize,
    /// CPU time since boot: busy, idle, and bladevisor's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_time: Option<CpuTime>,
    pub memory: Memory,
    pub services: Vec<ServiceStatus>,
    /// The lease area and where this blade stands in it (absent: the cluster has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leases: Option<crate::leases::LeaseStatus>,
}

/// `GET /v1/capacity`: what a blade choosing a migration target needs to know of this one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Capacity {
    pub node: String,
    /// Why it takes no guests, when it is drained.
    pub drained: Option<String>,
    pub shutting_down: bool,
    pub memory: Memory,
    /// The blades it knows are drained (a rebooted blade asks whether it was).
    #[serde(default)]
    pub drained_nodes: Vec<String>,
}

#[cfg(test)]
mod tests {
    #[test]
    fn memory_detail_takes_the_named_meminfo_fields_in_mib() {
        let mut d = super::Memory::from_meminfo(
            "MemTotal: 2048000 kB\nAnonPages:   51200 kB\nShmem: 2048 kB\nbogus\nMlocked: x kB\n\
             Inactive(file): 10240 kB\nHugePages_Total: 0\n",
            0,
        )
        .detail;
        assert_eq!(d.remove(super::PER_CPU_FREE), Some(0));
        let got: Vec<(String, u64)> = d.into_iter().collect();
        let want = [("AnonPages", 50), ("Inactive(file)", 10), ("MemTotal", 2000), ("Shmem", 2)];
        assert_eq!(got, want.map(|(k, v)| (k.to_string(), v)), "{got:?}");
    }

    #[test]
    fn cpu_time_sums_the_busy_and_idle_ticks_and_reads_pid_1s_own_past_its_name() {
        let stat = "cpu  100 20 80 700 50 5 5 40 0 0\ncpu0 50 10 40 350 25 2 3 20 0 0\nintr 1\n";
        // A command name with a space and a parenthesis must not shift the fields.
        let own = "1 (bladevisor (x) 1) S 0 1 1 0 -1 4194560 1000 0 0 0 30 20 0 0 20 0 9 0 1 0 0";
        let c = super::CpuTime::from_proc(stat, own, 100).unwrap();
        assert_eq!(c, super::CpuTime { busy_s: 2.5, idle_s: 7.5, init_s: 0.5 });
        assert_eq!(super::CpuTime::from_proc("intr 1\n", own, 100), None, "no cpu line");
    }

    #[test]
    fn memory_totals_come_from_the_same_meminfo_text() {
        let text = "MemTotal: 2048000 kB\nMemFree: 1024000 kB\nMemAvailable: 1536000 kB\n";
        let m = super::Memory::from_meminfo(text, 0);
        assert_eq!((m.total_mib, m.available_mib, m.used_mib), (2000, 1500, 500));
        assert_eq!(m.detail.get("MemFree"), Some(&1000));
        // Free pages on the per-CPU lists are available, though MemAvailable leaves them out.
        let m = super::Memory::from_meminfo(text, 102400);
        assert_eq!((m.total_mib, m.available_mib, m.used_mib), (2000, 1600, 400));
        assert_eq!((m.detail.get("MemAvailable"), m.detail.get(super::PER_CPU_FREE)), (Some(&1500), Some(&100)));
        assert_eq!(super::Memory::from_meminfo(text, u64::MAX).used_mib, 0, "never more available than the total");
    }

    #[test]
    fn per_cpu_free_pages_are_summed_over_cpus_and_zones() {
        let zoneinfo = "Node 0, zone    DMA32\n  pages free     1000\n  pagesets\n    cpu: 0\n              count: 100\n              high:  2900\n    cpu: 1\n              count: 28\n  node_unreclaimable:  0\nNode 0, zone   Normal\n  pagesets\n    cpu: 0\n              count: 128\n";
        assert_eq!(super::per_cpu_free_kib(zoneinfo, 4), 256 * 4);
        assert_eq!(super::per_cpu_free_kib("", 4), 0);
    }

    use super::*;

    #[test]
    fn actions_round_trip_through_their_names() {
        for a in [PowerAction::Reboot, PowerAction::Poweroff, PowerAction::Halt] {
            assert_eq!(PowerAction::parse(a.as_str()), Some(a));
        }
        assert_eq!(PowerAction::parse("explode"), None);
    }

    /// A `/v1/status` as a blade of the release before the coordinator's restructuring answered
    /// it (every field filled): this release reads it, and writes back the same document.
    const RECORDED: &str = include_str!("../../tests/fixtures/status-before-coordinator.json");

    #[test]
    fn a_status_recorded_before_the_restructuring_still_reads_and_writes_the_same() {
        let s: Status = serde_json::from_str(RECORDED).expect("the recorded status parses");
        assert_eq!(s.node, "blade1");
        let states: Vec<GuestState> = s.guests.iter().map(|g| g.state).collect();
        assert_eq!(
            states,
            [GuestState::Running, GuestState::InDoubt, GuestState::Elsewhere, GuestState::WaitingForDisks]
        );
        assert_eq!(s.migrations[0].direction, crate::migration::Direction::Out);
        assert_eq!(s.boot_phases.len(), 5);
        let recorded: serde_json::Value = serde_json::from_str(RECORDED).unwrap();
        assert_eq!(serde_json::to_value(&s).unwrap(), recorded, "the wire format is unchanged");
    }

    #[test]
    fn capacity_reads_without_the_fields_added_later() {
        let c: Capacity = serde_json::from_str(
            r#"{"node":"blade2","drained":null,"shutting_down":false,"memory":{"total_mib":1,"used_mib":0,"available_mib":1}}"#,
        )
        .unwrap();
        assert!(c.drained_nodes.is_empty());
    }
}
