//! The real runtime: services as child processes of PID 1, each in its own session and cgroup,
//! with stdout and stderr captured line by line into the log under the service's name.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tracing::{info, warn};

use super::cgroup::Cgroups;
use super::Runtime;
use crate::config::services::Readiness;
use crate::config::ServiceSpec;

/// What every service finds in its environment unless its spec says otherwise.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub struct ProcessRuntime {
    pub cgroups: Cgroups,
    /// QMP sockets of the services that are guests.
    qmp: std::collections::BTreeMap<String, std::path::PathBuf>,
}

impl ProcessRuntime {
    pub fn new(cgroups: Cgroups) -> Self {
        ProcessRuntime { cgroups, qmp: Default::default() }
    }
}

/// Logs each line a service writes, until it closes its output.
fn capture(name: String, out: std::io::PipeReader) {
    crate::spawn_worker(&format!("log-{name}"), move || {
        for line in BufReader::new(out).split(b'\n') {
            let Ok(line) = line else { break };
            let text = String::from_utf8_lossy(&line);
            let text = text.trim_end();
            if !text.is_empty() {
                info!(service = %name, "{text}");
            }
        }
    });
}

/// Hands an unprivileged service what it needs before it starts: its files and devices
/// (chowned to it), the shared devices, its taps.
fn hand_over(u: &crate::config::services::Unprivileged) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    for p in u.shared.iter().filter(|p| p.exists()) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o666))
            .map_err(|e| format!("cannot open {} to guests: {e}", p.display()))?;
    }
    for p in &u.owns {
        // The run folder is ours to create; a device node must already be there.
        if !p.starts_with("/dev") {
            std::fs::create_dir_all(p)
                .and_then(|_| std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700)))
                .map_err(|e| format!("{}: {e}", p.display()))?;
        }
        std::os::unix::fs::chown(p, Some(u.uid), Some(u.gid))
            .map_err(|e| format!("cannot hand {} to uid {}: {e}", p.display(), u.uid))?;
    }
    for (tap, bridge) in &u.taps {
        crate::net::tap_for(tap, u.uid, u.gid, bridge)?;
    }
    Ok(())
}

impl Runtime for ProcessRuntime {
    fn spawn(&mut self, spec: &ServiceSpec) -> std::io::Result<u32> {
        if let Some(qmp) = &spec.qmp {
            if let Some(dir) = qmp.parent() {
                std::fs::create_dir_all(dir)?;
            }
            self.qmp.insert(spec.name.clone(), qmp.clone());
        }
        if let Some(u) = &spec.unprivileged {
            hand_over(u).map_err(std::io::Error::other)?;
        }
        let ids = spec.unprivileged.as_ref().filter(|u| !u.drops_itself).map(|u| (u.uid, u.gid));
        let no_memory_lock = spec.no_memory_lock;
        let (reader, writer) = std::io::pipe()?;
        let mut cmd = Command::new(&spec.argv[0]);
        cmd.args(&spec.argv[1..])
            .env_clear()
            .env("PATH", DEFAULT_PATH)
            .envs(&spec.env)
            .stdin(Stdio::null())
            .stdout(writer.try_clone()?)
            .stderr(writer);
        let procs = match self.cgroups.prepare(&spec.name) {
            Ok(fd) => fd,
            Err(e) => {
                warn!(service = %spec.name, "cannot create its cgroup, running it without one: {e}");
                None
            }
        };
        let procs_fd = procs.as_ref().map(|f| f.as_raw_fd());
        // SAFETY: between fork and exec only async-signal-safe calls: setsid(2), write(2) on an
        // fd opened before the fork, prctl(2), setrlimit(2), setgroups(2), setgid(2), setuid(2)
        // with values copied before the fork. No allocation, no locks.
        unsafe {
            cmd.pre_exec(move || {
                nix::unistd::setsid().map_err(std::io::Error::from)?;
                if let Some(fd) = procs_fd {
                    // "0" moves the writing process itself: the child joins before it can fork.
                    if nix::libc::write(fd, b"0".as_ptr().cast(), 1) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                if no_memory_lock {
                    // Out of the bounding set, the capability is gone from what it executes.
                    let none = nix::libc::rlimit { rlim_cur: 0, rlim_max: 0 };
                    const CAP_IPC_LOCK: nix::libc::c_ulong = 14; // linux/capability.h
                    if nix::libc::prctl(nix::libc::PR_CAPBSET_DROP, CAP_IPC_LOCK, 0, 0, 0) < 0
                        || nix::libc::setrlimit(nix::libc::RLIMIT_MEMLOCK, &none) < 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                if let Some((uid, gid)) = ids {
                    // Groups first, then the group, then the user: after setuid nothing can be dropped.
                    if nix::libc::prctl(nix::libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0
                        || nix::libc::setgroups(0, std::ptr::null()) < 0
                        || nix::libc::setgid(gid) < 0
                        || nix::libc::setuid(uid) < 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        drop(cmd); // closes our copies of the pipe's write end
        drop(procs);
        capture(spec.name.clone(), reader);
        // The child is reaped by PID 1's waitpid(-1) loop, never through this handle.
        Ok(child.id())
    }

    fn signal(&mut self, name: &str, pid: u32, sig: Signal) {
        if let Some(qmp) = self.qmp.get(name).cloned() {
            // A guest: SIGTERM would end QEMU at once; ask the guest to power off instead, and
            // before a SIGKILL give QEMU a last chance to quit cleanly.
            match sig {
                Signal::SIGTERM => {
                    crate::spawn_worker(&format!("powerdown-{name}"), move || {
                        let r = crate::qemu::qmp::Qmp::connect(&qmp, Duration::from_secs(5))
                            .and_then(|mut q| q.execute("system_powerdown", serde_json::json!({})));
                        if let Err(e) = r {
                            warn!("ACPI power-off via {}: {e}", qmp.display());
                        }
                    });
                    return;
                }
                Signal::SIGKILL => {
                    if let Ok(mut q) = crate::qemu::qmp::Qmp::connect(&qmp, Duration::from_millis(500)) {
                        let _ = q.execute("quit", serde_json::json!({}));
                        std::thread::sleep(Duration::from_millis(200));
                    }
                }
                _ => {}
            }
        }
        if sig == Signal::SIGKILL && self.cgroups.kill_all(name) {
            return;
        }
        // The session leader's group, then every straggler the cgroup knows of (a daemon that
        // made its own session is still in the cgroup).
        let _ = kill(Pid::from_raw(-(pid as i32)), sig);
        let _ = kill(Pid::from_raw(pid as i32), sig);
        for p in self.cgroups.pids(name) {
            let _ = kill(Pid::from_raw(p), sig);
        }
    }

    fn force_kill(&mut self, name: &str, pid: u32) {
        if !self.cgroups.kill_all(name) {
            let _ = kill(Pid::from_raw(-(pid as i32)), Signal::SIGKILL);
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
    }

    fn is_ready(&mut self, check: &Readiness) -> bool {
        if let Some(p) = &check.path {
            return Path::new(p).exists();
        }
        if let Some(addr) = &check.tcp {
            return addr
                .parse::<SocketAddr>()
                .is_ok_and(|a| TcpStream::connect_timeout(&a, Duration::from_millis(50)).is_ok());
        }
        true
    }

    fn release(&mut self, name: &str) {
        // The main process is gone; anything it left behind in its cgroup goes with it.
        if !self.cgroups.pids(name).is_empty() {
            warn!(service = %name, "main process exited; killing what it left in its cgroup");
            if !self.cgroups.kill_all(name) {
                for p in self.cgroups.pids(name) {
                    let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
                }
            }
        }
        self.cgroups.remove(name);
    }
}
