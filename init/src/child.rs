//! Commands a worker thread runs and waits for (sanlock's client), in a process whose main loop
//! reaps every child the moment it ends (PID 1 must: orphans are re-parented to it). The worker
//! claims its child before the reaper can see it; the reaper hands a claimed child's status
//! over instead of taking it. Whichever of the two collects the zombie first, the worker gets
//! the status; an unclaimed child is the reaper's as before.

use std::collections::BTreeMap;
use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// How a claimed child ended: its exit code, or the signal that killed it (negative).
type Ended = i32;

static CLAIMED: Mutex<BTreeMap<u32, Option<Ended>>> = Mutex::new(BTreeMap::new());

fn claimed() -> MutexGuard<'static, BTreeMap<u32, Option<Ended>>> {
    CLAIMED.lock().unwrap_or_else(|p| p.into_inner())
}

fn ended(s: WaitStatus) -> Option<(u32, Ended)> {
    match s {
        WaitStatus::Exited(pid, code) => Some((pid.as_raw() as u32, code)),
        WaitStatus::Signaled(pid, sig, _) => Some((pid.as_raw() as u32, -(sig as i32))),
        _ => None,
    }
}

/// The reaper's side: reaps every ended child without blocking; claimed ones are set aside for
/// their worker, the others go to `on_exit` (pid, exit code or minus the signal).
pub fn reap(mut on_exit: impl FnMut(u32, Ended)) {
    let mut claimed = claimed();
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(s) => {
                if let Some((pid, e)) = ended(s) {
                    match claimed.get_mut(&pid) {
                        Some(slot) => *slot = Some(e),
                        None => on_exit(pid, e),
                    }
                }
            }
        }
    }
}

/// Runs `argv` (no shell) and waits at most `limit` for it; its exit code (or minus the signal)
/// and what it wrote on stdout and stderr (at most 64 KiB). Killed at the deadline.
pub fn run(argv: &[String], limit: Duration) -> Result<(Ended, String), String> {
    let prog = argv.first().ok_or("nothing to run")?;
    let mut child = {
        // Claimed before the reaper can take it: it holds this lock while it reaps.
        let mut claimed = claimed();
        let child = Command::new(prog)
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("{prog}: {e}"))?;
        claimed.insert(child.id(), None);
        child
    };
    let pid = child.id();
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(p) = pipe {
                let _ = p.take(64 << 10).read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let err = drain(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let end = Instant::now() + limit;
    let mut killed = false;
    let status = loop {
        {
            let mut claimed = claimed();
            if let Some(Some(e)) = claimed.get(&pid) {
                let e = *e;
                claimed.remove(&pid);
                break e;
            }
            if let Ok(s) = waitpid(Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG)) {
                if let Some((_, e)) = ended(s) {
                    claimed.remove(&pid);
                    break e;
                }
            }
        }
        if Instant::now() >= end && !killed {
            let _ = child.kill();
            killed = true;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut text = out.join().unwrap_or_default();
    text.extend(err.join().unwrap_or_default());
    let text = String::from_utf8_lossy(&text).into_owned();
    if killed {
        return Err(format!("{} did not finish within {} s", argv.join(" "), limit.as_secs()));
    }
    Ok((status, text))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Vec<String> {
        vec!["/bin/sh".into(), "-c".into(), script.into()]
    }

    #[test]
    fn a_worker_gets_its_commands_status_even_when_the_reaper_runs() {
        let reaper = std::thread::spawn(|| {
            let mut others = 0;
            for _ in 0..100 {
                reap(|_, _| others += 1);
                std::thread::sleep(Duration::from_millis(5));
            }
            others
        });
        let (code, text) = run(&sh("echo out; echo err >&2; exit 3"), Duration::from_secs(10)).unwrap();
        assert_eq!((code, text.as_str()), (3, "out\nerr\n"));
        assert_eq!(run(&sh("exit 0"), Duration::from_secs(10)).unwrap().0, 0);
        let _ = reaper.join();
        let e = run(&sh("sleep 5"), Duration::from_millis(200)).unwrap_err();
        assert!(e.contains("did not finish within"), "{e}");
    }
}
