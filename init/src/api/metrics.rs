//! The blade's metrics in Prometheus text (`GET /metrics`): rendered from a status snapshot,
//! so they say what `status` says. Names follow Prometheus's conventions (`_total` counters,
//! `_seconds`/`_bytes` units, `*_start_time_seconds` rather than uptimes, a state set for
//! guests' states); `promtool check metrics` accepts them (checked in the suite when promtool is
//! installed).

use crate::proto::{GuestState, Status};
use crate::supervisor::ServiceState;

fn esc(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Prometheus text exposition of a status snapshot, at `now` (Unix seconds: start times are
/// derived from it and the uptimes).
pub fn metrics(s: &Status, now: f64) -> String {
    let mut out = String::new();
    let mut metric = |name: &str, help: &str, kind: &str, rows: Vec<(String, f64)>| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for (labels, v) in rows {
            out.push_str(&format!("{name}{labels} {v}\n"));
        }
    };
    let node = format!("node=\"{}\",version=\"{}\"", esc(&s.node), esc(&s.version));
    metric("bladevisor_info", "Image version and node name.", "gauge", vec![(format!("{{{node}}}"), 1.0)]);
    metric(
        "bladevisor_ready",
        "1 once boot is complete.",
        "gauge",
        vec![(String::new(), if s.ready { 1.0 } else { 0.0 })],
    );
    if let Some(t) = s.cert_not_after {
        metric(
            "bladevisor_tls_cert_not_after_timestamp_seconds",
            "When this blade's TLS certificate expires (alert well before).",
            "gauge",
            vec![(String::new(), t as f64)],
        );
    }
    metric(
        "bladevisor_degraded_reasons",
        "Number of reasons the blade is degraded.",
        "gauge",
        vec![(String::new(), s.degraded.len() as f64)],
    );
    metric(
        "bladevisor_drained",
        "1 while the blade takes no guests (after an evacuation, until undrained).",
        "gauge",
        vec![(String::new(), if s.drained.is_some() { 1.0 } else { 0.0 })],
    );
    metric(
        "bladevisor_build_info",
        "The image's version (1).",
        "gauge",
        vec![(format!("{{version=\"{}\"}}", esc(&s.version)), 1.0)],
    );
    metric(
        "bladevisor_start_time_seconds",
        "When the blade's kernel started (Unix time, by the blade's clock).",
        "gauge",
        vec![(String::new(), (now - s.uptime_s).round())],
    );
    metric(
        "bladevisor_orphans_reaped_total",
        "Orphaned processes reaped by PID 1.",
        "counter",
        vec![(String::new(), s.orphans_reaped as f64)],
    );
    metric(
        "bladevisor_service_up",
        "1 when the service is running and ready.",
        "gauge",
        s.services
            .iter()
            .map(|x| {
                (format!("{{service=\"{}\"}}", esc(&x.name)), if x.state == ServiceState::Running { 1.0 } else { 0.0 })
            })
            .collect(),
    );
    let lun = |l: &crate::storage::LunStatus| format!("{{alias=\"{}\",wwid=\"{}\"}}", esc(&l.alias), esc(&l.wwid));
    metric(
        "bladevisor_lun_paths_up",
        "Healthy paths of the LUN.",
        "gauge",
        s.luns.iter().map(|l| (lun(l), l.paths_up as f64)).collect(),
    );
    metric(
        "bladevisor_lun_paths_expected",
        "Paths the LUN should have.",
        "gauge",
        s.luns.iter().map(|l| (lun(l), l.paths_expected as f64)).collect(),
    );
    metric(
        "bladevisor_lun_state",
        "1 for the LUN's current state (healthy, degraded, missing).",
        "gauge",
        s.luns
            .iter()
            .flat_map(|l| {
                ["healthy", "degraded", "missing"].into_iter().map(move |st| {
                    (
                        format!("{{alias=\"{}\",state=\"{st}\"}}", esc(&l.alias)),
                        if l.state.as_str() == st { 1.0 } else { 0.0 },
                    )
                })
            })
            .collect(),
    );
    metric(
        "bladevisor_hba_online",
        "1 when the FC port is Online.",
        "gauge",
        s.hbas
            .iter()
            .map(|h| {
                (
                    format!("{{hba=\"{}\",wwpn=\"{}\"}}", esc(&h.host), esc(&h.wwpn)),
                    if h.port_state == "Online" { 1.0 } else { 0.0 },
                )
            })
            .collect(),
    );
    let g = |x: &crate::proto::GuestStatus| format!("{{guest=\"{}\"}}", esc(&x.name));
    metric(
        "bladevisor_guest_running",
        "1 when the guest runs.",
        "gauge",
        s.guests.iter().map(|x| (g(x), if x.state == GuestState::Running { 1.0 } else { 0.0 })).collect(),
    );
    metric(
        "bladevisor_guest_state",
        "1 for the guest's current state on this blade (a state set: every state is listed).",
        "gauge",
        s.guests
            .iter()
            .flat_map(|x| {
                GuestState::ALL.into_iter().map(move |st| {
                    (format!("{{guest=\"{}\",state=\"{st}\"}}", esc(&x.name)), if x.state == st { 1.0 } else { 0.0 })
                })
            })
            .collect(),
    );
    if let Some(l) = &s.leases {
        metric(
            "bladevisor_lease_area_joined",
            "1 once this blade has joined the cluster's sanlock lockspace (guests may take leases).",
            "gauge",
            vec![(String::new(), if l.state == crate::leases::Lockspace::Joined { 1.0 } else { 0.0 })],
        );
        metric(
            "bladevisor_guest_lease_held_here",
            "1 when this blade holds the guest's storage lease (its QEMU runs here).",
            "gauge",
            s.guests
                .iter()
                .filter(|x| x.lease.is_some())
                .map(|x| (g(x), if x.lease.as_deref() == Some("held here") { 1.0 } else { 0.0 }))
                .collect(),
        );
        metric(
            "bladevisor_ha_restarts_total",
            "Guests this blade started from their disks because their blade died (HA restarts).",
            "counter",
            vec![(String::new(), l.ha_restarts as f64)],
        );
    }
    metric(
        "bladevisor_guest_restarts_total",
        "Restarts of the guest since boot.",
        "counter",
        s.guests.iter().map(|x| (g(x), x.restarts as f64)).collect(),
    );
    metric(
        "bladevisor_guest_start_time_seconds",
        "When the running guest's process started (Unix time, by the blade's clock).",
        "gauge",
        s.guests
            .iter()
            .filter(|x| x.state == GuestState::Running)
            .map(|x| (g(x), (now - x.uptime_s).round()))
            .collect(),
    );
    let usage = |f: fn(&crate::supervisor::cgroup::Usage) -> Option<f64>| -> Vec<(String, f64)> {
        s.guests.iter().filter_map(|x| x.usage.as_ref().and_then(f).map(|v| (g(x), v))).collect()
    };
    metric(
        "bladevisor_guest_cpu_seconds_total",
        "CPU time the guest's process has used (its cgroup).",
        "counter",
        usage(|u| u.cpu_seconds),
    );
    metric(
        "bladevisor_guest_memory_bytes",
        "Memory the guest's process uses now (its cgroup).",
        "gauge",
        usage(|u| u.memory_bytes.map(|v| v as f64)),
    );
    metric(
        "bladevisor_guest_io_read_bytes_total",
        "Bytes the guest's process has read from block devices (its cgroup).",
        "counter",
        usage(|u| u.io_read_bytes.map(|v| v as f64)),
    );
    metric(
        "bladevisor_guest_io_write_bytes_total",
        "Bytes the guest's process has written to block devices (its cgroup).",
        "counter",
        usage(|u| u.io_write_bytes.map(|v| v as f64)),
    );
    let per =
        |what: &str, rows: &dyn Fn(&crate::supervisor::cgroup::Usage) -> Vec<(String, f64)>| -> Vec<(String, f64)> {
            s.guests
                .iter()
                .filter_map(|x| x.usage.as_ref().map(|u| (x, u)))
                .flat_map(|(x, u)| {
                    rows(u)
                        .into_iter()
                        .map(move |(item, v)| (format!("{{guest=\"{}\",{what}=\"{}\"}}", esc(&x.name), esc(&item)), v))
                })
                .collect()
        };
    let disk = |f: fn(&crate::supervisor::cgroup::DiskIo) -> u64| {
        move |u: &crate::supervisor::cgroup::Usage| u.disks.iter().map(|d| (d.device.clone(), f(d) as f64)).collect()
    };
    for (name, help, f) in [
        (
            "read_bytes",
            "Bytes the guest read from the disk (its cgroup; the disk by its alias).",
            disk(|d| d.read_bytes),
        ),
        ("written_bytes", "Bytes the guest wrote to the disk.", disk(|d| d.write_bytes)),
        ("reads_completed", "Reads the guest completed on the disk.", disk(|d| d.reads)),
        ("writes_completed", "Writes the guest completed on the disk.", disk(|d| d.writes)),
    ] {
        metric(&format!("bladevisor_guest_disk_{name}_total"), help, "counter", per("disk", &f));
    }
    let nic = |f: fn(&crate::supervisor::cgroup::NicIo) -> u64| {
        move |u: &crate::supervisor::cgroup::Usage| u.nics.iter().map(|n| (n.nic.clone(), f(n) as f64)).collect()
    };
    for (name, help, f) in [
        ("receive", "Bytes the guest received on the NIC (its tap).", nic(|n| n.receive_bytes)),
        ("transmit", "Bytes the guest sent on the NIC (its tap).", nic(|n| n.transmit_bytes)),
    ] {
        metric(&format!("bladevisor_guest_network_{name}_bytes_total"), help, "counter", per("nic", &f));
    }
    let m = &s.migration_stats;
    metric(
        "bladevisor_migrations_total",
        "Live migrations from this blade since boot, by how they ended.",
        "counter",
        [("completed", m.completed), ("failed", m.failed), ("in-doubt", m.in_doubt)]
            .into_iter()
            .map(|(r, n)| (format!("{{result=\"{r}\"}}"), n as f64))
            .collect(),
    );
    let h = &m.downtime;
    let mut rows: Vec<(String, f64)> =
        h.bounds.iter().zip(&h.counts).map(|(b, c)| (format!("_bucket{{le=\"{b}\"}}"), *c as f64)).collect();
    rows.push(("_bucket{le=\"+Inf\"}".into(), h.count as f64));
    rows.push(("_sum".into(), h.sum));
    rows.push(("_count".into(), h.count as f64));
    metric(
        "bladevisor_migration_downtime_seconds",
        "Downtime of the live migrations from this blade that completed.",
        "histogram",
        rows,
    );
    metric(
        "bladevisor_service_restarts_total",
        "Restarts of the service since boot.",
        "counter",
        s.services.iter().map(|x| (format!("{{service=\"{}\"}}", esc(&x.name)), x.restarts as f64)).collect(),
    );
    metric(
        "bladevisor_service_memory_bytes",
        "Memory the service's cgroup uses now (its processes and the file pages they read).",
        "gauge",
        s.services
            .iter()
            .filter_map(|x| Some((format!("{{service=\"{}\"}}", esc(&x.name)), x.memory_bytes? as f64)))
            .collect(),
    );
    metric(
        "bladevisor_service_memory_file_bytes",
        "Of the service's memory, the file pages (page cache the kernel may drop and read again).",
        "gauge",
        s.services
            .iter()
            .filter_map(|x| Some((format!("{{service=\"{}\"}}", esc(&x.name)), x.memory_file_bytes? as f64)))
            .collect(),
    );
    metric(
        "bladevisor_service_cpu_seconds_total",
        "CPU time the service's cgroup has used since the service started (its processes and all they ran).",
        "counter",
        s.services.iter().filter_map(|x| Some((format!("{{service=\"{}\"}}", esc(&x.name)), x.cpu_seconds?))).collect(),
    );
    if let Some(c) = &s.cpu_time {
        metric(
            "bladevisor_cpu_seconds_total",
            "CPU time since boot, summed over the blade's CPUs: busy, idle, and bladevisor's own (part of busy).",
            "counter",
            vec![
                ("{mode=\"busy\"}".into(), c.busy_s),
                ("{mode=\"idle\"}".into(), c.idle_s),
                ("{mode=\"init\"}".into(), c.init_s),
            ],
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full_status() -> Status {
        Status {
            node: "blade1".into(),
            version: "1.2\"3".into(),
            ready: true,
            ready_ms: Some(1200),
            uptime_s: 3.5,
            shutting_down: None,
            degraded: vec![],
            credentials: None,
            migration_stats: Default::default(),
            booting: None,
            cert_not_after: Some(1_900_000_000),
            clock: None,
            warnings: vec![],
            orphans_reaped: 2,
            cluster: Some("lab".into()),
            config_source: None,
            management: None,
            boot_phases: vec![],
            luns: vec![crate::storage::LunStatus {
                alias: "vm1".into(),
                wwid: "3600a".into(),
                paths_up: 1,
                paths_expected: 2,
                state: crate::storage::LunState::Degraded,
                dm: Some("dm-0".into()),
                size_bytes: Some(1 << 30),
                paths: vec![],
            }],
            hbas: vec![],
            aliases_source: None,
            cpus: 2,
            guests: vec![crate::proto::GuestStatus {
                name: "web".into(),
                state: GuestState::InDoubt,
                pid: Some(9),
                restarts: 0,
                uptime_s: 1.0,
                disks: vec![],
                reason: None,
                runs_on: None,
                lease: None,
                usage: Some(crate::supervisor::cgroup::Usage {
                    cpu_seconds: Some(1.5),
                    memory_bytes: Some(1024),
                    io_read_bytes: Some(10),
                    io_write_bytes: Some(20),
                    ..Default::default()
                }),
            }],
            drained: None,
            drain_pending: false,
            drained_nodes: vec![],
            upgrade: None,
            upgraded: None,
            migrations: vec![],
            evacuation: None,
            kvm: false,
            cpu_time: Some(crate::proto::CpuTime { busy_s: 12.5, idle_s: 30.0, init_s: 1.25 }),
            memory: Default::default(),
            services: vec![crate::supervisor::ServiceStatus {
                name: "udevd".into(),
                state: ServiceState::Running,
                pid: Some(5),
                restarts: 3,
                last_exit: None,
                since_s: 1.0,
                reason: None,
                memory_bytes: Some(4 << 20),
                memory_file_bytes: Some(3 << 20),
                cpu_seconds: Some(2.5),
            }],
            leases: None,
        }
    }

    #[test]
    fn metrics_are_prometheus_text() {
        let s = full_status();
        let m = metrics(&s, 2_000_000_000.0);
        assert!(m.contains("bladevisor_info{node=\"blade1\",version=\"1.2\\\"3\"} 1\n"), "{m}");
        assert!(m.contains("bladevisor_service_up{service=\"udevd\"} 1\n"), "{m}");
        assert!(m.contains("bladevisor_drained 0\n"), "{m}");
        assert!(m.contains("bladevisor_tls_cert_not_after_timestamp_seconds 1900000000\n"), "{m}");
        // A guest in doubt is visible to alerting: its state set has every state, one at 1.
        assert!(m.contains("bladevisor_guest_state{guest=\"web\",state=\"in-doubt\"} 1\n"), "{m}");
        assert!(m.contains("bladevisor_guest_state{guest=\"web\",state=\"running\"} 0\n"), "{m}");
        assert_eq!(m.matches("bladevisor_guest_state{guest=\"web\"").count(), GuestState::ALL.len());
        assert!(m.contains("bladevisor_guest_running{guest=\"web\"} 0\n"), "{m}");
        assert!(m.contains("bladevisor_service_restarts_total{service=\"udevd\"} 3\n"), "{m}");
        assert!(m.contains("bladevisor_service_memory_bytes{service=\"udevd\"} 4194304\n"), "{m}");
        assert!(m.contains("bladevisor_service_memory_file_bytes{service=\"udevd\"} 3145728\n"), "{m}");
        assert!(m.contains("bladevisor_service_cpu_seconds_total{service=\"udevd\"} 2.5\n"), "{m}");
        assert!(m.contains("bladevisor_cpu_seconds_total{mode=\"busy\"} 12.5\n"), "{m}");
        assert!(m.contains("bladevisor_cpu_seconds_total{mode=\"init\"} 1.25\n"), "{m}");
        assert!(m.contains("bladevisor_lun_paths_up{alias=\"vm1\",wwid=\"3600a\"} 1\n"), "{m}");
        assert!(m.contains("bladevisor_lun_state{alias=\"vm1\",state=\"degraded\"} 1\n"), "{m}");
        assert!(m.contains("bladevisor_lun_state{alias=\"vm1\",state=\"healthy\"} 0\n"), "{m}");
        assert!(
            m.contains("# TYPE bladevisor_orphans_reaped_total counter\nbladevisor_orphans_reaped_total 2\n"),
            "{m}"
        );
    }

    /// A status with a bit of everything, rendered.
    fn sample() -> String {
        let mut s = full_status();
        s.uptime_s = 100.0;
        s.guests = vec![crate::proto::GuestStatus {
            name: "web".into(),
            state: GuestState::Running,
            pid: Some(9),
            restarts: 0,
            uptime_s: 40.0,
            disks: vec![],
            reason: None,
            runs_on: None,
            lease: None,
            usage: Some(crate::supervisor::cgroup::Usage {
                cpu_seconds: Some(2.5),
                memory_bytes: Some(1 << 20),
                memory_file_bytes: None,
                io_read_bytes: Some(4096),
                io_write_bytes: Some(0),
                disks: vec![crate::supervisor::cgroup::DiskIo {
                    device: "lab-vm1".into(),
                    read_bytes: 4096,
                    write_bytes: 0,
                    reads: 1,
                    writes: 0,
                }],
                nics: vec![crate::supervisor::cgroup::NicIo {
                    nic: "net0".into(),
                    receive_bytes: 60,
                    transmit_bytes: 0,
                }],
            }),
        }];
        s.migration_stats.completed = 1;
        s.migration_stats.downtime.observe(0.03);
        s.cert_not_after = Some(1_900_000_000);
        metrics(&s, 1_000_000.0)
    }

    #[test]
    fn start_times_usage_and_migrations_are_exposed() {
        let m = sample();
        assert!(m.contains("bladevisor_start_time_seconds 999900\n"), "{m}");
        assert!(m.contains("bladevisor_guest_start_time_seconds{guest=\"web\"} 999960\n"), "{m}");
        assert!(m.contains("bladevisor_guest_cpu_seconds_total{guest=\"web\"} 2.5\n"), "{m}");
        assert!(m.contains("bladevisor_guest_memory_bytes{guest=\"web\"} 1048576\n"), "{m}");
        assert!(m.contains("bladevisor_build_info{version=\"1.2\\\"3\"} 1\n"), "{m}");
        assert!(m.contains("bladevisor_migrations_total{result=\"completed\"} 1\n"), "{m}");
        assert!(m.contains("bladevisor_migration_downtime_seconds_bucket{le=\"0.05\"} 1\n"), "{m}");
        assert!(m.contains("bladevisor_migration_downtime_seconds_bucket{le=\"0.025\"} 0\n"), "{m}");
        assert!(m.contains("bladevisor_migration_downtime_seconds_bucket{le=\"+Inf\"} 1\n"), "{m}");
        assert!(m.contains("bladevisor_migration_downtime_seconds_count 1\n"), "{m}");
        assert!(!m.contains("uptime"), "start times, not uptimes: {m}");
        assert!(m.contains("bladevisor_guest_disk_read_bytes_total{guest=\"web\",disk=\"lab-vm1\"} 4096\n"), "{m}");
        assert!(m.contains("bladevisor_guest_network_receive_bytes_total{guest=\"web\",nic=\"net0\"} 60\n"), "{m}");
    }

    /// Prometheus's own linter (`promtool check metrics`, from Debian's prometheus package, which
    /// image/host-deps provides): a naming mistake fails the suite.
    #[test]
    fn promtool_accepts_the_metrics() {
        use std::io::Write;
        let mut child = match std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => panic!("promtool: {e} (image/host-deps installs it)"),
        };
        child.stdin.take().unwrap().write_all(sample().as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && said.trim().is_empty(), "promtool check metrics:\n{said}\n{}", sample());
    }
}
