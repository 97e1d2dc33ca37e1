//! The image boots: from kernel+initrd and over PXE, reaches ready, answers its API, takes its
//! configuration from the network or falls back to the baked copy, and powers off in order.
//! Needs the image built (`image/build`; `tests/run` does it first).

use std::time::Duration;

use bladevisor::proto::PowerAction;
use bladevisor_lab::http::HttpDir;
use bladevisor_lab::{free_port, ok, serve_files, work_dir, Blade, BladeSpec, Boot, Image, Operator, Read, Request};

/// Under TCG on a shared 2-core machine a boot takes tens of seconds; these limits only catch
/// a blade that will never get there.
const READY: Duration = Duration::from_secs(300);

#[test]
fn a_blade_boots_to_ready_answers_its_api_and_powers_off_in_order() {
    let img = Image::built();
    let spec =
        BladeSpec::new("boot-direct", "52:54:00:b1:ad:01", Boot::Direct { cmdline: "bladevisor.node=blade1".into() });
    let mut blade = Blade::start_with_san(spec, &img, 16);
    let (line, _) = ok(blade.wait_console("bladevisor ready", READY));
    let version = img.version();
    assert!(
        line.contains(&format!("version {version}")) && line.contains("ms since kernel start"),
        "ready line: {line}"
    );
    // The line went through the kernel's log (`/dev/kmsg`, daemon facility) and the kernel put it
    // on the console: once, not once by the kernel and again by bladevisor.
    let console = blade.console();
    assert!(line.contains("bladevisor[1]:"), "ready line not from the kernel's log: {line}");
    assert_eq!(console.matches("bladevisor ready").count(), 1, "{}", blade.report());
    // The blade knows what its QEMU provides, to refuse guests it could not run.
    ok(blade.wait_console("QEMU's machine types and CPU models known", Duration::from_secs(60)));
    // The root stayed compressed: PID 1 mounted the initrd's squashfs under a tmpfs overlay
    // and ran the image's init from it, and the RAM it keeps for that is in status.
    assert!(
        console.contains("root: the compressed image mounted under a tmpfs overlay; starting its init"),
        "{}",
        blade.report()
    );

    let status = ok(blade.status());
    assert_eq!(status.node, "blade1", "{status:?}");
    assert_eq!(status.version, version);
    assert!(status.ready);
    assert_eq!(status.cluster.as_deref(), Some("lab"));
    assert!(
        status.config_source.as_deref().unwrap_or("").starts_with("baked /etc/bladevisor/cluster.toml"),
        "{status:?}"
    );
    assert!(status.management.as_deref().unwrap_or("").contains("10.0.2.15"), "DHCP from slirp: {status:?}");
    // udev named the NIC (its predictable name, which a node's management.interface may give)
    // before the network came up on it: the kernel's eth0 would mean the coldplug had not.
    assert!(
        status.management.as_deref().unwrap_or("").starts_with("enp"),
        "the management NIC by its predictable name: {:?}",
        status.management
    );
    assert!(status.degraded.is_empty(), "a clean boot is not degraded: {:?}\n{}", status.degraded, blade.report());
    // Where the time to ready went, phase by phase, in the boot table's order.
    let phases: Vec<(&str, usize)> = status.boot_phases.iter().map(|p| (p.name.as_str(), p.problems)).collect();
    assert_eq!(
        phases,
        [("udev", 0), ("network", 0), ("configuration", 0), ("identity", 0), ("credentials", 0), ("storage", 0)],
        "{:?}",
        status.boot_phases
    );
    println!("boot phases: {:?}", status.boot_phases);
    let udevd = status.services.iter().find(|s| s.name == "udevd").expect("udevd listed");
    assert_eq!(udevd.state, bladevisor::supervisor::ServiceState::Running, "{status:?}");
    assert!(status.memory.total_mib > 1500 && status.cpus == 2, "{status:?}");
    // The image (about 37 MiB) is shared memory of the initramfs; multipathd locks nothing.
    assert!(status.memory.detail.get("Shmem").is_some_and(|m| *m >= 20), "{:?}", status.memory);
    assert!(status.memory.detail.get("Mlocked").is_some_and(|m| *m < 8), "{:?}", status.memory);

    let metrics = ok(blade.call(&Request::Read(Read::Metrics), None));
    assert!(metrics.body.contains("bladevisor_ready 1"), "{}", metrics.body);

    let reboot = Request::Operator(Operator::Power(PowerAction::Reboot));
    // The baked configuration carries no credentials (anyone can read an image): on it, the
    // blade serves only the status and the metrics, whatever a caller presents, and opens no
    // TLS port; the blade keeps running.
    let plain = blade.api();
    let r = ok(blade.call_at(&plain, &reboot, None));
    assert_eq!(r.code, 403, "{}", r.body);
    let r = ok(blade.call_at(&plain, &reboot, Some("lab-token-change-me")));
    assert_eq!(r.code, 403, "the token the first release baked opens nothing: {}", r.body);
    assert!(r.body.contains("serves only GET /v1/status and GET /metrics"), "{}", r.body);
    let creds = ok(blade.status()).credentials.unwrap_or_default();
    assert!(creds.starts_with("none: no bladevisor.credentials="), "status says why: {creds}");
    let capacity = ok(blade.call_at(&plain, &Request::Read(Read::Capacity), None));
    assert_eq!(capacity.code, 403, "nothing but the status and the metrics: {}", capacity.body);
    let r = blade.call(&reboot, Some("lab-token-change-me"));
    assert!(r.is_err(), "no TLS port without credentials: {:?}", r.map(|r| r.code));
    assert!(ok(blade.status()).shutting_down.is_none());

    // ACPI power-off, as a chassis manager would send it.
    ok(ok(blade.qmp()).execute("system_powerdown", serde_json::json!({})));
    let st = ok(blade.wait_exit(Duration::from_secs(120)));
    let console = blade.console();
    assert!(st.success(), "QEMU exit {st}\n{}", blade.report());
    for step in [
        "power button pressed: shutting down",
        "stopping (SIGTERM) service=udevd",
        "bladevisor going down",
        "reboot: Power down",
    ] {
        assert!(console.contains(step), "{step:?} missing from the shutdown\n{}", blade.report());
    }
}

#[test]
fn a_blade_boots_over_pxe_with_its_configuration_from_the_server() {
    let img = Image::built();
    let dir = work_dir("boot-pxe");
    // The deployment server's folder: the image artifacts and a cluster configuration.
    let www = dir.join("www");
    std::fs::create_dir_all(&www).unwrap();
    for f in ["bladevisor.vmlinuz", "bladevisor.initrd", "bladevisor.ipxe"] {
        std::os::unix::fs::symlink(img.dir.join(f), www.join(f)).unwrap();
    }
    std::fs::write(
        www.join("cluster.toml"),
        "[cluster]\nname = \"pxe-lab\"\ntoken = \"pxe-lab-token-0123456789\"\n\n[nodes.pxe-blade]\nmacs = [\"52:54:00:b1:ad:77\"]\n",
    )
    .unwrap();
    let http = HttpDir::serve(&www);
    let url = format!("http://10.0.2.2:{}", http.port);
    // What a PXE setup gives iPXE: set the kernel arguments, chain to the image's script.
    let tftp = dir.join("tftp");
    std::fs::create_dir_all(&tftp).unwrap();
    std::fs::write(
        tftp.join("boot.ipxe"),
        format!("#!ipxe\nset bladevisor_args bladevisor.config={url}/cluster.toml\nchain {url}/bladevisor.ipxe\n"),
    )
    .unwrap();
    let spec =
        BladeSpec::new("boot-pxe", "52:54:00:b1:ad:77", Boot::Pxe { tftp_dir: tftp, bootfile: "boot.ipxe".into() });
    let mut blade = Blade::start_in(spec, &img, dir);
    ok(blade.wait_console("bladevisor ready", READY + Duration::from_secs(300)));
    let status = ok(blade.status());
    // No bladevisor.node=: the blade found itself by its MAC in the fetched configuration.
    assert_eq!(status.node, "pxe-blade", "{status:?}");
    assert_eq!(status.cluster.as_deref(), Some("pxe-lab"), "{status:?}");
    assert_eq!(status.config_source.as_deref(), Some(format!("fetched from {url}/cluster.toml").as_str()));
    assert!(status.degraded.is_empty(), "{:?}", status.degraded);
    assert!(blade.console().contains(&format!("configuration: using fetched from {url}/cluster.toml")));
}

#[test]
fn an_unreachable_configuration_url_falls_back_to_the_baked_copy_and_says_so() {
    let img = Image::built();
    let port = free_port(); // nothing listens there
    let url = format!("http://10.0.2.2:{port}/cluster.toml");
    let spec = BladeSpec::new(
        "boot-fallback",
        "52:54:00:b1:ad:02",
        Boot::Direct { cmdline: format!("bladevisor.config={url}") },
    );
    let mut blade = Blade::start_with_san(spec, &img, 16);
    ok(blade.wait_console("bladevisor ready", READY));
    let status = ok(blade.status());
    assert_eq!(status.node, "blade2", "found by MAC in the baked configuration: {status:?}");
    assert_eq!(
        status.config_source.as_deref(),
        Some(format!("baked /etc/bladevisor/cluster.toml (fallback: {url} failed)").as_str())
    );
    assert!(
        status.degraded.iter().any(|d| d.starts_with(&format!("cannot fetch {url} after"))),
        "the fallback degrades the blade and says why: {:?}",
        status.degraded
    );
    let console = blade.console();
    assert!(
        console.contains("configuration: using baked /etc/bladevisor/cluster.toml (fallback"),
        "{}",
        blade.report()
    );
}

/// A deployment server that misbehaves: the configuration it serves has a value that would
/// hang or panic a blade (`stop-timeout-s = inf`), and its alias file trickles one byte every
/// two seconds, for ever. The blade refuses the one with the file, line and key, gives up on
/// the other at its deadline (`config-timeout-s`), and is ready, degraded, saying why.
#[test]
fn a_bad_value_and_a_trickling_alias_server_leave_a_ready_degraded_blade_that_says_why() {
    let img = Image::built();
    let dir = work_dir("boot-hostile-server");
    let bad = "[cluster]\nname = \"lab\"\ntoken = \"a-token-that-is-long-enough\"\n\n[nodes.blade1]\nmacs = [\"52:54:00:b1:ad:01\"]\n\n[guests.web]\nnode = \"blade1\"\nmemory-mib = 32\nstop-timeout-s = inf\n";
    let (_http, url) = serve_files(&dir, &[("cluster.toml", bad)]);
    let config_url = format!("{url}/cluster.toml");
    let trickle = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let trickle_port = trickle.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in trickle.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                use std::io::{Read, Write};
                let mut buf = [0u8; 2048];
                let _ = s.read(&mut buf);
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\nlab-vm1 ");
                while s.write_all(b"3").is_ok() {
                    std::thread::sleep(Duration::from_secs(2));
                }
            });
        }
    });
    let aliases_url = format!("http://10.0.2.2:{trickle_port}/bindings");
    let spec = BladeSpec::new(
        "boot-hostile-server",
        "52:54:00:b1:ad:01",
        Boot::Direct { cmdline: format!("bladevisor.config={config_url} bladevisor.aliases={aliases_url}") },
    );
    let mut blade = Blade::start_with_san_in(spec, &img, dir, 16);
    ok(blade.wait_console("bladevisor ready", READY));
    let status = ok(blade.status());
    assert!(status.ready);
    assert_eq!(
        status.config_source.as_deref(),
        Some(format!("baked /etc/bladevisor/cluster.toml (fallback: {config_url} failed)").as_str())
    );
    let bad_value = format!("{config_url}:11:18: stop-timeout-s: inf is not a number of seconds");
    assert!(
        status.degraded.iter().any(|d| d.starts_with(&bad_value)),
        "the refusal names the file, line and key: {:?}\n{}",
        status.degraded,
        blade.report()
    );
    assert!(
        status.degraded.iter().any(|d| d.starts_with(&format!("aliases: cannot fetch {aliases_url} after"))
            && d.contains("the reply did not complete in time")),
        "the trickling alias server is given up on at its deadline: {:?}",
        status.degraded
    );
    assert_eq!(status.aliases_source.as_deref(), Some("the cluster configuration's [aliases]"), "{status:?}");
    assert!(status.luns.iter().any(|l| l.alias == "lab-vm1"), "the baked table is in force: {:?}", status.luns);
}
