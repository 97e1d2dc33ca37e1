//! Guests in the QEMU lab: the demo guest (a boot sector printing a counter) autostarts from
//! its LUN once the map is up; it shows in status and metrics with its console; a killed QEMU
//! comes back with the restart counted; a stop powers it off and it stays off; mutating calls
//! without the token are refused; hostile clients on the management network neither take the
//! blade down nor reach the guest through QMP. Needs the image built (`image/build`).

use std::time::{Duration, Instant};

use bladevisor::proto::{GuestState, ServiceAction};
use bladevisor_lab::{ok, start_lab_blade1_with, Blade, Image, Operator, Peer, Read, Request, LAB_TOKEN};

const TOKEN: &str = LAB_TOKEN;

fn guest(blade: &Blade) -> bladevisor::proto::GuestStatus {
    let st = ok(blade.status());
    st.guests.into_iter().find(|g| g.name == "demo").unwrap_or_else(|| panic!("demo not in status\n{}", blade.report()))
}

fn console(blade: &Blade) -> String {
    let r = ok(blade.call(&Request::Operator(Operator::Console { name: "demo".into(), offset: 0 }), Some(TOKEN)));
    assert_eq!(r.code, 200, "{}", r.body);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    v["text"].as_str().unwrap_or("").to_string()
}

/// The highest count the guest has printed so far.
fn last_count(text: &str) -> u64 {
    text.lines().filter_map(|l| l.trim().strip_prefix("count ")?.parse().ok()).max().unwrap_or(0)
}

fn wait(blade: &Blade, what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}; guest: {:?}\n{}", guest(blade), blade.report());
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn the_demo_guest_runs_from_its_lun_restarts_after_a_crash_and_stops_on_request() {
    let img = Image::built();
    // A remote log collector (RFC 5424 syslog over UDP), as the configuration names it.
    let collector = std::net::UdpSocket::bind("127.0.0.1:0").expect("a UDP port");
    let port = collector.local_addr().unwrap().port();
    let logging = format!("\n[logging]\nremote = \"udp://10.0.2.2:{port}\"\n");
    let (mut blade, _config_server) = start_lab_blade1_with("guest-demo", &img, 32, &logging);
    ok(blade.wait_console("bladevisor ready", Duration::from_secs(300)));

    // It autostarts once lab-vm1's map is up, and its console shows the counter going up.
    wait(&blade, "the guest to run", Duration::from_secs(120), || guest(&blade).state == GuestState::Running);
    let status = ok(blade.status());
    assert!(!status.kvm, "no KVM inside a TCG lab blade: guests run under TCG");
    // A clean boot: the one-shots the image runs (the coldplug's two stages, modules, the
    // guests' bridge, ...) end well, and no service has restarted (a program missing from the
    // image would show here as a script's exit 127 and a restart).
    use bladevisor::supervisor::ServiceState::{Exited, Failed};
    let done = |n: &str| ok(blade.status()).services.iter().any(|s| s.name == n && matches!(s.state, Exited | Failed));
    wait(&blade, "the coldplug's second stage and the bridge to finish", Duration::from_secs(180), || {
        done("udev-coldplug") && done("bridge-br0")
    });
    let services = ok(blade.status()).services;
    let unclean: Vec<String> = services
        .iter()
        .filter(|s| s.restarts > 0 || s.state == Failed)
        .map(|s| format!("{} {:?} restarts {} last exit {:?}", s.name, s.state, s.restarts, s.last_exit))
        .collect();
    assert!(unclean.is_empty(), "services that failed or restarted during the boot: {unclean:?}\n{}", blade.report());
    wait(&blade, "the counter on the guest's console", Duration::from_secs(400), || last_count(&console(&blade)) >= 3);
    let before = last_count(&console(&blade));
    wait(&blade, "the counter to keep going", Duration::from_secs(60), || last_count(&console(&blade)) > before);
    let metrics = ok(blade.call(&Request::Read(Read::Metrics), None)).body;
    assert!(metrics.contains("bladevisor_guest_running{guest=\"demo\"} 1"), "{metrics}");
    assert!(metrics.contains("bladevisor_guest_state{guest=\"demo\",state=\"running\"} 1"), "{metrics}");
    assert!(metrics.contains("bladevisor_guest_state{guest=\"demo\",state=\"in-doubt\"} 0"), "{metrics}");
    // What the guest costs, from its cgroup: its CPU seconds grow while it runs.
    let cpu = |m: &str| -> f64 {
        let line = m.lines().find(|l| l.starts_with("bladevisor_guest_cpu_seconds_total{guest=\"demo\"}"));
        line.and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no CPU seconds:\n{m}"))
    };
    let first = cpu(&metrics);
    wait(&blade, "the guest's CPU seconds to grow", Duration::from_secs(60), || {
        cpu(&ok(blade.call(&Request::Read(Read::Metrics), None)).body) > first
    });
    assert!(metrics.contains("bladevisor_guest_memory_bytes{guest=\"demo\"}"), "{metrics}");
    // Per disk, by its alias (it booted from lab-vm1: it read it), and per NIC.
    let line = metrics
        .lines()
        .find(|l| l.starts_with("bladevisor_guest_disk_read_bytes_total{guest=\"demo\",disk=\"lab-vm1\"}"))
        .unwrap_or_else(|| panic!("no lab-vm1 reads:\n{metrics}"));
    assert!(line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()).is_some_and(|v| v >= 512.0), "{line}");
    assert!(metrics.contains("bladevisor_guest_network_receive_bytes_total{guest=\"demo\",nic=\"net0\"}"), "{metrics}");

    // The boot's lines and the guest's start reached the collector, as syslog.
    collector.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut got = vec![];
    let mut buf = [0u8; 65536];
    while !got.iter().any(|l: &String| l.contains("bladevisor ready")) {
        let n = collector.recv(&mut buf).unwrap_or_else(|e| panic!("no syslog line ({e}) after {got:?}"));
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(got.iter().all(|l| l.starts_with('<') && l.contains(" blade1 bladevisor ")), "{got:?}");
    // And the blade keeps them: `bladevisor logs --guest demo` shows the guest's start.
    let (success, out) = bladevisor_lab::demo::cli(&blade, &["logs", "--guest", "demo"]);
    assert!(success && out.contains("service=guest-demo"), "{out}");
    assert!(out.lines().any(|l| l.contains("starting") || l.contains("started")), "{out}");

    interactive_console(&blade);

    // Without the token nothing changes.
    assert_eq!(
        ok(blade.call(
            &Request::Operator(Operator::Guest { name: "demo".into(), action: ServiceAction::Stop, force: false }),
            None
        ))
        .code,
        401
    );
    assert_eq!(
        ok(blade.call(
            &Request::Operator(Operator::Guest { name: "demo".into(), action: ServiceAction::Kill, force: false }),
            Some("wrong")
        ))
        .code,
        401
    );
    assert_eq!(
        ok(blade.call(&Request::Operator(Operator::Console { name: "demo".into(), offset: 0 }), None)).code,
        401
    );
    wait(&blade, "the refusal to be logged", Duration::from_secs(10), || {
        blade.console().contains("refused: this call needs an operator's token")
    });

    hostile_clients_do_not_reach_the_guest(&blade);
    assert_eq!(guest(&blade).state, GuestState::Running);
    // An unknown guest is a clear 404.
    let r = ok(blade.call(
        &Request::Operator(Operator::Guest { name: "nosuch".into(), action: ServiceAction::Start, force: false }),
        Some(TOKEN),
    ));
    assert_eq!(r.code, 404, "{}", r.body);
    assert!(r.body.contains("no guest named \\\"nosuch\\\" on this blade (guests here: demo)"), "{}", r.body);

    // Its QEMU dies: it is restarted, and the restart is counted.
    let pid = guest(&blade).pid.expect("running guest has a pid");
    assert_eq!(
        ok(blade.call(
            &Request::Operator(Operator::Guest { name: "demo".into(), action: ServiceAction::Kill, force: false }),
            Some(TOKEN)
        ))
        .code,
        200
    );
    wait(&blade, "the guest to come back", Duration::from_secs(120), || {
        let g = guest(&blade);
        g.state == GuestState::Running && g.restarts == 1 && g.pid.is_some_and(|p| p != pid)
    });
    wait(&blade, "the restarted guest to print again", Duration::from_secs(400), || {
        console(&blade).matches("bladevisor test guest").count() >= 2
    });

    // Stop: ACPI power-off (the boot sector ignores it), then quit after its 10 s timeout.
    assert_eq!(
        ok(blade.call(
            &Request::Operator(Operator::Guest { name: "demo".into(), action: ServiceAction::Stop, force: false }),
            Some(TOKEN)
        ))
        .code,
        200
    );
    wait(&blade, "the guest to stop", Duration::from_secs(60), || guest(&blade).state == GuestState::Stopped);
    std::thread::sleep(Duration::from_secs(5));
    let g = guest(&blade);
    assert_eq!((g.state, g.restarts, g.pid), (GuestState::Stopped, 1, None), "a stopped guest stays off");
    assert!(blade.console().contains("stopping (ACPI power-off) service=guest-demo"), "{}", blade.report());
}

/// An attacker on the management network, while the guest runs: hundreds of idle connections,
/// an enormous and a lying `Content-Length`, a multi-megabyte header, QMP commands that would
/// be root on the blade, peer calls from blades that do not exist. Meanwhile status answers,
/// an authorised call works, and the guest keeps its process.
fn hostile_clients_do_not_reach_the_guest(blade: &Blade) {
    use bladevisor_lab::hostile::{code, exchange, idle_connections, status_once};
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", blade.api_port).parse().unwrap();
    let pid = guest(blade).pid.expect("the guest runs");
    let idle = idle_connections(addr, 300);
    assert!(idle.len() >= 250, "only {} connections opened", idle.len());

    let (a, _) = exchange(
        addr,
        b"GET /metrics HTTP/1.1\r\nHost: b\r\nContent-Length: 4611686018427387904\r\n\r\n",
        Duration::from_secs(30),
    );
    assert_eq!(code(&a), 413, "an enormous Content-Length is refused, not allocated: {a:?}\n{}", blade.report());
    // A body promised and never sent: the request waits for it in vain, alone.
    let liar = std::thread::spawn(move || {
        exchange(
            addr,
            b"POST /v1/guests/demo/qmp HTTP/1.1\r\nHost: b\r\nContent-Length: 2000\r\n\r\n{",
            Duration::from_secs(60),
        )
    });
    let huge = format!("GET /v1/status HTTP/1.1\r\nHost: b\r\nX-Junk: {}\r\n\r\n", "j".repeat(4 << 20));
    let (a, _) = exchange(addr, huge.as_bytes(), Duration::from_secs(60));
    assert!(a.is_empty() || code(&a) == 431, "a 4 MiB header is refused: {:?}", a.lines().next());

    let (c, took) = status_once(addr);
    assert_eq!(c, 200, "status answers with {} hostile connections open\n{}", idle.len(), blade.report());
    println!("GET /v1/status with {} idle hostile connections open: {took:?}", idle.len());
    let qmp = |cmd: &str| {
        let r = ok(bladevisor::httpc::call_with_body(
            &blade.tls_api(),
            "POST",
            "/v1/guests/demo/qmp",
            Some(TOKEN),
            cmd,
            Duration::from_secs(30),
        ));
        (r.code, r.body)
    };
    let (c, body) = qmp(r#"{"execute": "query-status"}"#);
    assert_eq!(c, 200, "an authorised read-only query works: {body}");
    // The same call with the token in clear, on the plain port: refused (and logged) without
    // a look at the token.
    let plain = format!(
        "POST /v1/guests/demo/qmp HTTP/1.1\r\nHost: b\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 27\r\n\r\n{{\"execute\": \"query-status\"}}"
    );
    let (a, _) = exchange(addr, plain.as_bytes(), Duration::from_secs(30));
    assert_eq!(code(&a), 403, "{a}");
    assert!(a.contains("every other call goes over TLS to port 7443"), "{a}");
    assert!(body.contains("running"), "{body}");

    // QMP that would be root on the blade is refused, token or not.
    for escape in [
        r#"{"execute": "human-monitor-command", "arguments": {"command-line": "info version"}}"#,
        r#"{"execute": "migrate", "arguments": {"uri": "exec:cat /run/bladevisor/cluster.toml"}}"#,
        r#"{"execute": "blockdev-add", "arguments": {"driver": "host_device", "node-name": "x", "filename": "/dev/mapper/lab-vm2"}}"#,
        r#"{"execute": "pmemsave", "arguments": {"val": 0, "size": 4096, "filename": "/tmp/guest-memory"}}"#,
    ] {
        let (c, body) = qmp(escape);
        assert_eq!(c, 403, "{escape}: {body}");
        assert!(body.contains("not one of the read-only queries"), "{body}");
    }
    // Peer calls name a blade of this cluster.
    let r = ok(blade.call(
        &Request::Peer(Peer::Incoming { guest: "demo".into(), from: "mallory".into(), caps: vec![], release: None }),
        Some(TOKEN),
    ));
    assert_eq!(r.code, 403, "{}", r.body);
    let r = ok(blade.call(&Request::Peer(Peer::Drained { node: "mallory".into(), drained: true }), Some(TOKEN)));
    assert_eq!(r.code, 403, "{}", r.body);

    let (a, _) = liar.join().unwrap();
    assert_eq!(code(&a), 408, "the unsent body times out: {a:?}");
    drop(idle);
    let g = guest(blade);
    assert_eq!((g.state, g.pid), (GuestState::Running, Some(pid)), "the guest kept its process");
    assert!(ok(blade.status()).ready);
}

/// `bladevisor console demo -i`: a key typed reaches the guest (the test guest answers each byte
/// with `echo <byte>`), another session cannot type meanwhile, Ctrl-] leaves.
fn interactive_console(blade: &Blade) {
    use std::io::{Read, Write};
    use std::process::Stdio;
    let mut child = bladevisor_lab::demo::cli_command(blade)
        .args(["console", "demo", "-i"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the CLI runs");
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let (mut out, sink) = (child.stdout.take().unwrap(), seen.clone());
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"z").unwrap();
    stdin.flush().unwrap();
    wait(blade, "the guest to echo what was typed", Duration::from_secs(60), || {
        seen.lock().unwrap().contains("echo z")
    });
    // Meanwhile another session may watch, not type.
    let other = Request::Operator(Operator::ConsoleInput {
        name: "demo".into(),
        session: "another-operator".into(),
        who: String::new(),
        data: b"q".to_vec(),
    });
    let r = ok(blade.call(&other, Some(TOKEN)));
    assert_eq!(r.code, 409, "{}", r.body);
    assert!(r.body.contains("is typing on this console"), "{}", r.body);
    stdin.write_all(&[0x1d]).unwrap();
    stdin.flush().unwrap();
    let end = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < end, "Ctrl-] did not leave the console");
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut err = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut err);
    assert!(status.success() && err.contains("left the console of demo"), "{status} {err}");
}
