//! The supervisor's story, told against a fake runtime and a hand-driven clock.

use super::*;
use std::collections::BTreeSet;

#[derive(Default)]
struct Fake {
    next_pid: u32,
    spawned: Vec<(String, u32)>,
    signals: Vec<(String, Signal)>,
    ready: BTreeSet<String>,
    fail_spawn: BTreeSet<String>,
    released: Vec<String>,
    argvs: Vec<String>,
}

impl Runtime for Fake {
    fn spawn(&mut self, spec: &ServiceSpec) -> std::io::Result<u32> {
        if self.fail_spawn.contains(&spec.name) {
            return Err(std::io::Error::from(std::io::ErrorKind::NotFound));
        }
        self.next_pid += 1;
        let pid = 100 + self.next_pid;
        self.spawned.push((spec.name.clone(), pid));
        self.argvs.push(spec.argv.join(" "));
        Ok(pid)
    }
    fn signal(&mut self, name: &str, _pid: u32, sig: Signal) {
        self.signals.push((name.into(), sig));
    }
    fn is_ready(&mut self, check: &Readiness) -> bool {
        check.path.as_ref().is_some_and(|p| self.ready.contains(p))
    }
    fn release(&mut self, name: &str) {
        self.released.push(name.into());
    }
}

impl Fake {
    fn pid(&self, name: &str) -> u32 {
        self.spawned.iter().rev().find(|(n, _)| n == name).map(|(_, p)| *p).expect("spawned")
    }
    fn names(&self) -> Vec<&str> {
        self.spawned.iter().map(|(n, _)| n.as_str()).collect()
    }
}

fn specs(text: &str) -> Vec<ServiceSpec> {
    crate::config::services::parse_services(std::path::Path::new("t.toml"), text).unwrap()
}

const CHAIN: &str = r#"
[services.udevd]
argv = ["/bin/udevd"]
ready = { path = "udev-ready" }
[services.multipathd]
argv = ["/bin/multipathd"]
after = ["udevd"]
ready = { path = "mp-ready" }
[services.guests]
argv = ["/bin/guests"]
after = ["multipathd"]
"#;

#[test]
fn a_service_starts_only_once_its_dependency_is_ready() {
    let t0 = Instant::now();
    let mut rt = Fake::default();
    let mut s = Supervisor::new(specs(CHAIN), t0);
    s.tick(&mut rt, t0);
    assert_eq!(rt.names(), vec!["udevd"]);
    assert_eq!(s.state("udevd"), Some(ServiceState::Starting));
    s.tick(&mut rt, t0 + Duration::from_secs(1));
    assert_eq!(rt.names(), vec!["udevd"], "multipathd must wait for udevd's readiness");
    rt.ready.insert("udev-ready".into());
    s.tick(&mut rt, t0 + Duration::from_secs(2));
    assert_eq!(rt.names(), vec!["udevd", "multipathd"]);
    rt.ready.insert("mp-ready".into());
    s.tick(&mut rt, t0 + Duration::from_secs(3));
    assert_eq!(rt.names(), vec!["udevd", "multipathd", "guests"]);
    assert_eq!(s.state("guests"), Some(ServiceState::Running), "no readiness check: running at once");
}

#[test]
fn a_crashing_service_backs_off_longer_each_time_then_is_failed() {
    let t0 = Instant::now();
    let mut rt = Fake::default();
    let mut s = Supervisor::new(
        specs("[services.crash]\nargv=[\"/bin/false\"]\nbackoff = { initial-s = 1, max-s = 3, give-up-after = 3 }\n"),
        t0,
    );
    let mut now = t0;
    s.tick(&mut rt, now);
    let mut delays = vec![];
    for _ in 0..4 {
        let pid = rt.pid("crash");
        assert!(s.on_exit(pid, Exit::Code(1), &mut rt, now));
        if s.state("crash") == Some(ServiceState::Failed) {
            break;
        }
        assert_eq!(s.state("crash"), Some(ServiceState::Backoff));
        let due = s.tick(&mut rt, now).expect("a backoff has a deadline");
        delays.push((due - now).as_secs());
        // Nothing restarts before the delay is over.
        s.tick(&mut rt, due - Duration::from_millis(1));
        assert_eq!(s.state("crash"), Some(ServiceState::Backoff));
        now = due;
        s.tick(&mut rt, now);
        assert_eq!(s.state("crash"), Some(ServiceState::Running));
    }
    assert_eq!(delays, vec![1, 2, 3]);
    assert_eq!(s.state("crash"), Some(ServiceState::Failed));
    let st = &s.status(now)[0];
    assert_eq!(st.restarts, 3);
    assert!(st.reason.as_deref().unwrap().contains("gave up after 3 restarts"), "{st:?}");
    // A failed service stays down...
    s.tick(&mut rt, now + Duration::from_secs(100));
    assert_eq!(rt.spawned.len(), 4);
    // ...until an operator starts it.
    s.request_start("crash", now).unwrap();
    s.tick(&mut rt, now);
    assert_eq!(rt.spawned.len(), 5);
}

#[test]
fn a_service_after_a_one_shot_starts_once_the_one_shot_has_done_its_job() {
    // A guest whose NIC is on a bridge that a one-shot sets up: it waits for the setup to
    // finish (exit 0, final), not for it to "run"; a setup that fails holds it back.
    let t0 = Instant::now();
    let mut rt = Fake::default();
    let text = "[services.bridge-br0]\nargv = [\"/bin/bridge-up\"]\nready = { path = \"br0\" }\nrestart = \"on-failure\"\n[services.guest]\nargv = [\"/bin/qemu\"]\nafter = [\"bridge-br0\"]\n";
    let mut s = Supervisor::new(specs(text), t0);
    s.tick(&mut rt, t0);
    assert_eq!(rt.names(), vec!["bridge-br0"], "the guest waits while the bridge is being set up");
    assert!(s.on_exit(rt.pid("bridge-br0"), Exit::Code(0), &mut rt, t0));
    assert_eq!(s.state("bridge-br0"), Some(ServiceState::Exited));
    s.tick(&mut rt, t0 + Duration::from_millis(10));
    assert_eq!(rt.names(), vec!["bridge-br0", "guest"]);

    let mut rt = Fake::default();
    let text = text.replace("restart = \"on-failure\"", "restart = \"never\"");
    let mut s = Supervisor::new(specs(&text), t0);
    s.tick(&mut rt, t0);
    assert!(s.on_exit(rt.pid("bridge-br0"), Exit::Code(1), &mut rt, t0));
    s.tick(&mut rt, t0 + Duration::from_secs(5));
    assert_eq!(rt.names(), vec!["bridge-br0"], "a failed setup holds the guest back: {:?}", s.state("bridge-br0"));
}

#[test]
fn unknown_pids_are_orphans_not_services() {
    let t0 = Instant::now();
    let mut rt = Fake::default();
    let mut s = Supervisor::new(specs(CHAIN), t0);
    s.tick(&mut rt, t0);
    assert!(!s.on_exit(99999, Exit::Code(0), &mut rt, t0));
}

#[test]
fn a_program_that_cannot_start_is_retried_with_backoff() {
    let t0 = Instant::now();
    let mut rt = Fake { fail_spawn: ["x".to_string()].into(), ..Fake::default() };
    let mut s = Supervisor::new(specs("[services.x]\nargv=[\"/nonexistent\"]\n"), t0);
    s.tick(&mut rt, t0);
    assert_eq!(s.state("x"), Some(ServiceState::Backoff));
    assert!(s.status(t0)[0].reason.as_deref().unwrap().contains("cannot start /nonexistent"));
}

#[test]
fn shutdown_stops_dependents_first_and_kills_after_the_timeout() {
    let t0 = Instant::now();
    let mut rt = Fake::default();
    rt.ready.extend(["udev-ready".to_string(), "mp-ready".to_string()]);
    let mut s = Supervisor::new(specs(CHAIN), t0);
    for i in 0..4 {
        s.tick(&mut rt, t0 + Duration::from_millis(i));
    }
    assert_eq!(rt.names(), vec!["udevd", "multipathd", "guests"]);
    let t1 = t0 + Duration::from_secs(10);
    s.begin_shutdown(&mut rt, t1);
    assert_eq!(rt.signals, vec![("guests".to_string(), Signal::SIGTERM)]);
    // guests ignores SIGTERM: after its 10 s timeout it is killed; nothing else moves meanwhile.
    s.tick(&mut rt, t1 + Duration::from_secs(5));
    assert_eq!(rt.signals.len(), 1);
    s.tick(&mut rt, t1 + Duration::from_secs(10));
    assert_eq!(rt.signals[1], ("guests".to_string(), Signal::SIGKILL));
    s.on_exit(rt.pid("guests"), Exit::Signal(9), &mut rt, t1 + Duration::from_secs(10));
    s.tick(&mut rt, t1 + Duration::from_secs(10));
    assert_eq!(rt.signals[2], ("multipathd".to_string(), Signal::SIGTERM));
    s.on_exit(rt.pid("multipathd"), Exit::Code(0), &mut rt, t1 + Duration::from_secs(11));
    s.tick(&mut rt, t1 + Duration::from_secs(11));
    assert_eq!(rt.signals[3], ("udevd".to_string(), Signal::SIGTERM));
    assert!(!s.all_stopped());
    s.on_exit(rt.pid("udevd"), Exit::Code(0), &mut rt, t1 + Duration::from_secs(11));
    assert!(s.all_stopped());
    // Nothing restarts during shutdown.
    s.tick(&mut rt, t1 + Duration::from_secs(60));
    assert_eq!(rt.spawned.len(), 3);
    assert_eq!(rt.released, vec!["guests", "multipathd", "udevd"]);
}

#[test]
fn a_service_not_ready_in_time_is_killed_and_retried() {
    let t0 = Instant::now();
    let mut rt = Fake::default();
    let mut s = Supervisor::new(
        specs("[services.slow]\nargv=[\"/bin/slow\"]\nready = { path = \"never\", timeout-s = 2 }\n"),
        t0,
    );
    s.tick(&mut rt, t0);
    s.tick(&mut rt, t0 + Duration::from_secs(2));
    assert_eq!(rt.signals, vec![("slow".to_string(), Signal::SIGKILL)]);
    s.on_exit(rt.pid("slow"), Exit::Signal(9), &mut rt, t0 + Duration::from_secs(2));
    assert_eq!(s.state("slow"), Some(ServiceState::Backoff));
    assert!(s.status(t0)[0].reason.as_deref().unwrap().contains("readiness timeout"));
}

#[test]
fn operators_stop_and_restart_services() {
    let t0 = Instant::now();
    let mut rt = Fake::default();
    let mut s = Supervisor::new(specs("[services.a]\nargv=[\"/bin/a\"]\n"), t0);
    s.tick(&mut rt, t0);
    s.request_restart("a", &mut rt, t0).unwrap();
    assert_eq!(s.state("a"), Some(ServiceState::Stopping));
    s.on_exit(rt.pid("a"), Exit::Signal(15), &mut rt, t0);
    s.tick(&mut rt, t0);
    assert_eq!(rt.spawned.len(), 2, "restart starts it again");
    s.request_stop("a", &mut rt, t0).unwrap();
    s.on_exit(rt.pid("a"), Exit::Signal(15), &mut rt, t0);
    s.tick(&mut rt, t0 + Duration::from_secs(100));
    assert_eq!(s.state("a"), Some(ServiceState::Stopped));
    assert_eq!(rt.spawned.len(), 2, "a stopped service stays stopped");
    assert_eq!(s.request_stop("zz", &mut rt, t0), Err(RequestError::UnknownService("zz".into())));
}

#[test]
fn disabled_services_wait_for_an_operator() {
    let t0 = Instant::now();
    let mut rt = Fake::default();
    let mut s = Supervisor::new(specs("[services.a]\nargv=[\"/bin/a\"]\nenabled = false\n"), t0);
    s.tick(&mut rt, t0);
    assert!(rt.spawned.is_empty());
    s.request_start("a", t0).unwrap();
    s.tick(&mut rt, t0);
    assert_eq!(rt.names(), vec!["a"]);
}

#[test]
fn a_service_the_boot_starts_waits_for_it_then_for_its_dependencies() {
    let t0 = Instant::now();
    let mut rt = Fake::default();
    let mut s = Supervisor::new(
        specs(
            "[services.d]\nargv=[\"/bin/d\"]\nready = { path = \"/run/d\" }\n\
             [services.rest]\nargv=[\"/bin/rest\"]\nafter = [\"d\"]\nenabled = false\n",
        ),
        t0,
    );
    s.tick(&mut rt, t0);
    assert_eq!(rt.names(), vec!["d"], "not started at boot");
    s.start_for_boot("rest", t0).unwrap();
    s.tick(&mut rt, t0);
    assert_eq!(rt.names(), vec!["d"], "its dependency is not ready yet");
    rt.ready.insert("/run/d".into());
    s.tick(&mut rt, t0);
    s.tick(&mut rt, t0);
    assert_eq!(rt.names(), vec!["d", "rest"]);
    assert_eq!(s.start_for_boot("none", t0), Err(RequestError::UnknownService("none".into())));
}

#[test]
fn a_discarded_service_is_killed_without_its_policy_and_forgotten() {
    let t0 = Instant::now();
    let mut rt = Fake::default();
    let mut s = Supervisor::new(specs("[services.g]\nargv=[\"/bin/g\"]\nrestart = \"always\"\n"), t0);
    s.tick(&mut rt, t0);
    s.discard("g", &mut rt, t0);
    assert_eq!(rt.signals, vec![("g".to_string(), Signal::SIGKILL)]);
    assert!(s.on_exit(rt.pid("g"), Exit::Signal(9), &mut rt, t0));
    s.tick(&mut rt, t0 + Duration::from_secs(100));
    assert_eq!(s.state("g"), None, "gone, not restarted");
    assert_eq!(rt.spawned.len(), 1);
    // The name is free again: the guest may come back (by migration).
    let mut again = ServiceSpec::new("g", vec!["/bin/g".into()], crate::config::RestartPolicy::Never);
    again.enabled = true;
    s.add(again, t0).unwrap();
    s.replace_spec("g", ServiceSpec::new("g", vec!["/bin/g".into()], crate::config::RestartPolicy::Always));
    s.tick(&mut rt, t0);
    assert_eq!(rt.spawned.len(), 2);
    s.on_exit(rt.pid("g"), Exit::Code(1), &mut rt, t0);
    assert_eq!(s.state("g"), Some(ServiceState::Backoff), "the policy set later applies");
}

#[test]
fn a_replaced_spec_leaves_the_running_process_and_starts_the_next_one() {
    let t0 = Instant::now();
    let mut rt = Fake::default();
    let mut s = Supervisor::new(specs("[services.vm]\nargv=[\"/bin/qemu\", \"-incoming\", \"defer\"]\n"), t0);
    s.tick(&mut rt, t0);
    let pid = rt.pid("vm");
    // The arrived guest is ours now: its next start is a normal one.
    s.replace_spec("vm", specs("[services.other]\nargv=[\"/bin/qemu\"]\nrestart = \"always\"\n").remove(0));
    assert_eq!((s.state("vm"), rt.spawned.len()), (Some(ServiceState::Running), 1), "the process is left alone");
    assert!(s.on_exit(pid, Exit::Code(1), &mut rt, t0));
    s.tick(&mut rt, t0 + Duration::from_secs(60));
    assert_eq!(rt.argvs, ["/bin/qemu -incoming defer", "/bin/qemu"], "restarted as the new spec says, under its name");
    assert_eq!(rt.spawned.last().map(|(n, _)| n.as_str()), Some("vm"));
}
