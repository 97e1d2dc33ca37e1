//! The operator's command: `bladevisor status`, `bladevisor reboot`, ... Also the entry point
//! that decides whether this process is the init.

use std::time::Duration;

use clap::{Parser, Subcommand};

mod credentials;
mod offline;

use crate::api::client::send;
use crate::httpc::Endpoint;
use crate::migration::{Ending, MigrationStatus};
use crate::proto::request::{
    ConsoleText, Done, EvacuationStarted, MigrationStarted, Operator, Read, ReloadedAll, Request, Rescanned,
};
use crate::proto::{PowerAction, ServiceAction, Status};
use crate::storage::reload::ReloadReport;
use crate::supervisor::ServiceState;

#[derive(Parser, Debug)]
#[command(name = "bladevisor", version, about = "bladevisor blade hypervisor: init, supervisor and operator CLI")]
struct Cli {
    /// A blade's API instead of the local control socket: `host[:port]` or `https://...` (TLS,
    /// port 7443 by default, checked with --ca), or `http://host[:port]` (port 7480: the status
    /// and the metrics only).
    #[arg(long, global = true, env = "BLADEVISOR_API")]
    api: Option<String>,
    /// The cluster CA's certificate (`ca.pem` of `bladevisor credentials init`): the blade's
    /// certificate must be signed by it.
    #[arg(long, global = true, env = "BLADEVISOR_CA")]
    ca: Option<std::path::PathBuf>,
    /// The name the blade's certificate must hold, when --api reaches it by another (an
    /// address its certificate does not list, a tunnel): usually the blade's name.
    #[arg(long, global = true, env = "BLADEVISOR_SERVER_NAME")]
    server_name: Option<String>,
    /// Your operator token, for calls over --api that change anything.
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
    Service {
        name: String,
        #[arg(value_parser = action_of)]
        action: ServiceAction,
    },
    /// Re-read the alias table and apply it: rescan the SCSI hosts, reconfigure multipathd, and
    /// report each new alias (found, with how many paths) and each removed one (maps in use
    /// stay up; a bad table is refused and the last good one stays).
    ReloadAliases {
        /// On every blade of the cluster at once (this one asks the others), each one's result.
        #[arg(long)]
        all: bool,
    },
    /// Rescan every SCSI host (FC ports that are Online; never a LIP), nothing else.
    Rescan,
    /// Start, stop (ACPI power-off), restart or kill (as a crash would) a guest.
    Guest {
        name: String,
        #[arg(value_parser = action_of)]
        action: ServiceAction,
        /// Start even though another blade may run it (it runs there, or cannot be asked).
        /// Logged as an operator override. Two copies of a guest corrupt its disks.
        #[arg(long)]
        force: bool,
    },
    /// Live-migrate a guest from this blade to another, following its progress.
    Migrate {
        guest: String,
        /// The destination blade (a node of the cluster configuration).
        #[arg(long)]
        to: String,
        /// Bandwidth cap for this migration, in Mbit/s (default: [migration] max-bandwidth-mbps).
        #[arg(long)]
        max_bandwidth_mbps: Option<f64>,
        /// Start it and return at once.
        #[arg(long)]
        no_wait: bool,
    },
    /// Cancel an outgoing migration: the guest keeps running here.
    MigrateCancel { guest: String },
    /// Settle a guest a migration left in doubt (paused here, unconfirmed at the destination):
    /// asks the destination again and keeps exactly one copy, or changes nothing.
    Resolve { guest: String },
    /// Drain this blade and live-migrate every guest off it; it stays drained until undrained.
    Evacuate {
        /// Migrations at once (default: [migration] parallel).
        #[arg(long)]
        parallel: Option<usize>,
    },
    /// Let this blade take guests again after an evacuation.
    Undrain,
    /// The storage lease area (`[ha]`).
    Leases {
        #[command(subcommand)]
        cmd: LeasesCmd,
    },
    /// Operators' tokens: a new one, or the hash of one, as the configuration names them.
    Token {
        #[command(subcommand)]
        cmd: TokenCmd,
    },
    /// The cluster's CA, peer token and blades' credentials files (README: Credentials and TLS).
    Credentials {
        #[command(subcommand)]
        cmd: CredentialsCmd,
    },
    /// Check a cluster configuration (and an alias file, a blade's credentials file) offline,
    /// with exactly the code a blade runs at boot, before publishing it: file:line errors.
    Check {
        config: std::path::PathBuf,
        /// The alias file the blades will fetch (any of its three formats).
        #[arg(long)]
        aliases: Option<std::path::PathBuf>,
        /// A blade's credentials file, checked as that blade (--node) checks it.
        #[arg(long, requires = "node")]
        credentials: Option<std::path::PathBuf>,
        #[arg(long)]
        node: Option<String>,
    },
    /// Print libvirt domains (virsh dumpxml) as [guests.<name>] sections for blade --node, with
    /// what could not be carried over as comments.
    ImportLibvirt {
        #[arg(required = true)]
        domains: Vec<std::path::PathBuf>,
        /// The blade the guests are placed on.
        #[arg(long)]
        node: String,
        /// The alias table, to name disks given by WWID.
        #[arg(long)]
        aliases: Option<std::path::PathBuf>,
    },
    /// Runs a guest's QEMU holding its storage lease (how PID 1 starts leased guests).
    #[command(hide = true)]
    LeaseExec {
        #[arg(long)]
        uid: u32,
        #[arg(long)]
        gid: u32,
        #[arg(long)]
        resource: String,
        #[arg(long)]
        register_only: bool,
        #[arg(last = true, required = true)]
        argv: Vec<String>,
    },
    /// Show a guest's serial console (the last 64 KiB).
    Console {
        name: String,
        /// Keep following it, like tail -f.
        #[arg(long, short)]
        follow: bool,
    },
}

#[derive(Subcommand, Debug)]
enum TokenCmd {
    /// Make a random token for operator <name>: prints the token (give it to the operator,
    /// once) and the configuration section that admits it (only its SHA-256).
    New { name: String },
    /// Print the configuration line for a token read from standard input.
    Hash,
}

fn endpoint(cli: &Cli) -> Endpoint {
    credentials::endpoint(cli.api.as_deref(), cli.ca.as_deref(), cli.server_name.as_deref()).unwrap_or_else(|e| fail(e))
}

#[derive(Subcommand, Debug)]
enum CredentialsCmd {
    /// Make a cluster's CA and peer token in <dir> (keep it on the operator's machine: the CA
    /// key signs blades). Give ca.pem to operators' CLIs (--ca).
    Init {
        dir: std::path::PathBuf,
        /// The cluster's name, in the CA's name.
        #[arg(long, default_value = "bladevisor")]
        cluster: String,
    },
    /// Make blade <node>'s credentials file, <dir>/<node>.toml: serve it to that blade only, at
    /// its credentials URL (`{node}` in the URL is the blade's name). Again to rotate.
    Issue {
        dir: std::path::PathBuf,
        node: String,
        /// An address the certificate also names (for operators who reach the blade by it).
        #[arg(long = "ip")]
        ips: Vec<std::net::IpAddr>,
        /// Days it is valid.
        #[arg(long, default_value_t = crate::tls::pki::BLADE_DAYS)]
        days: i64,
    },
}

#[derive(Subcommand, Debug)]
enum LeasesCmd {
    /// Write the cluster's lockspace and a lease per guest on the lease LUN (once per cluster;
    /// every blade then joins by itself). Refused on an initialised area unless --force.
    Init {
        /// Rewrite an initialised area: every lease held on it is broken. Only with every blade
        /// of the cluster stopped.
        #[arg(long)]
        force: bool,
    },
}

fn action_of(s: &str) -> Result<ServiceAction, String> {
    ServiceAction::parse(s).ok_or_else(|| format!("{s:?} is not one of start, stop, restart, kill"))
}

fn fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("bladevisor: {msg}");
    std::process::exit(1);
}

/// Sends an operator's request; anything but success ends the command with the blade's message.
fn ask<T: serde::de::DeserializeOwned>(cli: &Cli, op: Operator) -> T {
    ask_for(cli, op, Duration::from_secs(30))
}

fn ask_for<T: serde::de::DeserializeOwned>(cli: &Cli, op: Operator, limit: Duration) -> T {
    let req = Request::Operator(op);
    send(&endpoint(cli), &req, cli.token.as_deref(), limit).unwrap_or_else(|e| fail(e))
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
fn post(cli: &Cli, op: Operator) {
    println!("{}", ask::<Done>(cli, op).ok);
}

fn get_status(cli: &Cli) -> Status {
    send(&endpoint(cli), &Request::Read(Read::Status), None, Duration::from_secs(15)).unwrap_or_else(|e| fail(e))
}

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
fn follow_migration(cli: &Cli, id: u64) -> crate::migration::Outcome {
    let mut last = String::new();
    loop {
        let s = get_status(cli);
        let Some(m) = s.migrations.iter().find(|m| m.id == id) else {
            fail(format!("migration {id} is not in the blade's status any more"));
        };
        let line = render_migration(m);
        if line != last {
            println!("{line}");
            last = line;
        }
        if let Some(o) = &m.outcome {
            return o.clone();
        }
        std::thread::sleep(Duration::from_millis(500));
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
    if let Some(c) = &s.credentials {
        out.push_str(&format!("peers    credentials {c}\n"));
    }
    if let Some(t) = s.cert_not_after.and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok()) {
        out.push_str(&format!("tls      certificate valid until {}\n", t.date()));
    }
    if let Some(m) = &s.management {
        out.push_str(&format!("mgmt     {m}\n"));
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
            let s = get_status(&cli);
            if *json {
                println!("{}", serde_json::to_string(&s).unwrap_or_default());
            } else {
                print!("{}", render_status(&s));
            }
        }
        Cmd::Reboot => post(&cli, Operator::Power(PowerAction::Reboot)),
        Cmd::Poweroff => post(&cli, Operator::Power(PowerAction::Poweroff)),
        Cmd::Halt => post(&cli, Operator::Power(PowerAction::Halt)),
        Cmd::Service { name, action } => post(&cli, Operator::Service { name: name.clone(), action: *action }),
        Cmd::ReloadAliases { all: false } => {
            let r: ReloadReport = ask_for(&cli, Operator::StorageReload { all: false }, Duration::from_secs(120));
            print!("{}", render_reload(&r));
        }
        Cmd::ReloadAliases { all: true } => {
            let r: ReloadedAll = ask_for(&cli, Operator::StorageReload { all: true }, Duration::from_secs(240));
            println!("{}", r.ok);
            for b in &r.blades {
                match (&b.report, &b.error) {
                    (Some(rep), _) => print!("{}: {}", b.node, render_reload(rep)),
                    (None, e) => println!("{}: FAILED: {}", b.node, e.as_deref().unwrap_or("no answer")),
                }
            }
            if r.blades.iter().any(|b| b.error.is_some()) {
                std::process::exit(1);
            }
        }
        Cmd::Rescan => {
            let r: Rescanned = ask_for(&cli, Operator::StorageRescan, Duration::from_secs(60));
            println!("{}", r.ok);
        }
        Cmd::Guest { name, action, force } => {
            post(&cli, Operator::Guest { name: name.clone(), action: *action, force: *force })
        }
        Cmd::Migrate { guest, to, max_bandwidth_mbps, no_wait } => {
            let op = Operator::Migrate { guest: guest.clone(), to: to.clone(), bandwidth_mbps: *max_bandwidth_mbps };
            let MigrationStarted { ok, id } = ask(&cli, op);
            println!("{ok}");
            if !no_wait {
                let o = follow_migration(&cli, id);
                if o.result != Ending::Completed {
                    std::process::exit(1);
                }
            }
        }
        Cmd::MigrateCancel { guest } => post(&cli, Operator::MigrateCancel(guest.clone())),
        Cmd::Resolve { guest } => post(&cli, Operator::Resolve(guest.clone())),
        Cmd::Evacuate { parallel } => {
            let _: EvacuationStarted = ask(&cli, Operator::Evacuate { parallel: *parallel });
            let mut shown = std::collections::BTreeSet::new();
            let mut lines = std::collections::BTreeMap::new();
            loop {
                let s = get_status(&cli);
                let Some(e) = &s.evacuation else { fail("the blade reports no evacuation") };
                for m in s.migrations.iter().filter(|m| e.guests.iter().any(|g| g.migration == Some(m.id))) {
                    let line = render_migration(m);
                    if lines.insert(m.id, line.clone()).as_ref() != Some(&line) {
                        println!("{line}");
                    }
                }
                for g in e.guests.iter().filter(|g| g.moved == Some(false) && g.migration.is_none()) {
                    if shown.insert(g.guest.clone()) {
                        println!("{}: {}", g.guest, g.result.as_deref().unwrap_or("not moved"));
                    }
                }
                if e.done {
                    let failed = e.guests.iter().filter(|g| g.moved != Some(true)).count();
                    println!(
                        "evacuation of {}: {} of {} guests moved; the blade is drained (bladevisor undrain)",
                        s.node,
                        e.guests.len() - failed,
                        e.guests.len()
                    );
                    std::process::exit(if failed == 0 { 0 } else { 1 });
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        }
        Cmd::Undrain => post(&cli, Operator::Undrain),
        Cmd::Leases { cmd: LeasesCmd::Init { force } } => post(&cli, Operator::LeasesInit { force: *force }),
        Cmd::Token { cmd: TokenCmd::New { name } } => {
            use crate::config::credentials::{new_token, sha256_hex};
            if !crate::config::services::is_safe_name(name) {
                fail(format!("operator {name:?}: names are letters, digits, '-' and '_'"));
            }
            let token = new_token().unwrap_or_else(|e| fail(e));
            println!("token for {name} (give it to them once; it is not kept anywhere): {token}");
            println!(
                "\n# in the cluster configuration:\n[operators.{name}]\ntoken-sha256 = \"{}\"",
                sha256_hex(&token)
            );
        }
        Cmd::Token { cmd: TokenCmd::Hash } => {
            let mut token = String::new();
            let _ = std::io::stdin().read_line(&mut token);
            let token = token.trim_end_matches(['\n', '\r']);
            if let Some(why) = crate::config::values::token_problem(token) {
                fail(why);
            }
            println!("token-sha256 = \"{}\"", crate::config::credentials::sha256_hex(token));
        }
        Cmd::Credentials { cmd: CredentialsCmd::Init { dir, cluster } } => {
            for f in credentials::init(dir, cluster).unwrap_or_else(|e| fail(e)) {
                println!("wrote {}", f.display());
            }
            println!("next: bladevisor credentials issue {} <blade> for each blade", dir.display());
        }
        Cmd::Credentials { cmd: CredentialsCmd::Issue { dir, node, ips, days } } => {
            let f = credentials::issue(dir, node, ips, *days).unwrap_or_else(|e| fail(e));
            println!("wrote {} (secret: serve it to {node} only, at its credentials URL)", f.display());
        }
        Cmd::Check { config, aliases, credentials, node } => {
            let c = offline::Check {
                config: config.clone(),
                aliases: aliases.clone(),
                credentials: credentials.clone().zip(node.clone()),
            };
            for line in offline::check(&c).unwrap_or_else(|e| fail(e)) {
                println!("{line}");
            }
        }
        Cmd::ImportLibvirt { domains, node, aliases } => {
            let (out, all) = offline::import_libvirt(domains, node, aliases.as_deref());
            print!("{out}");
            if !all {
                std::process::exit(1);
            }
        }
        Cmd::LeaseExec { uid, gid, resource, register_only, argv } => {
            let plan = crate::leases::exec::Plan {
                uid: *uid,
                gid: *gid,
                resource: resource.clone(),
                register_only: *register_only,
                argv: argv.clone(),
            };
            fail(crate::leases::exec::run(&plan));
        }
        Cmd::Console { name, follow } => {
            let mut offset = 0u64;
            loop {
                let c: ConsoleText = ask(&cli, Operator::Console { name: name.clone(), offset });
                print!("{}", c.text);
                let _ = std::io::Write::flush(&mut std::io::stdout());
                offset = c.next;
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
}
