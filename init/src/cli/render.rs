//! What the CLI prints: each answer rendered for an operator's terminal (`--json` prints the
//! answer itself).

use crate::migration::MigrationStatus;
use crate::proto::Status;
use crate::storage::reload::ReloadReport;
use crate::supervisor::ServiceState;

/// `bladevisor list`: a line per guest, then the blades asked.
pub fn render_list(v: &crate::proto::cluster::ClusterGuests) -> String {
    let mut out = format!("{:<16} {:<10} {:<10} {:<10} {}\n", "GUEST", "HOME", "RUNS ON", "STATE", "WHY");
    for g in &v.guests {
        out.push_str(
            format!(
                "{:<16} {:<10} {:<10} {:<10} {}",
                g.name,
                g.home,
                g.runs_on.as_deref().unwrap_or("-"),
                g.state,
                g.reason.as_deref().unwrap_or("")
            )
            .trim_end(),
        );
        out.push('\n');
    }
    let blades: Vec<String> = v
        .blades
        .iter()
        .map(|b| match &b.error {
            None => format!("{} answered", b.node),
            Some(e) => format!("{} COULD NOT BE ASKED ({e})", b.node),
        })
        .collect();
    out.push_str(&format!("blades: {}\n", blades.join(", ")));
    out
}

/// A reload's outcome: the summary, then one line per new, removed and kept alias.
pub fn render_reload(r: &ReloadReport) -> String {
    let mut out =
        format!("alias table reloaded ({}) in {:.1} s; {}\n", r.source, r.took_ms as f64 / 1000.0, r.scan.summary());
    for a in &r.added {
        out.push_str(&format!(
            "  new     {:<20} {:<9} {} paths  ({})\n",
            a.alias,
            a.state.as_str(),
            a.paths_up,
            a.wwid
        ));
    }
    for x in &r.removed {
        out.push_str(&format!("  removed {:<20} {}\n", x.alias, x.note));
    }
    for k in &r.retired {
        out.push_str(&format!("  KEPT    {:<20} {}\n", k.alias, k.warning()));
    }
    out
}

/// Sends an operator's request and prints the blade's message.
/// One line for a migration in progress or done.
pub fn render_migration(m: &MigrationStatus) -> String {
    let arrow = if m.direction == crate::migration::Direction::Out {
        format!("{} -> {}", m.guest, m.peer)
    } else {
        format!("{} <- {}", m.guest, m.peer)
    };
    if let Some(o) = &m.outcome {
        return format!("{arrow}: {}", o.summary());
    }
    match (&m.phase, &m.progress) {
        (crate::migration::Phase::Streaming, Some(p)) if p.total_bytes == 0 => {
            format!("{arrow}: setting up the stream")
        }
        (crate::migration::Phase::Streaming, Some(p)) => format!(
            "{arrow}: {:>5.1}%  {:>7.1} Mbit/s  remaining {:.1} MiB of {:.1} MiB  (pass {}, downtime limit {} ms)",
            p.percent,
            p.mbps,
            p.remaining_bytes as f64 / 1048576.0,
            p.total_bytes as f64 / 1048576.0,
            p.passes,
            p.downtime_limit_ms
        ),
        (phase, _) => format!("{arrow}: {}", format!("{phase:?}").to_lowercase()),
    }
}

/// Follows migration `id` in the blade's status until it ends; prints progress as it changes.
/// The status as an operator reads it on a console.
pub fn render_status(s: &Status) -> String {
    let mut out = String::new();
    let ready = match (s.ready, s.ready_ms) {
        (true, Some(ms)) => format!("ready ({ms} ms after kernel start)"),
        _ => "booting".into(),
    };
    let degraded = if s.degraded.is_empty() { "" } else { ", DEGRADED" };
    out.push_str(&format!("node     {}\nversion  {}\nstate    {ready}{degraded}\n", s.node, s.version));
    out.push_str(&format!(
        "uptime   {:.0} s, {} CPUs, memory {} of {} MiB in use\n",
        s.uptime_s, s.cpus, s.memory.used_mib, s.memory.total_mib
    ));
    if let Some(src) = &s.config_source {
        out.push_str(&format!(
            "config   {src}{}\n",
            s.cluster.as_ref().map(|c| format!(" (cluster {c})")).unwrap_or_default()
        ));
    }
    if let Some(c) = &s.credentials {
        out.push_str(&format!("peers    credentials {c}\n"));
    }
    if let Some(t) = s.cert_not_after.and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok()) {
        out.push_str(&format!("tls      certificate valid until {}\n", t.date()));
    }
    if let Some(m) = &s.management {
        out.push_str(&format!("mgmt     {m}\n"));
    }
    if let Some(c) = &s.clock {
        out.push_str(&format!("clock    {c}\n"));
    }
    if let Some(b) = &s.booting {
        out.push_str(&format!("booting  {b}\n"));
    }
    if !s.boot_phases.is_empty() {
        let phases: Vec<String> = s
            .boot_phases
            .iter()
            .map(|p| {
                let flag = if p.problems > 0 { " (!)" } else { "" };
                format!("{} {:.1} s{flag}", p.name, p.ms as f64 / 1000.0)
            })
            .collect();
        out.push_str(&format!("boot     {}\n", phases.join(", ")));
    }
    if let Some(d) = &s.drained {
        out.push_str(&format!("drained  {d} (no guest is placed here until `bladevisor undrain`)\n"));
    }
    if let Some(l) = &s.leases {
        out.push_str(&format!(
            "leases   lockspace {} as host {} on {}: {} (io timeout {} s, failover {} s, {} HA restarts here)\n",
            l.lockspace,
            l.host_id,
            l.path,
            l.state.describe(),
            l.io_timeout_s,
            l.failover_s,
            l.ha_restarts
        ));
        // The last few lease events: what an operator asks after a failover.
        for e in l.events.iter().rev().take(5).rev() {
            let guest = e.guest.as_deref().map(|g| format!("{g}: ")).unwrap_or_default();
            out.push_str(&format!("  lease event {} s ago: {guest}{}\n", e.age_s, e.what));
        }
    }
    if let Some(a) = s.shutting_down {
        out.push_str(&format!("shutdown {} in progress\n", a.as_str()));
    }
    for d in &s.degraded {
        out.push_str(&format!("  ! {d}\n"));
    }
    for w in &s.warnings {
        out.push_str(&format!("  warning: {w}\n"));
    }
    if !s.hbas.is_empty() {
        out.push_str(&format!("\n{:<8} {:<20} {:<10} {:<10} {}\n", "HBA", "WWPN", "STATE", "SPEED", "FABRIC"));
        for h in &s.hbas {
            out.push_str(&format!("{:<8} {:<20} {:<10} {:<10} {}\n", h.host, h.wwpn, h.port_state, h.speed, h.fabric));
        }
    }
    if !s.luns.is_empty() {
        out.push_str(&format!(
            "\n{:<16} {:<34} {:>5} {:<9} {:<6} {}\n",
            "ALIAS", "WWID", "PATHS", "STATE", "MAP", "PATHS (! = not running)"
        ));
        for l in &s.luns {
            let paths: Vec<String> = l
                .paths
                .iter()
                .map(|p| {
                    let via = p.hba.as_ref().map(|h| format!("@{h}")).unwrap_or_default();
                    format!("{}{via}{}", p.dev, if p.healthy() { "" } else { "!" })
                })
                .collect();
            let count = format!("{}/{}", l.paths_up, l.paths_expected);
            let dm = l.dm.as_deref().unwrap_or("-");
            out.push_str(&format!(
                "{:<16} {:<34} {:>5} {:<9} {:<6} {}\n",
                l.alias,
                l.wwid,
                count,
                l.state.as_str(),
                dm,
                paths.join(" ")
            ));
        }
        out.push_str(&format!("(aliases: {})\n", s.aliases_source.as_deref().unwrap_or("none")));
    }
    if !s.guests.is_empty() {
        let accel = if s.kvm { "KVM" } else { "TCG: /dev/kvm not usable" };
        out.push_str(&format!(
            "\n{:<16} {:<18} {:>7} {:>8} {:>9}  DISKS / REASON   ({accel})\n",
            "GUEST", "STATE", "PID", "RESTARTS", "UPTIME"
        ));
        for g in &s.guests {
            let pid = g.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into());
            let up =
                if g.state == crate::proto::GuestState::Running { format!("{:.0} s", g.uptime_s) } else { "-".into() };
            let mut note = g.reason.clone().unwrap_or_else(|| g.disks.join(" "));
            if let Some(l) = &g.lease {
                note = format!("{note} [lease {l}]");
            }
            out.push_str(&format!("{:<16} {:<18} {:>7} {:>8} {:>9}  {note}\n", g.name, g.state, pid, g.restarts, up));
        }
    }
    if !s.migrations.is_empty() {
        out.push_str("\nMIGRATIONS (newest last)\n");
        for m in &s.migrations {
            out.push_str(&format!("{:>6.0} s ago  {}\n", m.age_s, render_migration(m)));
        }
    }
    out.push_str(&format!(
        "\n{:<16} {:<9} {:>7} {:>8}  {}\n",
        "SERVICE", "STATE", "PID", "RESTARTS", "LAST EXIT / REASON"
    ));
    for x in &s.services {
        let state = serde_json::to_value(x.state).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
        let pid = x.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into());
        let note = x.reason.clone().or_else(|| x.last_exit.map(|e| e.to_string())).unwrap_or_default();
        let flag = if x.state == ServiceState::Failed { "!" } else { "" };
        out.push_str(&format!("{:<16} {:<9} {:>7} {:>8}  {}{}\n", x.name, state, pid, x.restarts, flag, note));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::migration::MigrationStatus;

    #[test]
    fn a_migration_reads_as_progress_then_result() {
        let mut m: MigrationStatus = serde_json::from_value(serde_json::json!({
            "id": 3, "guest": "demo", "direction": "out", "peer": "blade2", "phase": "streaming",
            "progress": {"status": "active", "percent": 42.0, "transferred_bytes": 1, "remaining_bytes": 3355443,
                         "total_bytes": 34603008, "mbps": 12.5, "downtime_limit_ms": 300, "passes": 1},
            "outcome": null, "age_s": 2.0}))
        .unwrap();
        assert_eq!(
            render_migration(&m),
            "demo -> blade2:  42.0%     12.5 Mbit/s  remaining 3.2 MiB of 33.0 MiB  (pass 1, downtime limit 300 ms)"
        );
        m.outcome = Some(crate::migration::Outcome::failed(
            crate::migration::Phase::Streaming,
            "QEMU: Connection reset by peer",
            true,
        ));
        assert_eq!(
            render_migration(&m),
            "demo -> blade2: failed while streaming: QEMU: Connection reset by peer; the guest runs on the source"
        );
    }

    #[test]
    fn status_renders_luns_guests_and_services_for_a_console() {
        let json = r#"{"node":"blade1","version":"v1","ready":true,"ready_ms":15200,"uptime_s":40.0,
            "shutting_down":null,"degraded":["LUN vm2 (3600b) is missing: 0 of 2 paths up"],"orphans_reaped":0,
            "cluster":"lab","config_source":"baked /etc/bladevisor/cluster.toml","management":"enp0s3 10.0.2.15",
            "luns":[{"alias":"vm1","wwid":"3600a","paths_up":1,"paths_expected":2,"state":"degraded","dm":"dm-0",
              "size_bytes":1024,"paths":[{"dev":"sda","hba":"host0","state":"running"},{"dev":"sdb","hba":"host1","state":"offline"}]}],
            "hbas":[{"host":"host0","wwpn":"0x21","wwnn":"0x20","port_state":"Online","speed":"16 Gbit","fabric":"0x10"}],
            "aliases_source":"the cluster configuration's [aliases]",
            "guests":[{"name":"demo","state":"running","pid":7,"restarts":1,"uptime_s":12.0,"disks":["vm1"],"reason":null}],
            "kvm":false,"cpus":2,"memory":{"total_mib":1966,"used_mib":300,"available_mib":1666},
            "services":[{"name":"udevd","state":"running","pid":5,"restarts":0,"last_exit":null,"since_s":1.0,"reason":null}]}"#;
        let s: Status = serde_json::from_str(json).unwrap();
        let out = render_status(&s);
        for want in [
            "state    ready (15200 ms after kernel start), DEGRADED",
            "  ! LUN vm2 (3600b) is missing: 0 of 2 paths up",
            "config   baked /etc/bladevisor/cluster.toml (cluster lab)",
            "mgmt     enp0s3 10.0.2.15",
            "host0    0x21",
            "vm1              3600a",
            "1/2 degraded  dm-0   sda@host0 sdb@host1!",
            "demo             running",
            "TCG: /dev/kvm not usable",
            "udevd            running",
        ] {
            assert!(out.contains(want), "{want:?} missing from:\n{out}");
        }
        // (That status is the first release's shape: no boot phases, and it still reads.)
        assert!(!out.contains("boot "), "{out}");
        let mut s = s;
        s.boot_phases = vec![
            crate::proto::BootPhase { name: "network".into(), ms: 1200, problems: 0 },
            crate::proto::BootPhase { name: "storage".into(), ms: 15040, problems: 1 },
        ];
        let out = render_status(&s);
        assert!(out.contains("boot     network 1.2 s, storage 15.0 s (!)\n"), "{out}");
    }

    #[test]
    fn the_cluster_list_has_a_line_per_guest_and_names_blades_not_asked() {
        use crate::proto::cluster::{BladeSeen, ClusterGuests, GuestWhere};
        use crate::proto::GuestState;
        let g = |name: &str, runs_on: Option<&str>, state, reason: Option<&str>| GuestWhere {
            name: name.into(),
            home: "blade1".into(),
            runs_on: runs_on.map(String::from),
            state,
            reason: reason.map(String::from),
            also_on: vec![],
        };
        let v = ClusterGuests {
            blades: vec![
                BladeSeen { node: "blade1".into(), error: None },
                BladeSeen { node: "blade2".into(), error: Some("connection refused".into()) },
            ],
            guests: vec![
                g("web", Some("blade1"), GuestState::Running, None),
                g("db", None, GuestState::Stopped, Some("stopped by the operator")),
            ],
        };
        let out = render_list(&v);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0].split_whitespace().collect::<Vec<_>>(), ["GUEST", "HOME", "RUNS", "ON", "STATE", "WHY"]);
        assert_eq!(lines[1].split_whitespace().collect::<Vec<_>>(), ["web", "blade1", "blade1", "running"]);
        assert!(
            lines[2].starts_with("db ")
                && lines[2].contains(" -  ")
                && lines[2].ends_with("stopped    stopped by the operator"),
            "{out}"
        );
        assert_eq!(lines[3], "blades: blade1 answered, blade2 COULD NOT BE ASKED (connection refused)");
    }
}
