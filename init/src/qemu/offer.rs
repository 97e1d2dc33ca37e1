//! What this blade's QEMU provides: its machine types and CPU models, asked once at boot
//! (`-machine help`, `-cpu help`). A guest whose machine type or CPU model a blade's QEMU lacks
//! cannot run there, and must not be moved there: an incoming migration is refused before the
//! source stops anything (a rollout that reached a blade with an older QEMU never strands a
//! guest half-way).

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::Duration;

use tracing::{info, warn};

/// Machine types and CPU models, by the names a guest's configuration uses (aliases included:
/// `q35`, `pc`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Offer {
    pub machines: BTreeSet<String>,
    pub cpus: BTreeSet<String>,
}

static OFFER: OnceLock<Offer> = OnceLock::new();
/// True once [`learn`] has finished, whatever it found.
static ASKED: (Mutex<bool>, Condvar) = (Mutex::new(false), Condvar::new());

/// The first column of `-machine help` after its header.
pub fn parse_machines(help: &str) -> BTreeSet<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Supported machines"))
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .filter(|m| *m != "none")
        .map(String::from)
        .collect()
}

/// The CPU models of `-cpu help` (QEMU 7's `x86 <model>` lines and later ones' indented
/// `<model>` lines), up to the CPUID flags that follow them.
pub fn parse_cpus(help: &str) -> BTreeSet<String> {
    help.lines()
        .take_while(|l| !l.starts_with("Recognized CPUID flags"))
        .filter(|l| !l.trim().is_empty() && !l.starts_with("Available CPUs"))
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            match w.next()? {
                "x86" => w.next(),
                m => Some(m),
            }
        })
        .map(String::from)
        .collect()
}

impl Offer {
    /// What this QEMU lacks to run a guest of this machine type and CPU model (flags after the
    /// model, `qemu64,+ssse3`, are not checked), in words; None when it has both.
    pub fn lacks(&self, machine: &str, cpu: &str) -> Option<String> {
        let model = cpu.split(',').next().unwrap_or(cpu);
        let mut missing = vec![];
        if !self.machines.contains(machine) {
            missing.push(format!("machine type {machine}"));
        }
        if !self.cpus.contains(model) {
            missing.push(format!("CPU model {model}"));
        }
        (!missing.is_empty()).then(|| format!("its QEMU does not provide {}", missing.join(" or ")))
    }
}

/// Asks the QEMU at `qemu` once and keeps the answer for [`known`]; a QEMU that cannot be asked
/// leaves the check off (logged), as on a blade before this existed.
pub fn learn(qemu: &Path) {
    let ask = |what: &str| -> Result<String, String> {
        let argv = [qemu.display().to_string(), what.to_string(), "help".to_string()];
        match crate::child::run(&argv, Duration::from_secs(20))? {
            (0, text) => Ok(text),
            (code, text) => Err(format!("{} exited {code}: {}", argv.join(" "), text.trim())),
        }
    };
    match (ask("-machine"), ask("-cpu")) {
        (Ok(m), Ok(c)) => {
            let offer = Offer { machines: parse_machines(&m), cpus: parse_cpus(&c) };
            info!(
                machines = offer.machines.len(),
                cpus = offer.cpus.len(),
                "QEMU's machine types and CPU models known"
            );
            let _ = OFFER.set(offer);
        }
        (Err(e), _) | (_, Err(e)) => {
            warn!("cannot ask {} what it provides ({e}): arriving guests are not checked", qemu.display())
        }
    }
    let (done, cv) = &ASKED;
    *done.lock().unwrap_or_else(|p| p.into_inner()) = true;
    cv.notify_all();
}

/// Waits until [`learn`] has finished (whatever it found), at most `limit`; false if it has
/// not by then.
pub fn wait_asked(limit: Duration) -> bool {
    let (done, cv) = &ASKED;
    let guard = done.lock().unwrap_or_else(|p| p.into_inner());
    let (guard, _) = cv.wait_timeout_while(guard, limit, |d| !*d).unwrap_or_else(|p| p.into_inner());
    *guard
}

/// What this blade's QEMU provides, once [`learn`] has asked it.
pub fn known() -> Option<&'static Offer> {
    OFFER.get()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_arrival_waits_for_the_question_to_qemu_whatever_its_answer() {
        assert!(!wait_asked(Duration::from_millis(50)), "not asked yet");
        let asker = std::thread::spawn(|| {
            std::thread::sleep(Duration::from_millis(200));
            learn(Path::new("/nonexistent/qemu-system-x86_64"));
        });
        let t = std::time::Instant::now();
        assert!(wait_asked(Duration::from_secs(20)), "the waiter is woken when the asking is done");
        assert!(t.elapsed() < Duration::from_secs(10), "woken, not timed out: {:?}", t.elapsed());
        asker.join().unwrap();
        assert_eq!(known(), None, "a QEMU that cannot be asked leaves the check off");
        assert!(wait_asked(Duration::ZERO), "and later arrivals do not wait");
    }

    const MACHINES_7_2: &str = "Supported machines are:\n\
        microvm              microvm (i386)\n\
        pc                   Standard PC (i440FX + PIIX, 1996) (alias of pc-i440fx-7.2)\n\
        pc-i440fx-7.2        Standard PC (i440FX + PIIX, 1996) (default)\n\
        q35                  Standard PC (Q35 + ICH9, 2009) (alias of pc-q35-7.2)\n\
        pc-q35-7.2           Standard PC (Q35 + ICH9, 2009)\n\
        pc-q35-7.1           Standard PC (Q35 + ICH9, 2009)\n\
        none                 empty machine\n";
    const CPUS_7_2: &str = "x86 486                   (alias configured by machine type)\n\
        x86 Broadwell-v1          Intel Core Processor (Broadwell)\n\
        x86 qemu64                (alias configured by machine type)\n\
        x86 host                  KVM processor with all supported host features\n\
        \n\
        Recognized CPUID flags:\n  3dnow 3dnowext\n";
    const CPUS_9: &str = "Available CPUs:\n  486                   (alias configured by machine type)\n  \
        EPYC-v4               AMD EPYC Processor\n  qemu64                (alias configured by machine type)\n\n\
        Recognized CPUID flags:\n  3dnow\n";

    #[test]
    fn machine_types_and_their_aliases_are_read_from_the_help() {
        let m = parse_machines(MACHINES_7_2);
        for name in ["pc", "q35", "pc-q35-7.2", "pc-q35-7.1", "pc-i440fx-7.2", "microvm"] {
            assert!(m.contains(name), "{name} missing from {m:?}");
        }
        assert!(!m.contains("none") && !m.contains("Supported"), "{m:?}");
    }

    #[test]
    fn cpu_models_are_read_in_both_help_formats() {
        let c = parse_cpus(CPUS_7_2);
        assert_eq!(c.into_iter().collect::<Vec<_>>(), ["486", "Broadwell-v1", "host", "qemu64"]);
        let c = parse_cpus(CPUS_9);
        assert_eq!(c.into_iter().collect::<Vec<_>>(), ["486", "EPYC-v4", "qemu64"]);
    }

    #[test]
    fn a_guest_is_checked_against_both_and_told_what_is_missing() {
        let o = Offer { machines: parse_machines(MACHINES_7_2), cpus: parse_cpus(CPUS_7_2) };
        assert_eq!(o.lacks("pc-q35-7.2", "qemu64,+ssse3"), None);
        assert_eq!(
            o.lacks("pc-q35-8.2", "qemu64").as_deref(),
            Some("its QEMU does not provide machine type pc-q35-8.2")
        );
        assert_eq!(
            o.lacks("pc-q35-8.2", "EPYC-v4").as_deref(),
            Some("its QEMU does not provide machine type pc-q35-8.2 or CPU model EPYC-v4")
        );
    }
}
