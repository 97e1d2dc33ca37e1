//! PID-1 tests: the real binary as PID 1 of a new PID, mount and UTS namespace
//! (`unshare --pid --fork --mount --uts --mount-proc`), driven the way an operator would:
//! signals, the control socket, and what it logs. Needs root, as on a blade and in CI.

use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::time::Duration;

use bladevisor::proto::GuestState;
use bladevisor::supervisor::ServiceState;

#[path = "support/ns.rs"]
mod ns;
use ns::{zombies_of, Ns};

#[test]
fn a_double_forked_orphan_is_reaped() {
    // The service leaves a grandchild behind that outlives its parent and then exits:
    // it is re-parented to the init, which must reap it.
    let ns = Ns::start(
        "orphan",
        r#"
[services.forker]
argv = ["/bin/sh", "-c", "(sh -c 'sleep 0.3; touch @DIR@/run/orphan-done' &); exec sleep 1000"]
"#,
    );
    ns.wait_for("the orphan to finish", Duration::from_secs(20), |ns| ns.dir.join("run/orphan-done").exists());
    ns.wait_for("the orphan to be reaped", Duration::from_secs(20), |ns| ns.status().orphans_reaped >= 1);
    let init = ns.init_pid();
    ns.wait_for("no zombie under the init", Duration::from_secs(5), |_| zombies_of(init).is_empty());
    assert_eq!(ns.service("forker").state, ServiceState::Running, "the service itself is untouched");
}

#[test]
fn a_crashing_service_is_restarted_with_growing_delays_then_failed() {
    let ns = Ns::start(
        "crash",
        r#"
[services.crasher]
argv = ["/bin/sh", "-c", "echo crashing now; exit 3"]
backoff = { initial-s = 0.2, factor = 2, give-up-after = 3 }
"#,
    );
    ns.wait_for("the crasher to be marked failed", Duration::from_secs(30), |ns| {
        ns.service("crasher").state == ServiceState::Failed
    });
    let s = ns.service("crasher");
    assert_eq!(s.restarts, 3, "{s:?}");
    assert!(s.reason.as_deref().unwrap_or("").contains("gave up after 3 restarts"), "{s:?}");
    let log = ns.log();
    let delays: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("restarting after backoff") && l.contains("service=crasher"))
        .filter_map(|l| l.split("restart_in_ms=").nth(1)?.split_whitespace().next())
        .collect();
    assert_eq!(delays, vec!["200", "400", "800"], "console:\n{log}");
    assert_eq!(log.matches("crashing now service=crasher").count(), 4, "console:\n{log}");
    // The kernel's log (here a file standing for /dev/kmsg) has the same lines, one record each,
    // with their severity: a warning is daemon.warning (<28>).
    let kmsg = std::fs::read_to_string(ns.dir.join("kmsg")).unwrap_or_default();
    let records: Vec<&str> = kmsg.lines().filter(|l| l.contains("restarting after backoff")).collect();
    assert_eq!(records.len(), 3, "kmsg:\n{kmsg}");
    assert!(
        records.iter().all(|r| r.starts_with("<28>bladevisor[1]:  WARN ") && r.contains("service=crasher")),
        "{records:?}"
    );
    assert!(kmsg.lines().all(|l| l.starts_with('<')), "one record per line:\n{kmsg}");
    let status = ns.status();
    assert!(status.degraded.iter().any(|d| d.contains("crasher")), "a failed service degrades the blade: {status:?}");
    // Still manageable: an operator can start it again.
    assert_eq!(ns.post("/v1/services/crasher/start"), 200);
    ns.wait_for("the operator's start", Duration::from_secs(10), |ns| {
        ns.log().matches("crashing now service=crasher").count() >= 5
    });
}

#[test]
fn a_service_starts_only_after_its_dependency_is_ready() {
    let ns = Ns::start(
        "deps",
        r#"
[services.base]
argv = ["/bin/sh", "-c", "sleep 0.5; touch @DIR@/run/base.ready; exec sleep 1000"]
ready = { path = "@DIR@/run/base.ready" }
[services.top]
argv = ["/bin/sh", "-c", "if test -e @DIR@/run/base.ready; then echo base-was-ready; else echo base-NOT-ready; fi; exec sleep 1000"]
after = ["base"]
"#,
    );
    ns.wait_for("top to run", Duration::from_secs(20), |ns| ns.log().contains("base-"));
    let log = ns.log();
    assert!(log.contains("base-was-ready service=top"), "console:\n{log}");
    assert!(ns.status().ready);
}

#[test]
fn sigterm_stops_services_in_reverse_order_and_ends_the_namespace() {
    let mut ns = Ns::start(
        "sigterm",
        r#"
[services.base]
argv = ["/bin/sh", "-c", "trap 'echo base got TERM; exit 0' TERM; while true; do sleep 0.1; done"]
stop-timeout-s = 5
[services.stubborn]
argv = ["/bin/sh", "-c", "trap 'echo stubborn ignores TERM' TERM; while true; do sleep 0.1; done"]
after = ["base"]
stop-timeout-s = 1
"#,
    );
    ns.wait_for("ready", Duration::from_secs(20), |ns| ns.status().ready);
    ns.signal("TERM");
    let st = ns.wait_exit(Duration::from_secs(30));
    let log = ns.log();
    // In a PID namespace, reboot(2) from its init ends the namespace with SIGHUP (reboot).
    assert_eq!(st.signal(), Some(1), "expected the namespace to end by reboot(2); got {st:?}; console:\n{log}");
    let pos = |needle: &str| log.find(needle).unwrap_or_else(|| panic!("{needle:?} not logged; console:\n{log}"));
    assert!(pos("stubborn ignores TERM") < pos("did not stop within its timeout; SIGKILL service=stubborn"));
    assert!(
        pos("stopped service=stubborn") < pos("stopping (SIGTERM) service=base"),
        "dependents stop first; console:\n{log}"
    );
    assert!(pos("base got TERM") < pos("bladevisor going down"));
}

#[test]
fn the_poweroff_command_powers_off() {
    let mut ns = Ns::start("poweroff", "[services.idle]\nargv = [\"/bin/sleep\", \"1000\"]\n");
    ns.wait_for("ready", Duration::from_secs(20), |ns| ns.status().ready);
    // An upgrade: a URL that is not a release folder, then PID 1 of a namespace, which must
    // never load a kernel into the host's.
    let cli = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_bladevisor"))
            .args(args)
            .env("BLADEVISOR_RUN", ns.dir.join("run"))
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (success, err) = cli(&["upgrade", "--no-wait", "ftp://deploy/r"]);
    assert!(!success && err.contains("a release folder is an http:// or https:// URL"), "{err}");
    let (success, err) = cli(&["upgrade", "--no-wait", "http://127.0.0.1:9/releases/1.5"]);
    assert!(!success && err.contains("it cannot boot another kernel"), "{err}");
    assert_eq!(ns.status().upgrade, None, "nothing started");
    let out = Command::new(env!("CARGO_BIN_EXE_bladevisor"))
        .arg("poweroff")
        .env("BLADEVISOR_RUN", ns.dir.join("run"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let st = ns.wait_exit(Duration::from_secs(30));
    // Power off (and halt) end a PID namespace with SIGINT.
    assert_eq!(st.signal(), Some(2), "got {st:?}; console:\n{}", ns.log());
}

#[test]
fn a_malformed_config_leaves_a_degraded_init_that_still_answers() {
    let mut ns = Ns::start("badconfig", "[services.x]\nargv = [\"/bin/true\"]\nrestrat = \"always\"\n");
    let status = ns.status();
    let log = ns.log();
    assert!(log.contains("image.toml:3:1: unknown field `restrat`"), "console:\n{log}");
    assert!(status.degraded.iter().any(|d| d.contains("image.toml:3:1")), "{status:?}");
    assert!(status.ready, "degraded, but boot completes: {status:?}");
    // Bad requests get clear answers and change nothing.
    assert_eq!(ns.post("/v1/services/nosuch/start"), 404);
    assert_eq!(ns.post("/v1/power/explode"), 404);
    // And it can still be shut down.
    ns.signal("USR2");
    assert_eq!(ns.wait_exit(Duration::from_secs(30)).signal(), Some(2));
}

/// One owner per guest, as PID 1 applies it: a guest that may also run on a blade that cannot
/// be asked is not started (the reason names that blade); only an operator's override starts
/// it, and that is logged; an evacuation with nowhere to go says so for each guest and leaves
/// the blade drained until undrained.
#[test]
fn a_guest_whose_other_blade_cannot_be_asked_is_not_started_without_an_override() {
    // This namespace shares the host's NICs: the first MAC names this blade.
    let mac = bladevisor::pid1::blade_macs(std::path::Path::new("/sys/class/net"))
        .into_iter()
        .next()
        .expect("the host has a NIC with a MAC");
    let cluster = format!(
        r#"[cluster]
name = "t"
[nodes.blade1]
macs = ["{mac}"]
[nodes.blade2]
management = {{ address = "127.0.0.2/8" }}
[guests.demo]
node = "blade1"
migrate-to = ["blade2"]
memory-mib = 32
"#
    );
    // The namespace shares the host's /dev: where the host has a usable /dev/kvm, the init hands
    // it to the guests' group as on a blade. Put it back afterwards, whatever happens.
    let _kvm = RestoreOnDrop::new("/dev/kvm");
    let ns = Ns::start_with("owner", "", Some(&cluster));
    let demo = |ns: &Ns| ns.status().guests.into_iter().find(|g| g.name == "demo").expect("demo in status");
    // The boot's phases, in order (no network or storage of its own in a namespace).
    ns.wait_for("boot to be done", Duration::from_secs(30), |ns| ns.status().ready);
    let phases: Vec<String> = ns.status().boot_phases.into_iter().map(|p| p.name).collect();
    assert_eq!(phases, ["udev", "configuration", "identity", "credentials"]);
    ns.wait_for("the owner check's verdict", Duration::from_secs(30), |ns| demo(ns).reason.is_some());
    let g = demo(&ns);
    assert_eq!(g.pid, None, "{g:?}");
    let why = g.reason.unwrap();
    assert!(why.contains("cannot tell whether blade2 runs guest demo"), "{why}");
    assert!(!ns.status().services.iter().any(|s| s.name == "guest-demo"), "no process was started");
    assert_eq!(ns.post("/v1/guests/demo/start"), 409, "an operator's plain start is refused too");

    // The override starts it, and says so.
    assert_eq!(ns.post("/v1/guests/demo/start?force=1"), 200, "console:\n{}", ns.log());
    ns.wait_for("the forced guest's service", Duration::from_secs(20), |ns| {
        ns.status().services.iter().any(|s| s.name == "guest-demo")
    });
    assert!(ns.log().contains("OPERATOR OVERRIDE"), "console:\n{}", ns.log());

    // Evacuating: blade2 cannot take it, the result says why, the blade is drained.
    ns.wait_for("the guest to run", Duration::from_secs(20), |ns| demo(ns).state == GuestState::Running);
    // Its QEMU is not root and is confined by QEMU's own seccomp filter (-sandbox on).
    // (Its pid in status is the namespace's: find it among the init's children as the host sees
    // them. QEMU applies its filter early in its start: wait for that.)
    let init = ns.init_pid();
    let qemu_status = || {
        let children = std::fs::read_to_string(format!("/proc/{init}/task/{init}/children")).unwrap_or_default();
        children
            .split_whitespace()
            .map(|p| std::fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default())
            .find(|st| st.starts_with("Name:\tqemu-system"))
            .unwrap_or_default()
    };
    ns.wait_for("QEMU's seccomp filter", Duration::from_secs(20), |_| qemu_status().contains("\nSeccomp:\t2\n"));
    let proc_status = qemu_status();
    let field = |k: &str| {
        proc_status.lines().find_map(|l| l.strip_prefix(k)).map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
    };
    let qemu = bladevisor::qemu::guest_id("demo").to_string();
    assert_eq!(field("Uid:"), Some(format!("{qemu} {qemu} {qemu} {qemu}")), "{proc_status}");
    assert_eq!(field("Gid:"), Some(format!("{qemu} {qemu} {qemu} {qemu}")), "{proc_status}");
    assert_eq!(field("Groups:"), Some(String::new()), "no supplementary groups: {proc_status}");
    assert_eq!(field("NoNewPrivs:"), Some("1".into()), "{proc_status}");
    assert_eq!(ns.post("/v1/evacuate"), 200);
    ns.wait_for("the evacuation to end", Duration::from_secs(30), |ns| ns.status().evacuation.is_some_and(|e| e.done));
    let st = ns.status();
    let e = st.evacuation.clone().unwrap();
    assert_eq!(e.guests[0].moved, Some(false), "{e:?}");
    assert!(e.guests[0].result.as_deref().unwrap_or("").contains("no blade can take guest demo: blade2:"), "{e:?}");
    assert_eq!(st.drained.as_deref(), Some("evacuated"));
    assert_eq!(demo(&ns).state, GuestState::Running, "a guest that cannot leave keeps running");
    assert_eq!(ns.post("/v1/undrain"), 200);
    assert_eq!(ns.status().drained, None);
}

/// Puts a file's owner, group and mode back when dropped.
struct RestoreOnDrop(std::path::PathBuf, Option<(u32, u32, u32)>);

impl RestoreOnDrop {
    fn new(path: &str) -> Self {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).ok().map(|m| (m.uid(), m.gid(), m.mode() & 0o7777));
        RestoreOnDrop(path.into(), m)
    }
}

impl Drop for RestoreOnDrop {
    fn drop(&mut self) {
        use std::os::unix::fs::PermissionsExt;
        if let Some((uid, gid, mode)) = self.1 {
            let _ = std::os::unix::fs::chown(&self.0, Some(uid), Some(gid));
            let _ = std::fs::set_permissions(&self.0, std::fs::Permissions::from_mode(mode));
        }
    }
}

#[test]
fn a_service_started_without_memory_locking_cannot_lock_memory() {
    // multipathd's mlockall guards a root on the SAN; a blade's root is in RAM, so it runs
    // without CAP_IPC_LOCK and with RLIMIT_MEMLOCK 0 (its mlockall fails and it goes on).
    let ns = Ns::start(
        "nomlock",
        r#"
[services.locker]
argv = ["/bin/sh", "-c", "grep CapBnd /proc/self/status > @DIR@/run/caps; ulimit -l > @DIR@/run/memlock; exec sleep 1000"]
no-memory-lock = true

[services.other]
argv = ["/bin/sh", "-c", "grep CapBnd /proc/self/status > @DIR@/run/caps-other; exec sleep 1000"]
"#,
    );
    ns.wait_for("both services to write", Duration::from_secs(20), |ns| {
        ns.dir.join("run/memlock").exists() && ns.dir.join("run/caps-other").exists()
    });
    let mask = |f: &str| {
        let t = std::fs::read_to_string(ns.dir.join(f)).unwrap();
        u64::from_str_radix(t.split_whitespace().nth(1).unwrap(), 16).unwrap()
    };
    const CAP_IPC_LOCK: u64 = 1 << 14;
    assert_eq!(mask("run/caps") & CAP_IPC_LOCK, 0, "CAP_IPC_LOCK left in the bounding set");
    assert_ne!(mask("run/caps-other") & CAP_IPC_LOCK, 0, "other services keep it");
    assert_eq!(mask("run/caps") | CAP_IPC_LOCK, mask("run/caps-other"), "only CAP_IPC_LOCK is dropped");
    assert_eq!(std::fs::read_to_string(ns.dir.join("run/memlock")).unwrap().trim(), "0");
}
