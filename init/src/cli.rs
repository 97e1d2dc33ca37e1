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
    out.push_str(&format!(
        "node     {}\nversion  {}\nstate    {}{}\nuptime   {:.0} s\n",
        s.node,
        s.version,
        ready,
        if s.degraded.is_empty() { "" } else { ", DEGRADED" },
        s.uptime_s
    ));
    if let Some(a) = s.shutting_down {
        out.push_str(&format!("shutdown {} in progress\n", a.as_str()));
    }
    for d in &s.degraded {
        out.push_str(&format!("  ! {d}\n"));
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
