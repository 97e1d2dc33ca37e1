//! A blade's init in its own PID, mount and UTS namespaces, for the PID-1 tests and the init
//! benchmark: started with a service table, driven over its control socket and by signals.

#![allow(dead_code)] // each user of this file uses a different part of it

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use bladevisor::httpc::{call, Endpoint};
use bladevisor::proto::Status;

/// One init in its own namespaces, with its own configuration and control socket.
pub struct Ns {
    pub dir: PathBuf,
    pub child: Child,
    pub log: PathBuf,
    /// The init's cgroup prefix (BLADEVISOR_CGROUP).
    pub cgroup: String,
}

impl Ns {
    pub fn start(test: &str, services: &str) -> Ns {
        Self::start_with(test, services, None)
    }

    /// With a baked cluster configuration too (`etc/cluster.toml`).
    pub fn start_with(test: &str, services: &str, cluster: Option<&str>) -> Ns {
        assert!(nix_is_root(), "PID-1 tests need root (they create PID and mount namespaces)");
        // Not under the checkout: the init mounts a fresh /tmp and /run in its namespace, which
        // would hide a checkout that lives there. /var/tmp is never mounted over.
        let dir = Path::new("/var/tmp/bladevisor-tests").join(format!("{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("etc")).unwrap();
        std::fs::create_dir_all(dir.join("run")).unwrap();
        std::fs::write(dir.join("etc/image.toml"), services.replace("@DIR@", dir.to_str().unwrap())).unwrap();
        if let Some(c) = cluster {
            std::fs::write(dir.join("etc/cluster.toml"), c).unwrap();
        }
        let log = dir.join("console.log");
        let out = std::fs::File::create(&log).unwrap();
        let cgroup = format!("bladevisor-test-{}-{test}", std::process::id());
        let child = Command::new("unshare")
            .args(["--pid", "--fork", "--mount", "--uts", "--mount-proc", "--kill-child"])
            .arg(env!("CARGO_BIN_EXE_bladevisor"))
            .arg("init")
            .env("BLADEVISOR_ETC", dir.join("etc"))
            .env("BLADEVISOR_RUN", dir.join("run"))
            .env("BLADEVISOR_CGROUP", &cgroup)
            .env("BLADEVISOR_KMSG", dir.join("kmsg"))
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("unshare runs");
        let ns = Ns { dir, child, log, cgroup };
        ns.wait_for("the control socket", Duration::from_secs(20), |ns| ns.try_status().is_some());
        ns
    }

    pub fn log(&self) -> String {
        let mut s = String::new();
        std::fs::File::open(&self.log).unwrap().read_to_string(&mut s).unwrap();
        s
    }

    pub fn endpoint(&self) -> Endpoint {
        Endpoint::Unix(self.dir.join("run/control.sock"))
    }

    pub fn try_status(&self) -> Option<Status> {
        let r = call(&self.endpoint(), "GET", "/v1/status", None, Duration::from_secs(5)).ok()?;
        serde_json::from_str(&r.body).ok()
    }

    pub fn status(&self) -> Status {
        self.try_status().unwrap_or_else(|| panic!("no status from the init; console:\n{}", self.log()))
    }

    pub fn post(&self, path: &str) -> u16 {
        call(&self.endpoint(), "POST", path, None, Duration::from_secs(5)).unwrap().code
    }

    pub fn service(&self, name: &str) -> bladevisor::supervisor::ServiceStatus {
        self.status().services.into_iter().find(|s| s.name == name).expect("service listed")
    }

    /// Waits for a condition; on timeout fails with what the init printed.
    pub fn wait_for(&self, what: &str, limit: Duration, mut cond: impl FnMut(&Ns) -> bool) {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if cond(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("timed out waiting for {what}; console:\n{}", self.log());
    }

    /// The init's pid as the host sees it (unshare's only child).
    pub fn init_pid(&self) -> u32 {
        let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", self.child.id())).unwrap();
        children.split_whitespace().next().expect("unshare has forked the init").parse().unwrap()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill").args(["-s", sig, &self.init_pid().to_string()]).status().unwrap().success();
        assert!(ok, "kill -s {sig} failed");
    }

    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let end = Instant::now() + limit;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            if Instant::now() > end {
                let _ = self.child.kill();
                panic!("the namespace did not end within {limit:?}; console:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
        // The (now empty) cgroups the init made on the host's hierarchy.
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        if let Some(mnt) = bladevisor::supervisor::cgroup::find_cgroup2(&info) {
            let prefix = mnt.join(&self.cgroup);
            // The namespace's processes die with its init, a moment after it.
            for _ in 0..20 {
                for e in std::fs::read_dir(&prefix).into_iter().flatten().flatten() {
                    if e.path().is_dir() {
                        let _ = std::fs::remove_dir(e.path());
                    }
                }
                if std::fs::remove_dir(&prefix).is_ok() || !prefix.exists() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
    }
}

pub fn nix_is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Host pids of zombie children of `parent`.
pub fn zombies_of(parent: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            st.contains("State:\tZ") && st.contains(&format!("\nPPid:\t{parent}\n"))
        })
        .collect()
}
