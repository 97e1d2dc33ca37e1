//! `bladevisor upgrade <base-url>` (one blade) and `bladevisor rollout <base-url>` (the
//! cluster, one blade at a time): the operator's side of the in-place upgrade. Each blade does
//! its own upgrade (`pid1::upgrade`); these start it and follow the blade's status until it is
//! back on the new release, ready, healthy and undrained, and stop at the first that is not.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::api::client::{send, CallError};
use crate::httpc::Endpoint;
use crate::proto::cluster::ClusterGuests;
use crate::proto::request::{Done, MigrationStarted, Operator, Read, Request};
use crate::proto::Status;

/// A blade the rollout upgrades: its name and how its API is reached.
pub struct Target {
    pub node: String,
    pub ep: Endpoint,
}

/// How one blade's upgrade stands, read from its status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stand {
    /// Still on its release, upgrading (phase: detail).
    Upgrading(String),
    /// It does not answer: shutting down or booting the new release.
    Away,
    /// On the new release, not yet ready, healthy or undrained (what it waits for).
    Back(String),
    /// On the new release, ready, healthy and (when asked) undrained.
    Done,
    /// It already ran the release: nothing was done.
    Current,
    /// The upgrade failed: why, and where the blade stands.
    Failed(String),
}

/// What a follower knows of one blade's upgrade besides its latest status.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    /// The release it runs before.
    pub from: String,
    /// The release being installed, once the blade has read the manifest.
    pub to: Option<String>,
    /// It rebooted since the upgrade began: it stopped answering, or its uptime went back.
    pub went_away: bool,
    /// Its uptime in the last status read.
    pub uptime_s: f64,
}

impl Seen {
    /// Takes in one status read (None: no answer).
    pub fn read(&mut self, s: Option<&Status>) {
        match s {
            None => self.went_away = true,
            Some(s) => {
                // A connection held open across the reboot (a NAT, a slow SYN) can answer only
                // from the new boot: its uptime says so.
                self.went_away |= s.uptime_s < self.uptime_s;
                self.uptime_s = s.uptime_s;
                if let Some(to) = s.upgrade.as_ref().and_then(|u| u.to.clone()) {
                    self.to = Some(to);
                }
            }
        }
    }
}

/// Decides from a status (None: no answer) whether the blade is done, still going, or failed.
/// A blade answering again without an upgrade record has rebooted: on the new release it is
/// coming back; on its previous one it went through a cold boot, so the new one did not boot.
pub fn stand(s: Option<&Status>, seen: &Seen, undrain: bool) -> Stand {
    let Some(s) = s else { return Stand::Away };
    match &s.upgrade {
        Some(u) if u.phase == "failed" => return Stand::Failed(u.detail.clone()),
        Some(u) if u.phase == "current" => return Stand::Current,
        Some(u) => return Stand::Upgrading(format!("{}: {}", u.phase, u.detail)),
        None if !seen.went_away => return Stand::Upgrading("starting".into()),
        None => {}
    }
    if s.version == seen.from || seen.to.as_ref().is_some_and(|to| *to != s.version) {
        if !s.ready || s.drain_pending {
            // Said once it is ready and its drain settled (the peers have said).
            return Stand::Back(format!("back on release {}, not the new one; booting", s.version));
        }
        return Stand::Failed(format!(
            "it came back on release {}, not {}: the new release did not boot; {}",
            s.version,
            seen.to.as_deref().unwrap_or("the new one"),
            if s.drained.is_some() { "the blade is drained" } else { "the blade is not drained" }
        ));
    }
    let to = &s.version;
    if !s.ready || s.drain_pending {
        Stand::Back(format!(
            "release {to}, booting{}",
            s.booting.as_deref().map(|b| format!(": {b}")).unwrap_or_default()
        ))
    } else if !s.degraded.is_empty() {
        Stand::Back(format!("release {to}, degraded: {}", s.degraded.join("; ")))
    } else if undrain && s.drained.is_some() {
        Stand::Back(format!("release {to}, ready; still drained (it undrains once healthy)"))
    } else {
        Stand::Done
    }
}

/// One blade's upgrade, as the rollout reports it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BladeResult {
    pub node: String,
    pub from: String,
    pub to: String,
    /// From the upgrade call to done.
    pub seconds: f64,
    /// Guests moved off it, and the sum of their migrations' downtime.
    pub guests_moved: usize,
    pub pause_ms: u64,
    pub skipped: bool,
}

fn status(ep: &Endpoint) -> Result<Status, CallError> {
    send(ep, &Request::Read(Read::Status), None, Duration::from_secs(10))
}

/// Starts the upgrade of one blade and follows it to the end; progress lines go to `say`.
/// `expect`: the release the blades before it went to (the same folder serves one release).
pub fn upgrade_one(
    t: &Target,
    token: Option<&str>,
    base: &str,
    expect: Option<&str>,
    stop_guests: bool,
    limit: Duration,
    say: &mut dyn FnMut(String),
) -> Result<BladeResult, String> {
    let start = Instant::now();
    let before = status(&t.ep).map_err(|e| format!("{}: {e}", t.node))?;
    let result = |to: String, skipped: bool| BladeResult {
        node: t.node.clone(),
        from: before.version.clone(),
        to,
        skipped,
        seconds: start.elapsed().as_secs_f64(),
        ..Default::default()
    };
    if expect == Some(before.version.as_str()) {
        say(format!("{}: already on release {}", t.node, before.version));
        return Ok(result(before.version.clone(), true));
    }
    let op = Operator::Upgrade { base_url: base.into(), undrain: true, stop_guests };
    let done: Done = send(&t.ep, &Request::Operator(op), token, Duration::from_secs(30))
        .map_err(|e| format!("{}: the upgrade was refused: {e}", t.node))?;
    say(format!("{}: {}", t.node, done.ok));
    let mut seen = Seen { from: before.version.clone(), to: expect.map(String::from), ..Default::default() };
    seen.read(Some(&before));
    let (mut last, mut downtimes) = (String::new(), BTreeMap::new());
    loop {
        let s = status(&t.ep).ok();
        seen.read(s.as_ref());
        if let Some(s) = &s {
            // The guests' migrations off the blade: their downtime is the guests' pause.
            let ids: Vec<u64> = s.evacuation.iter().flat_map(|e| e.guests.iter().filter_map(|g| g.migration)).collect();
            for m in s.migrations.iter().filter(|m| ids.contains(&m.id)) {
                if let Some(o) = m.outcome.as_ref().filter(|o| o.result == crate::migration::Ending::Completed) {
                    downtimes.insert((m.guest.clone(), m.id), o.downtime_ms);
                }
            }
        }
        let now = stand(s.as_ref(), &seen, true);
        let to = seen.to.clone().or_else(|| s.as_ref().filter(|_| now == Stand::Done).map(|s| s.version.clone()));
        let to = to.unwrap_or_else(|| "the new release".into());
        let line = match &now {
            Stand::Upgrading(what) | Stand::Back(what) => format!("{}: {what}", t.node),
            Stand::Away => format!("{}: not answering (shutting down, or booting {to})", t.node),
            Stand::Done => format!("{}: release {to}, ready, healthy, undrained", t.node),
            Stand::Current => format!("{}: already on release {to}", t.node),
            Stand::Failed(why) => return Err(format!("{}: upgrade failed: {why}", t.node)),
        };
        if line != last {
            say(format!("[{:>5.0} s] {line}", start.elapsed().as_secs_f64()));
            last = line;
        }
        if matches!(now, Stand::Done | Stand::Current) {
            // The new boot tells what its evacuation moved (the old one went down too soon
            // after it to be read); what was seen is the fallback.
            let told = s.as_ref().and_then(|s| s.upgraded.clone()).unwrap_or_default();
            let moved = told.guests_moved.unwrap_or(downtimes.len());
            let pause = told.pause_ms.unwrap_or_else(|| downtimes.values().sum());
            return Ok(BladeResult { guests_moved: moved, pause_ms: pause, ..result(to, now == Stand::Current) });
        }
        if start.elapsed() > limit {
            return Err(format!("{}: not back on {to} after {} s: {last}", t.node, limit.as_secs()));
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Every guest back on its home blade (where the configuration places it), one at a time;
/// returns the migrations' total downtime.
pub fn return_guests(targets: &[Target], token: Option<&str>, say: &mut dyn FnMut(String)) -> Result<u64, String> {
    let first = targets.first().ok_or("no blades")?;
    let view: ClusterGuests =
        send(&first.ep, &Request::Operator(Operator::ClusterGuests), token, Duration::from_secs(30))
            .map_err(|e| format!("{}: {e}", first.node))?;
    let mut pause = 0;
    for g in &view.guests {
        let Some(on) = g.runs_on.as_ref().filter(|on| **on != g.home) else { continue };
        let Some(src) = targets.iter().find(|t| &t.node == on) else {
            say(format!("{}: runs on {on}, which this rollout does not reach; left there", g.name));
            continue;
        };
        let op = Operator::Migrate { guest: g.name.clone(), to: g.home.clone(), bandwidth_mbps: None };
        let started: MigrationStarted = send(&src.ep, &Request::Operator(op), token, Duration::from_secs(30))
            .map_err(|e| format!("{}: moving it back to {}: {e}", g.name, g.home))?;
        let end = Instant::now() + Duration::from_secs(600);
        let outcome = loop {
            let s = status(&src.ep).map_err(|e| format!("{on}: {e}"))?;
            if let Some(o) = s.migrations.iter().find(|m| m.id == started.id).and_then(|m| m.outcome.clone()) {
                break o;
            }
            if Instant::now() > end {
                return Err(format!("{}: its migration back to {} did not end in 600 s", g.name, g.home));
            }
            std::thread::sleep(Duration::from_millis(500));
        };
        if outcome.result != crate::migration::Ending::Completed {
            return Err(format!("{}: moving it back to {} failed: {}", g.name, g.home, outcome.summary()));
        }
        say(format!("{}: back on its home blade {} (paused {} ms)", g.name, g.home, outcome.downtime_ms));
        pause += outcome.downtime_ms;
    }
    Ok(pause)
}

/// Where every blade stands, for the end of a rollout that stopped.
pub fn where_things_stand(targets: &[Target]) -> String {
    let mut out = String::new();
    for t in targets {
        out += &match status(&t.ep) {
            Ok(s) => format!(
                "  {}: release {}, {}{}, guests running here: {}\n",
                t.node,
                s.version,
                if s.ready { "ready" } else { "not ready" },
                s.drained.as_deref().map(|d| format!(", drained ({d})")).unwrap_or_default(),
                s.guests
                    .iter()
                    .filter(|g| g.state == crate::proto::GuestState::Running)
                    .map(|g| g.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Err(e) => format!("  {}: not answering: {e}\n", t.node),
        };
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::release::upgrade::UpgradeStatus;

    fn blade(version: &str) -> Status {
        let mut s: Status = serde_json::from_str(
            r#"{"node":"blade1","version":"1.4","ready":true,"uptime_s":1,"degraded":[],"orphans_reaped":0,
                "luns":[],"hbas":[],"guests":[],"kvm":false,"cpus":1,"services":[],
                "memory":{"total_mib":1,"used_mib":1,"available_mib":1}}"#,
        )
        .unwrap();
        s.version = version.into();
        s
    }

    fn seen(went_away: bool) -> Seen {
        Seen { from: "1.4".into(), to: Some("1.5".into()), went_away, uptime_s: 0.0 }
    }

    #[test]
    fn a_reboot_is_seen_by_a_failed_read_or_by_the_uptime_going_back() {
        let mut seen = Seen::default();
        let mut s = blade("1.4");
        s.uptime_s = 300.0;
        seen.read(Some(&s));
        assert!(!seen.went_away);
        s.uptime_s = 301.0;
        seen.read(Some(&s));
        assert!(!seen.went_away, "time goes on");
        s.uptime_s = 4.0;
        seen.read(Some(&s));
        assert!(seen.went_away, "a new boot answered");
        let mut seen = Seen::default();
        seen.read(None);
        assert!(seen.went_away, "no answer");
    }

    #[test]
    fn a_blade_is_done_only_on_the_new_release_ready_healthy_and_undrained() {
        assert_eq!(stand(None, &seen(true), true), Stand::Away);
        let mut s = blade("1.5");
        assert_eq!(stand(Some(&s), &seen(true), true), Stand::Done);
        s.drained = Some("evacuated".into());
        assert!(matches!(stand(Some(&s), &seen(true), true), Stand::Back(w) if w.contains("still drained")));
        assert_eq!(stand(Some(&s), &seen(true), false), Stand::Done, "drained is fine when undrain was not asked");
        s.degraded = vec!["LUN lab-vm1 missing".into()];
        assert!(matches!(stand(Some(&s), &seen(true), true), Stand::Back(w) if w.contains("lab-vm1")));
        s.ready = false;
        assert!(matches!(stand(Some(&s), &seen(true), true), Stand::Back(w) if w.contains("booting")));
        let mut s = blade("1.5");
        s.drain_pending = true;
        assert!(matches!(stand(Some(&s), &seen(true), true), Stand::Back(_)), "not done before its drain is known");
        // Before the blade names the release, any other than the one it ran counts.
        let unknown = Seen { to: None, ..seen(true) };
        assert_eq!(stand(Some(&blade("1.5")), &unknown, true), Stand::Done);
    }

    #[test]
    fn a_blade_on_its_old_release_is_upgrading_failed_or_back_from_a_cold_boot() {
        let mut s = blade("1.4");
        assert_eq!(stand(Some(&s), &seen(false), true), Stand::Upgrading("starting".into()));
        s.ready = false;
        assert!(matches!(stand(Some(&s), &seen(true), true), Stand::Back(w) if w.contains("back on release 1.4")));
        s.ready = true;
        s.drain_pending = true;
        assert!(
            matches!(stand(Some(&s), &seen(true), true), Stand::Back(w) if w.contains("back on release 1.4")),
            "its drain is said only once the peers have said it"
        );
        s.drain_pending = false;
        let failed = stand(Some(&s), &seen(true), true);
        assert!(matches!(&failed, Stand::Failed(w) if w.contains("came back on release 1.4, not 1.5")), "{failed:?}");
        let other = stand(Some(&blade("1.6")), &seen(true), true);
        assert!(matches!(&other, Stand::Failed(w) if w.contains("came back on release 1.6")), "{other:?}");
        s.upgrade = Some(UpgradeStatus {
            from_url: "http://h/r".into(),
            to: Some("1.5".into()),
            phase: "evacuating".into(),
            detail: "release 1.5 is loaded; evacuating the blade".into(),
            undrain: true,
            stop_guests: false,
        });
        assert!(matches!(stand(Some(&s), &seen(false), true), Stand::Upgrading(w) if w.starts_with("evacuating: ")));
        s.upgrade.as_mut().unwrap().phase = "current".into();
        assert_eq!(stand(Some(&s), &seen(false), true), Stand::Current);
        s.upgrade.as_mut().unwrap().phase = "failed".into();
        s.upgrade.as_mut().unwrap().detail = "bladevisor.initrd: SHA-256 ...".into();
        assert!(matches!(stand(Some(&s), &seen(false), true), Stand::Failed(w) if w.contains("SHA-256")));
    }
}
