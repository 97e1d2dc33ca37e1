//! The operator's command: `bladevisor status`, `bladevisor reboot`, ... Also the entry point
//! that decides whether this process is the init.

use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::api::client::{call, Endpoint};
use crate::api::Status;
use crate::supervisor::ServiceState;

#[derive(Parser, Debug)]
#[command(name = "bladevisor", version, about = "bladevisor blade hypervisor: init, supervisor and operator CLI")]
struct Cli {
    /// A blade's API (host:port) instead of the local control socket.
    #[arg(long, global = true, env = "BLADEVISOR_API")]
    api: Option<String>,
    /// The cluster's token, for mutating calls over --api.
    #[arg(long, global = true, env = "BLADEVISOR_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run as the init (what /sbin/init does on a blade).
    Init,
    /// Show the blade's status.
    Status {
        /// Print the raw JSON of GET /v1/status.
        #[arg(long)]
        json: bool,
    },
    /// Stop all services in order and reboot.
    Reboot,
    /// Stop all services in order and power off.
    Poweroff,
    /// Stop all services in order and halt.
    Halt,
    /// Start, stop or restart one service.
    Service { name: String, action: String },
    /// Re-read the alias table and apply it (maps in use stay up; a bad table is refused).
    ReloadAliases,
    /// Start, stop (ACPI power-off), restart or kill (as a crash would) a guest.
    Guest { name: String, action: String },
    /// Show a guest's serial console (the last 64 KiB).
    Console {
        name: String,
        /// Keep following it, like tail -f.
        #[arg(long, short)]
        follow: bool,
    },
}

fn endpoint(cli: &Cli) -> Endpoint {
    match &cli.api {
        Some(a) => Endpoint::Tcp(a.trim_start_matches("http://").trim_end_matches('/').to_string()),
        None => Endpoint::Unix(crate::run_dir().join("control.sock")),
    }
}

fn fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("bladevisor: {msg}");
    std::process::exit(1);
}

fn post(cli: &Cli, path: &str) {
    let r =
        call(&endpoint(cli), "POST", path, cli.token.as_deref(), Duration::from_secs(15)).unwrap_or_else(|e| fail(e));
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap_or(serde_json::Value::String(r.body.clone()));
    if r.code == 200 {
        println!("{}", v.get("ok").and_then(|m| m.as_str()).unwrap_or(&r.body));
    } else {
        fail(format!("{} (HTTP {})", v.get("error").and_then(|m| m.as_str()).unwrap_or(&r.body), r.code));
    }
}

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
    if let Some(m) = &s.management {
        out.push_str(&format!("mgmt     {m}\n"));
    }
    if let Some(a) = s.shutting_down {
        out.push_str(&format!("shutdown {} in progress\n", a.as_str()));
    }
    for d in &s.degraded {
        out.push_str(&format!("  ! {d}\n"));
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
            let up = if g.state == "running" { format!("{:.0} s", g.uptime_s) } else { "-".into() };
            let note = g.reason.clone().unwrap_or_else(|| g.disks.join(" "));
            out.push_str(&format!("{:<16} {:<18} {:>7} {:>8} {:>9}  {note}\n", g.name, g.state, pid, g.restarts, up));
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

pub fn main() {
    // As PID 1, or when started as /sbin/init, there is no command line to parse: be the init.
    let argv0 = std::env::args().next().unwrap_or_default();
    if std::process::id() == 1 || argv0.ends_with("/init") || argv0 == "init" {
        crate::pid1::run();
    }
    let cli = Cli::parse();
    match &cli.cmd {
        Cmd::Init => crate::pid1::run(),
        Cmd::Status { json } => {
            let r =
                call(&endpoint(&cli), "GET", "/v1/status", None, Duration::from_secs(15)).unwrap_or_else(|e| fail(e));
            if r.code != 200 {
                fail(format!("HTTP {}: {}", r.code, r.body));
            }
            if *json {
                println!("{}", r.body);
            } else {
                let s: Status =
                    serde_json::from_str(&r.body).unwrap_or_else(|e| fail(format!("unexpected status JSON: {e}")));
                print!("{}", render_status(&s));
            }
        }
        Cmd::Reboot => post(&cli, "/v1/power/reboot"),
        Cmd::Poweroff => post(&cli, "/v1/power/poweroff"),
        Cmd::Halt => post(&cli, "/v1/power/halt"),
        Cmd::Service { name, action } => post(&cli, &format!("/v1/services/{name}/{action}")),
        Cmd::ReloadAliases => post(&cli, "/v1/storage/reload"),
        Cmd::Guest { name, action } => post(&cli, &format!("/v1/guests/{name}/{action}")),
        Cmd::Console { name, follow } => {
            let mut offset = 0u64;
            loop {
                let path = format!("/v1/guests/{name}/console?offset={offset}");
                let r = call(&endpoint(&cli), "GET", &path, cli.token.as_deref(), Duration::from_secs(15))
                    .unwrap_or_else(|e| fail(e));
                let v: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
                if r.code != 200 {
                    fail(format!("{} (HTTP {})", v["error"].as_str().unwrap_or(&r.body), r.code));
                }
                print!("{}", v["text"].as_str().unwrap_or(""));
                let _ = std::io::Write::flush(&mut std::io::stdout());
                offset = v["next"].as_u64().unwrap_or(offset);
                if !follow {
                    break;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }
}
