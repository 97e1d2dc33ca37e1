//! The operator's command: `bladevisor status`, `bladevisor reboot`, ... Also the entry point
//! that decides whether this process is the init.

use std::time::Duration;

use clap::{Parser, Subcommand};

mod console;
mod credentials;
mod offline;
mod render;
mod rollout;

pub use render::{render_list, render_migration, render_reload, render_status};

use crate::api::client::send;
use crate::httpc::Endpoint;
use crate::migration::Ending;
use crate::proto::request::{
    ConsoleText, Done, EvacuationStarted, MigrationStarted, Operator, Read, ReloadedAll, Request, Rescanned,
};
use crate::proto::{PowerAction, ServiceAction, Status};
use crate::storage::reload::ReloadReport;

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
    /// Print the answer as JSON (one object; `logs`: one per entry) instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run as the init (what /sbin/init does on a blade).
    Init,
    /// Show the blade's status.
    Status,
    /// Every guest of the cluster: where it runs, or why it does not (every blade asked at
    /// once; a blade that could not be asked is named).
    List,
    /// The blade's recent log (kept in memory), optionally only a service's or a guest's.
    Logs {
        /// Keep following it, like tail -f.
        #[arg(long, short)]
        follow: bool,
        #[arg(long)]
        service: Option<String>,
        #[arg(long)]
        guest: Option<String>,
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
    /// Upgrade this blade in place to the release served at <base-url> (an `out/` folder of
    /// image/build): it fetches and verifies the kernel and initrd against the manifest,
    /// evacuates, and boots them with kexec (no firmware); followed until it is back.
    Upgrade {
        base_url: String,
        /// Stop the guests that cannot move instead of refusing the upgrade.
        #[arg(long)]
        stop_guests: bool,
        /// Start it and return at once (the blade stays drained afterwards).
        #[arg(long)]
        no_wait: bool,
        /// How long to wait for the blade to come back healthy, in seconds.
        #[arg(long, default_value_t = 1200)]
        timeout_s: u64,
    },
    /// Upgrade every blade of the cluster to the release at <base-url>, one at a time: each is
    /// evacuated, boots the release with kexec, and must be back ready, healthy and undrained
    /// before the next; stops at the first that is not, saying where everything stands.
    Rollout {
        base_url: String,
        /// A blade and its API (`blade1=https://10.0.0.1:7443`), in rollout order; repeat for
        /// each. Default: every blade the --api blade's cluster names, reached by its name.
        #[arg(long = "blade", value_name = "NODE=API")]
        blades: Vec<String>,
        /// Move every guest back to its home blade at the end.
        #[arg(long)]
        return_guests: bool,
        /// Stop guests that cannot move instead of stopping the rollout.
        #[arg(long)]
        stop_guests: bool,
        /// Blades upgraded at once (fewer than the blades: the others take the guests; each
        /// evacuation checks the room it needs and fails, stopping the rollout, without it).
        #[arg(long, default_value_t = 1)]
        parallel: usize,
        /// How long each blade may take to come back healthy, in seconds.
        #[arg(long, default_value_t = 1200)]
        timeout_s: u64,
    },
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
    /// What changed between two releases: their manifests (`bladevisor.manifest` beside each
    /// image): version, kernel, packages added, removed and changed, artifacts' hashes.
    ManifestDiff { old: std::path::PathBuf, new: std::path::PathBuf },
    /// Print libvirt domains (virsh dumpxml) as [guests.<name>] sections (for blade --node),
    /// with what could not be carried over as comments.
    ImportLibvirt {
        #[arg(required = true)]
        domains: Vec<std::path::PathBuf>,
        /// The blade the guests are placed on (without it, a placeholder to replace).
        #[arg(long)]
        node: Option<String>,
        /// The alias table, to name disks given by WWID.
        #[arg(long)]
        aliases: Option<std::path::PathBuf>,
    },
    /// Print shell completions for this command (`bladevisor completions bash >
    /// /etc/bash_completion.d/bladevisor`).
    Completions { shell: clap_complete::Shell },
    /// Print this command's manual page (roff: `bladevisor man | man -l -`).
    Man,
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
    /// Show a guest's serial console (the last 64 KiB), follow it, or type into it (-i).
    Console {
        name: String,
        /// Keep following it, like tail -f.
        #[arg(long, short)]
        follow: bool,
        /// Type into it too (one operator at a time; Ctrl-] leaves).
        #[arg(long, short, conflicts_with = "follow")]
        interactive: bool,
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

fn post(cli: &Cli, op: Operator) {
    let done = ask::<Done>(cli, op);
    show(cli, &done, || format!("{}\n", done.ok));
}

/// A file's text, or why not, naming it.
fn read_text(path: &std::path::Path) -> Result<String, String> {
    crate::config::read(path).map_err(|e| e.to_string())
}

/// Prints `value` as JSON with --json, else the text `human` makes.
fn show<T: serde::Serialize>(cli: &Cli, value: &T, human: impl FnOnce() -> String) {
    if cli.json {
        println!("{}", serde_json::to_string(value).unwrap_or_default());
    } else {
        print!("{}", human());
    }
}

fn get_status(cli: &Cli) -> Status {
    send(&endpoint(cli), &Request::Read(Read::Status), None, Duration::from_secs(15)).unwrap_or_else(|e| fail(e))
}

fn follow_migration(cli: &Cli, id: u64) -> crate::migration::Outcome {
    let mut last = String::new();
    loop {
        let s = get_status(cli);
        let Some(m) = s.migrations.iter().find(|m| m.id == id) else {
            fail(format!("migration {id} is not in the blade's status any more"));
        };
        let line = render_migration(m);
        if line != last && !cli.json {
            println!("{line}");
        }
        last = line;
        if let Some(o) = &m.outcome {
            return o.clone();
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// What `rollout` was asked, besides where the release is.
struct RolloutArgs<'a> {
    blades: &'a [String],
    home: bool,
    stop_guests: bool,
    parallel: usize,
    limit: Duration,
}

/// `rollout`: every blade in turn, then the guests home; stops at the first failure.
fn rollout_cmd(cli: &Cli, base_url: &str, a: RolloutArgs) {
    let RolloutArgs { blades, home, stop_guests, parallel, limit } = a;
    let base = crate::release::upgrade::base_url(base_url).unwrap_or_else(|e| fail(e));
    let targets: Vec<rollout::Target> = if blades.is_empty() {
        let v: crate::proto::cluster::ClusterGuests = ask(cli, Operator::ClusterGuests);
        v.blades.iter().map(|b| (b.node.clone(), format!("https://{}", b.node))).collect::<Vec<_>>()
    } else {
        blades
            .iter()
            .map(|b| b.split_once('=').map(|(n, a)| (n.to_string(), a.to_string())))
            .collect::<Option<Vec<_>>>()
            .unwrap_or_else(|| fail("--blade takes NODE=API, e.g. blade1=https://10.0.0.1:7443"))
    }
    .into_iter()
    .map(|(node, api)| {
        let ep = credentials::endpoint(Some(&api), cli.ca.as_deref(), Some(&node)).unwrap_or_else(|e| fail(e));
        rollout::Target { node, ep }
    })
    .collect();
    if parallel == 0 || (parallel > 1 && parallel >= targets.len()) {
        fail(format!(
            "--parallel {parallel}: between 1 and {} (the blades not being upgraded take the guests)",
            targets.len().saturating_sub(1).max(1)
        ));
    }
    let started = std::time::Instant::now();
    let mut say = |l: String| eprintln!("{l}");
    let at_once = if parallel == 1 { "one at a time".to_string() } else { format!("{parallel} at a time") };
    say(format!("rollout of the release at {base} to {} blades, {at_once}", targets.len()));
    let mut results: Vec<rollout::BladeResult> = vec![];
    for group in targets.chunks(parallel) {
        let expect = results.last().map(|r| r.to.clone());
        // The blades of a group at once; each one's evacuation finds room on the others (or
        // fails, which stops the rollout).
        let outcomes: Vec<Result<rollout::BladeResult, String>> = std::thread::scope(|scope| {
            let runs: Vec<_> = group
                .iter()
                .map(|t| {
                    let (token, base, expect) = (cli.token.as_deref(), base.as_str(), expect.as_deref());
                    scope.spawn(move || {
                        let mut say = |l: String| eprintln!("{l}");
                        rollout::upgrade_one(t, token, base, expect, stop_guests, limit, &mut say)
                    })
                })
                .collect();
            runs.into_iter().map(|r| r.join().unwrap_or_else(|_| Err("the follower panicked".into()))).collect()
        });
        let mut failed = vec![];
        for o in outcomes {
            match o {
                Ok(r) => results.push(r),
                Err(e) => failed.push(e),
            }
        }
        if !failed.is_empty() {
            let done: Vec<&str> = results.iter().map(|r| r.node.as_str()).collect();
            fail(format!(
                "rollout stopped: {}\nupgraded: {}\nwhere every blade stands:\n{}",
                failed.join("\n"),
                if done.is_empty() { "none".into() } else { done.join(", ") },
                rollout::where_things_stand(&targets)
            ))
        }
    }
    let to = results.last().map(|r| r.to.clone()).unwrap_or_default();
    let mut returned_pause = 0;
    if home {
        returned_pause = rollout::return_guests(&targets, cli.token.as_deref(), &mut say)
            .unwrap_or_else(|e| fail(format!("every blade is on release {to}; {e}")));
    }
    let pause: u64 = results.iter().map(|r| r.pause_ms).sum::<u64>() + returned_pause;
    let summary = serde_json::json!({
        "release": to,
        "blades": results,
        "seconds": started.elapsed().as_secs_f64(),
        "guest_pause_ms": pause,
    });
    show(cli, &summary, || {
        let lines: String = results
            .iter()
            .map(|r| {
                if r.skipped {
                    format!("  {}: already on {}\n", r.node, r.to)
                } else {
                    format!(
                        "  {}: {} -> {} in {:.0} s, guests moved: {}, their pause {} ms\n",
                        r.node, r.from, r.to, r.seconds, r.guests_moved, r.pause_ms
                    )
                }
            })
            .collect();
        format!(
            "rollout of release {to} done in {:.0} s; guests paused {pause} ms in all (sum of migration downtimes)\n{lines}",
            started.elapsed().as_secs_f64()
        )
    });
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
        Cmd::Status => {
            let s = get_status(&cli);
            show(&cli, &s, || render_status(&s));
        }
        Cmd::List => {
            let v: crate::proto::cluster::ClusterGuests = ask(&cli, Operator::ClusterGuests);
            show(&cli, &v, || render_list(&v));
            if v.blades.iter().any(|b| b.error.is_some()) {
                std::process::exit(2);
            }
        }
        Cmd::Logs { follow, service, guest } => {
            let mut since = 0;
            loop {
                let op = Operator::Logs { since, service: service.clone(), guest: guest.clone() };
                let page: crate::proto::request::LogsPage = ask(&cli, op);
                for e in &page.entries {
                    show(&cli, e, || format!("{}\n", e.line()));
                }
                let full = page.next > since && !page.entries.is_empty() && page.entries.len() >= 1000;
                since = page.next;
                if !*follow && !full {
                    break;
                }
                if !full {
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        }
        Cmd::Reboot => post(&cli, Operator::Power(PowerAction::Reboot)),
        Cmd::Poweroff => post(&cli, Operator::Power(PowerAction::Poweroff)),
        Cmd::Halt => post(&cli, Operator::Power(PowerAction::Halt)),
        Cmd::Service { name, action } => post(&cli, Operator::Service { name: name.clone(), action: *action }),
        Cmd::ReloadAliases { all: false } => {
            let r: ReloadReport = ask_for(&cli, Operator::StorageReload { all: false }, Duration::from_secs(120));
            show(&cli, &r, || render_reload(&r));
        }
        Cmd::ReloadAliases { all: true } => {
            let r: ReloadedAll = ask_for(&cli, Operator::StorageReload { all: true }, Duration::from_secs(240));
            show(&cli, &r, || {
                let mut out = format!("{}\n", r.ok);
                for b in &r.blades {
                    match (&b.report, &b.error) {
                        (Some(rep), _) => out.push_str(&format!("{}: {}", b.node, render_reload(rep))),
                        (None, e) => {
                            out.push_str(&format!("{}: FAILED: {}\n", b.node, e.as_deref().unwrap_or("no answer")))
                        }
                    }
                }
                out
            });
            if r.blades.iter().any(|b| b.error.is_some()) {
                std::process::exit(1);
            }
        }
        Cmd::Rescan => {
            let r: Rescanned = ask_for(&cli, Operator::StorageRescan, Duration::from_secs(60));
            show(&cli, &r, || format!("{}\n", r.ok));
        }
        Cmd::Guest { name, action, force } => {
            post(&cli, Operator::Guest { name: name.clone(), action: *action, force: *force })
        }
        Cmd::Migrate { guest, to, max_bandwidth_mbps, no_wait } => {
            let op = Operator::Migrate { guest: guest.clone(), to: to.clone(), bandwidth_mbps: *max_bandwidth_mbps };
            let started: MigrationStarted = ask(&cli, op);
            if *no_wait || !cli.json {
                show(&cli, &started, || format!("{}\n", started.ok));
            }
            if !no_wait {
                let o = follow_migration(&cli, started.id);
                if cli.json {
                    println!("{}", serde_json::to_string(&o).unwrap_or_default());
                }
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
                    if lines.insert(m.id, line.clone()).as_ref() != Some(&line) && !cli.json {
                        println!("{line}");
                    }
                }
                for g in e.guests.iter().filter(|g| g.moved == Some(false) && g.migration.is_none()) {
                    if shown.insert(g.guest.clone()) && !cli.json {
                        println!("{}: {}", g.guest, g.result.as_deref().unwrap_or("not moved"));
                    }
                }
                if e.done {
                    let failed = e.guests.iter().filter(|g| g.moved != Some(true)).count();
                    show(&cli, e, || {
                        format!(
                            "evacuation of {}: {} of {} guests moved; the blade is drained (bladevisor undrain)\n",
                            s.node,
                            e.guests.len() - failed,
                            e.guests.len()
                        )
                    });
                    std::process::exit(if failed == 0 { 0 } else { 1 });
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        }
        Cmd::Undrain => post(&cli, Operator::Undrain),
        Cmd::Upgrade { base_url, stop_guests, no_wait, timeout_s } => {
            let base = crate::release::upgrade::base_url(base_url).unwrap_or_else(|e| fail(e));
            if *no_wait {
                return post(&cli, Operator::Upgrade { base_url: base, undrain: false, stop_guests: *stop_guests });
            }
            let node = get_status(&cli).node;
            let target = rollout::Target { node, ep: endpoint(&cli) };
            let limit = Duration::from_secs(*timeout_s);
            let mut say = |l: String| eprintln!("{l}");
            let r = rollout::upgrade_one(&target, cli.token.as_deref(), &base, None, *stop_guests, limit, &mut say)
                .unwrap_or_else(|e| fail(e));
            show(&cli, &r, || {
                format!(
                    "{}: release {} -> {} in {:.0} s; guests moved: {}, their pause {} ms in all\n",
                    r.node, r.from, r.to, r.seconds, r.guests_moved, r.pause_ms
                )
            });
        }
        Cmd::Rollout { base_url, blades, return_guests, stop_guests, parallel, timeout_s } => {
            let limit = Duration::from_secs(*timeout_s);
            let (home, stop_guests, parallel) = (*return_guests, *stop_guests, *parallel);
            rollout_cmd(&cli, base_url, RolloutArgs { blades, home, stop_guests, parallel, limit })
        }
        Cmd::Leases { cmd: LeasesCmd::Init { force } } => post(&cli, Operator::LeasesInit { force: *force }),
        Cmd::Token { cmd: TokenCmd::New { name } } => {
            use crate::config::credentials::{new_token, sha256_hex};
            if !crate::config::services::is_safe_name(name) {
                fail(format!("operator {name:?}: names are letters, digits, '-' and '_'"));
            }
            let token = new_token().unwrap_or_else(|e| fail(e));
            let hash = sha256_hex(&token);
            let v = serde_json::json!({ "name": name, "token": token, "token_sha256": hash });
            show(&cli, &v, || {
                format!(
                    "token for {name} (give it to them once; it is not kept anywhere): {token}\n\n\
                     # in the cluster configuration:\n[operators.{name}]\ntoken-sha256 = \"{hash}\"\n"
                )
            });
        }
        Cmd::Token { cmd: TokenCmd::Hash } => {
            let mut token = String::new();
            let _ = std::io::stdin().read_line(&mut token);
            let token = token.trim_end_matches(['\n', '\r']);
            if let Some(why) = crate::config::values::token_problem(token) {
                fail(why);
            }
            let hash = crate::config::credentials::sha256_hex(token);
            show(&cli, &serde_json::json!({ "token_sha256": hash }), || format!("token-sha256 = \"{hash}\"\n"));
        }
        Cmd::Credentials { cmd: CredentialsCmd::Init { dir, cluster } } => {
            let wrote = credentials::init(dir, cluster).unwrap_or_else(|e| fail(e));
            show(&cli, &serde_json::json!({ "wrote": wrote }), || {
                let files: String = wrote.iter().map(|f| format!("wrote {}\n", f.display())).collect();
                format!("{files}next: bladevisor credentials issue {} <blade> for each blade\n", dir.display())
            });
        }
        Cmd::Credentials { cmd: CredentialsCmd::Issue { dir, node, ips, days } } => {
            let f = credentials::issue(dir, node, ips, *days).unwrap_or_else(|e| fail(e));
            show(&cli, &serde_json::json!({ "wrote": f }), || {
                format!("wrote {} (secret: serve it to {node} only, at its credentials URL)\n", f.display())
            });
        }
        Cmd::Check { config, aliases, credentials, node } => {
            let c = offline::Check {
                config: config.clone(),
                aliases: aliases.clone(),
                credentials: credentials.clone().zip(node.clone()),
            };
            let lines = offline::check(&c).unwrap_or_else(|e| fail(e));
            show(&cli, &serde_json::json!({ "ok": lines }), || lines.iter().map(|l| format!("{l}\n")).collect());
        }
        Cmd::ManifestDiff { old, new } => {
            let (a, b) = (crate::release::read_manifest(old), crate::release::read_manifest(new));
            let d = crate::release::diff(&a.unwrap_or_else(|e| fail(e)), &b.unwrap_or_else(|e| fail(e)));
            show(&cli, &d, || crate::release::render(&d));
        }
        Cmd::ImportLibvirt { domains, node, aliases } => {
            let (out, all) = offline::import_libvirt(domains, node.as_deref(), aliases.as_deref(), cli.json);
            print!("{out}");
            if !all {
                std::process::exit(1);
            }
        }
        Cmd::Completions { shell } => {
            clap_complete::generate(
                *shell,
                &mut <Cli as clap::CommandFactory>::command(),
                "bladevisor",
                &mut std::io::stdout(),
            );
        }
        Cmd::Man => {
            let man = clap_mangen::Man::new(<Cli as clap::CommandFactory>::command());
            if let Err(e) = man.render(&mut std::io::stdout()) {
                fail(e);
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
        Cmd::Console { name, interactive: true, .. } => console::interactive(&cli, name),
        Cmd::Console { name, follow, .. } => {
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
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent_and_documents_itself() {
        Cli::command().debug_assert();
        let mut bash = Vec::new();
        clap_complete::generate(clap_complete::Shell::Bash, &mut Cli::command(), "bladevisor", &mut bash);
        let bash = String::from_utf8(bash).unwrap();
        for verb in ["list", "import-libvirt", "credentials", "migrate", "reload-aliases"] {
            assert!(bash.contains(verb), "completions lack {verb}");
        }
        let mut man = Vec::new();
        clap_mangen::Man::new(Cli::command()).render(&mut man).unwrap();
        assert!(String::from_utf8(man).unwrap().contains(".SH SUBCOMMANDS"));
        // A typo in an action is refused here, with the actions it could be.
        let e = Cli::try_parse_from(["bladevisor", "guest", "web", "strat"]).unwrap_err().to_string();
        assert!(e.contains("\"strat\" is not one of start, stop, restart, kill"), "{e}");
    }
}
