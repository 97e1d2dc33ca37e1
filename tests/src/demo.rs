//! The demo guest as the two-blade tests watch it: its state and console on each blade, waiting
//! with a report on timeout, operators' calls (API and CLI).

use std::process::Command;
use std::time::{Duration, Instant};

use bladevisor::migration::MigrationStatus;
use bladevisor::proto::{GuestStatus, ServiceAction};

use crate::{ok, repo_root, Blade, Operator, Request, TwoBlades};

pub const TOKEN: &str = crate::LAB_TOKEN;
pub const READY: Duration = Duration::from_secs(400);

pub fn demo(b: &Blade) -> Option<GuestStatus> {
    ok(b.status()).guests.into_iter().find(|g| g.name == "demo")
}

pub fn state(b: &Blade) -> String {
    demo(b).map(|g| g.state.to_string()).unwrap_or_else(|| "absent".into())
}

pub fn console(b: &Blade) -> String {
    let r = ok(b.call(&Request::Operator(Operator::Console { name: "demo".into(), offset: 0 }), Some(TOKEN)));
    if r.code != 200 {
        return String::new();
    }
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
    v["text"].as_str().unwrap_or("").to_string()
}

pub fn counts(text: &str) -> Vec<u64> {
    text.lines().filter_map(|l| l.trim().strip_prefix("count ")?.parse().ok()).collect()
}

pub fn last_count(b: &Blade) -> u64 {
    counts(&console(b)).into_iter().max().unwrap_or(0)
}

pub fn wait(lab: &TwoBlades, what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !cond() {
        if Instant::now() >= end {
            let st: Vec<String> = lab
                .blades
                .iter()
                .map(|b| format!("{}: {:?}", b.spec.name, b.status().map(|s| (s.guests, s.migrations))))
                .collect();
            panic!("timed out after {limit:?} waiting for {what}\n{}\n{}", st.join("\n"), lab.report());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

pub fn post(b: &Blade, req: Request) -> (u16, String) {
    let r = ok(b.call(&req, Some(TOKEN)));
    (r.code, r.body)
}

pub fn guest(name: &str, action: ServiceAction) -> Request {
    Request::Operator(Operator::Guest { name: name.into(), action, force: false })
}

pub fn migrate(to: &str, bandwidth_mbps: Option<f64>) -> Request {
    Request::Operator(Operator::Migrate { guest: "demo".into(), to: to.into(), bandwidth_mbps })
}

pub fn migration(b: &Blade, id: u64) -> MigrationStatus {
    ok(b.status())
        .migrations
        .into_iter()
        .find(|m| m.id == id)
        .unwrap_or_else(|| panic!("no migration {id}\n{}", b.report()))
}

/// The operator's CLI pointed at a blade's TLS API, with the lab's CA and token.
pub fn cli_command(b: &Blade) -> Command {
    let exe = repo_root().join("target/release/bladevisor");
    assert!(exe.exists(), "{} is missing: image/build builds it", exe.display());
    let mut c = Command::new(&exe);
    c.args(["--api", &format!("https://127.0.0.1:{}", b.tls_port), "--server-name", &b.spec.node, "--token", TOKEN])
        .arg("--ca")
        .arg(&crate::lab_pki().ca_file);
    c
}

/// The operator's CLI against a blade's API.
pub fn cli(b: &Blade, args: &[&str]) -> (bool, String) {
    let out = cli_command(b).args(args).output().expect("the CLI runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}
