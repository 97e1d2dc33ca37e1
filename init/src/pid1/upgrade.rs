//! The edge of an in-place upgrade (`bladevisor upgrade <base-url>`): a worker fetches the
//! release's manifest, kernel and initrd into memory, checks them against the manifest and
//! loads them with `kexec_file_load`; the main loop then evacuates the blade and, once the
//! guests are gone (or allowed to stop), shuts down in order and reboots into the loaded kernel
//! without firmware. The decisions are `release::upgrade`'s. Who may ask: an operator (the
//! control socket, or the network with an operator's token).

use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use super::{Event, Init};
use crate::config::fetch;
use crate::proto::request::{Answer, Operator, Refusal, Reply};
use crate::proto::GuestState;
use crate::release::upgrade::{self as up, Next, UpgradeStatus};
use crate::release::MAX_MANIFEST_BYTES;

/// How long the manifest's fetch may take, and each of the two files'.
const MANIFEST_TIME: Duration = Duration::from_secs(60);
const FILE_TIME: Duration = Duration::from_secs(600);
/// The initial PID namespace's inode (`PROC_PID_INIT_INO`): only its init may replace the kernel.
const INIT_PID_NS_INO: u64 = 0xEFFF_FFFC;

/// What the fetching worker tells the main loop.
pub enum UpgradeReport {
    /// The manifest is read: the release it installs.
    Planned(String),
    /// The release is fetched, verified and loaded: it boots on the next kexec.
    Loaded(String, Files),
    /// The blade already runs that release: nothing was fetched.
    Current(String),
    Failed(String),
}

/// A fetched release held in memory: its kernel and initrd, and the command line it boots
/// with before the evacuation's figures are added.
pub struct Files {
    kernel: OwnedFd,
    initrd: OwnedFd,
    cmdline: String,
}

/// What an upgraded boot was asked to do once healthy (from its command line).
#[derive(Debug, Clone, Default)]
pub struct AfterUpgrade {
    pub upgraded: up::Upgraded,
    /// Undrain once healthy; cleared once done.
    pub undrain: bool,
}

impl AfterUpgrade {
    pub fn from_cmdline(k: &crate::cmdline::KernelCmdline) -> Option<AfterUpgrade> {
        k.after_upgrade.as_ref()?;
        let upgraded = up::Upgraded {
            from: k.upgraded_from.clone(),
            guests_moved: k.upgrade_moved.as_deref().and_then(|n| n.parse().ok()),
            pause_ms: k.upgrade_pause_ms.as_deref().and_then(|n| n.parse().ok()),
        };
        Some(AfterUpgrade { upgraded, undrain: up::undrain_asked(k.after_upgrade.as_deref()) })
    }
}

/// Whether this process is the machine's init (not PID 1 of a namespace, as in the tests).
fn machine_init() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::process::id() == 1 && std::fs::metadata("/proc/self/ns/pid").is_ok_and(|m| m.ino() == INIT_PID_NS_INO)
}

/// An upgrade under way, or the last that failed: what `status` shows, the fetched release
/// while it is held, and when the evacuation was seen over.
pub struct Run {
    pub status: UpgradeStatus,
    files: Option<Files>,
    evacuated: Option<Instant>,
}

impl Run {
    /// The upgrade stops: the loaded kernel is forgotten, the files dropped, status says why.
    fn fail(&mut self, detail: String) {
        if self.files.take().is_some() {
            unload();
        }
        self.status.phase = "failed".into();
        self.status.detail = detail;
    }
}

impl Init {
    /// `POST /v1/upgrade`: checks what can be checked at once, then fetches in a worker.
    pub(super) fn start_upgrade(&mut self, base_url: &str, undrain: bool, stop_guests: bool) -> Reply {
        if let Some(u) = self.upgrade.as_ref().map(|r| &r.status).filter(|u| u.running()) {
            let to = u.to.as_deref().unwrap_or("?");
            return Err(Refusal::conflict(format!("an upgrade to {to} from {} is under way: {}", u.from_url, u.phase)));
        }
        if self.shutdown.is_some() {
            return Err(Refusal::conflict("the blade is shutting down"));
        }
        let base = up::base_url(base_url).map_err(Refusal::invalid)?;
        if !machine_init() {
            return Err(Refusal::unavailable(
                "this bladevisor is not the machine's init (a PID namespace or a development run): it cannot boot another kernel",
            ));
        }
        if self.coord.is_none() {
            return Err(Refusal::unavailable("the blade is still booting"));
        }
        let now = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
        let cmdline = now.trim().to_string();
        up::next_cmdline(&cmdline, &self.version, undrain, None).map_err(Refusal::invalid)?;
        info!(from = %base, undrain, stop_guests, "upgrade requested: fetching the release");
        let status = UpgradeStatus {
            from_url: base.clone(),
            to: None,
            phase: "fetching".into(),
            detail: format!("fetching {base}/{}", up::MANIFEST),
            undrain,
            stop_guests,
        };
        self.upgrade = Some(Run { status, files: None, evacuated: None });
        let (tx, current, answer_base) = (self.tx.clone(), self.version.clone(), base.clone());
        crate::spawn_worker("upgrade-fetch", move || {
            let report = fetch_and_load(&base, &cmdline, &current, undrain, |v| {
                let _ = tx.send(Event::Upgrade(UpgradeReport::Planned(v.to_string())));
            })
            .unwrap_or_else(UpgradeReport::Failed);
            let _ = tx.send(Event::Upgrade(report));
        });
        Ok(Answer::done(format!(
            "upgrade from {answer_base} started: fetching and verifying, then evacuating; `bladevisor status` follows it"
        )))
    }

    /// The worker's news.
    pub(super) fn upgrade_report(&mut self, r: UpgradeReport) {
        let Some(run) = self.upgrade.as_mut().filter(|r| r.status.running()) else {
            if matches!(r, UpgradeReport::Loaded(..)) {
                unload();
            }
            return;
        };
        let u = &mut run.status;
        match r {
            UpgradeReport::Planned(v) => {
                u.detail = format!("fetching and verifying release {v}");
                u.to = Some(v);
            }
            UpgradeReport::Current(v) => {
                info!(from = %u.from_url, "upgrade: this blade already runs release {v}: nothing to do");
                u.phase = "current".into();
                u.detail = format!("already on release {v}: nothing to do");
            }
            UpgradeReport::Failed(e) => {
                error!(from = %u.from_url, "upgrade failed, nothing changed: {e}");
                run.fail(format!("{e}; nothing changed: the blade runs release {}", self.version));
            }
            UpgradeReport::Loaded(v, files) => {
                run.files = Some(files);
                if self.shutdown.is_some() {
                    return run.fail(format!("release {v} was loaded as the blade began shutting down: not booted"));
                }
                info!(release = %v, "upgrade: release {v} fetched, verified and loaded; evacuating the blade");
                u.phase = "evacuating".into();
                u.detail = format!("release {v} is loaded; evacuating the blade");
                self.tell_coordinator(Operator::Evacuate { parallel: None });
            }
        }
    }

    /// Each pass of the loop: once the evacuation is over, boot the release or say why not.
    pub(super) fn tick_upgrade(&mut self) {
        if self.upgrade.as_ref().is_none_or(|r| r.status.phase != "evacuating") {
            return;
        }
        let Some(ev) = self.coord.as_ref().and_then(|c| c.evacuation()).filter(|e| e.done) else { return };
        // Taken out while it is decided on, so that the blade's own state can be read beside it.
        let Some(mut run) = self.upgrade.take() else { return };
        self.evacuation_over(&mut run, &ev);
        self.upgrade = Some(run);
    }

    fn evacuation_over(&mut self, run: &mut Run, ev: &crate::migration::Evacuation) {
        let still_here: Vec<String> = self
            .coord
            .as_ref()
            .map(|c| c.guest_status(&self.facts()))
            .unwrap_or_default()
            .into_iter()
            .filter(|g| {
                use GuestState::*;
                matches!(g.state, Starting | Running | Stopping | Crashed | Incoming | Migrating | InDoubt)
            })
            .map(|g| g.name)
            .collect();
        let to = run.status.to.clone().unwrap_or_default();
        let waited = run.evacuated.get_or_insert_with(Instant::now).elapsed();
        match up::after_evacuation(ev, &still_here, run.status.stop_guests, waited) {
            Next::Wait(leaving) => {
                run.status.detail =
                    format!("waiting for the paused copies of guests that moved to end: {}", leaving.join(", "));
            }
            Next::Refuse(why) => {
                warn!(release = %to, "upgrade stopped: {why}");
                run.fail(why);
            }
            Next::Boot { stopping } => {
                if !stopping.is_empty() {
                    warn!(guests = ?stopping, "upgrade: stopping guests that could not move, as the operator allowed");
                }
                if let Err(e) = self.reload(run, self.moved(ev)) {
                    error!(release = %to, "upgrade stopped: {e}");
                    return run.fail(format!("{e}; the blade stays drained on release {}", self.version));
                }
                run.status.phase = "booting".into();
                run.status.detail = format!("stopping services, then booting release {to} (kexec)");
                self.begin_shutdown(crate::proto::PowerAction::Kexec, &format!("upgrade to release {to}"));
            }
        }
    }

    /// The guests the evacuation moved and their migrations' total downtime.
    fn moved(&self, ev: &crate::migration::Evacuation) -> up::Moved {
        let ids: Vec<u64> = ev.guests.iter().filter(|i| i.moved == Some(true)).filter_map(|i| i.migration).collect();
        let migrations = self.coord.as_ref().map(|c| c.migration_status(Instant::now())).unwrap_or_default();
        let pause_ms = migrations
            .iter()
            .filter(|m| ids.contains(&m.id))
            .filter_map(|m| m.outcome.as_ref().map(|o| o.downtime_ms))
            .sum();
        up::Moved { guests: ids.len(), pause_ms }
    }

    /// Loads the release again before it boots, its command line now telling what the
    /// evacuation moved.
    fn reload(&self, run: &Run, moved: up::Moved) -> Result<(), String> {
        let f = run.files.as_ref().ok_or("the fetched release is no longer held")?;
        let cmdline = up::next_cmdline(&f.cmdline, &self.version, run.status.undrain, Some(moved))?;
        load(&f.kernel, &f.initrd, &cmdline)
    }

    /// After an upgraded boot: undrain once ready, healthy and the drain is known, if asked.
    pub(super) fn undrain_after_upgrade(&mut self) {
        let Some(after) = self.after_upgrade.as_ref().filter(|a| a.undrain) else { return };
        if self.ready_ms.is_none() || self.shutdown.is_some() {
            return;
        }
        let Some(c) = self.coord.as_ref().filter(|c| c.drain_learnt()) else { return };
        if !self.degraded().is_empty() {
            return;
        }
        let from = after.upgraded.from.clone().unwrap_or_else(|| "an earlier release".into());
        if let Some(a) = &mut self.after_upgrade {
            a.undrain = false;
        }
        if c.drained().is_none() {
            return info!("upgraded from {from}: healthy on release {}; the blade was not drained", self.version);
        }
        info!("upgraded from {from}: healthy on release {}; undrained, as the upgrade asked", self.version);
        self.tell_coordinator(Operator::Undrain);
    }

    /// An operator's request the upgrade makes itself (its answer is logged by the coordinator).
    fn tell_coordinator(&mut self, op: Operator) {
        let (tx, _) = mpsc::channel();
        let ticket = self.edge.ticket(tx);
        if let Some(c) = &mut self.coord {
            c.operator(op, ticket, &super::edge::facts(&self.sup, &self.storage), Instant::now());
        }
        self.run_effects();
    }
}

/// Fetches the release at `base`, checks it against its manifest and loads it for kexec with
/// the command line that follows `cmdline` (unless it is the `current` one).
fn fetch_and_load(
    base: &str,
    cmdline: &str,
    current: &str,
    undrain: bool,
    planned: impl FnOnce(&str),
) -> Result<UpgradeReport, String> {
    let url = format!("{base}/{}", up::MANIFEST);
    let text = fetch::get(&url, Instant::now() + MANIFEST_TIME, MAX_MANIFEST_BYTES as usize)?;
    let manifest = crate::release::parse_manifest(&text).map_err(|e| format!("{url}: {e}"))?;
    let plan = up::plan(base, &manifest)?;
    planned(&plan.version);
    if plan.version == current {
        return Ok(UpgradeReport::Current(plan.version));
    }
    plan.fits(super::host::memory().available_mib)?;
    let file = |(url, want): &(String, crate::release::Artifact)| -> Result<OwnedFd, String> {
        let data = fetch::get_bytes(url, Instant::now() + FILE_TIME, want.bytes as usize)?;
        up::check(url, &data, want)?;
        in_memory_file(url, &data)
    };
    let kernel = file(&plan.kernel)?;
    let initrd = file(&plan.initrd)?;
    let next = up::next_cmdline(cmdline, current, undrain, None)?;
    load(&kernel, &initrd, &next).map_err(|e| format!("release {}: {e}", plan.version))?;
    Ok(UpgradeReport::Loaded(plan.version, Files { kernel, initrd, cmdline: cmdline.to_string() }))
}

/// The bytes as an anonymous in-memory file, what `kexec_file_load` reads.
fn in_memory_file(url: &str, data: &[u8]) -> Result<OwnedFd, String> {
    let fd = rustix::fs::memfd_create("bladevisor-upgrade", rustix::fs::MemfdFlags::CLOEXEC)
        .map_err(|e| format!("{url}: cannot hold it in memory: {e}"))?;
    let mut f = std::fs::File::from(fd);
    f.write_all(data).map_err(|e| format!("{url}: cannot hold it in memory: {e}"))?;
    Ok(f.into())
}

/// `kexec_file_load(2)`: the kernel checks the image (and its signature where it demands one).
fn load(kernel: &OwnedFd, initrd: &OwnedFd, cmdline: &str) -> Result<(), String> {
    let line = std::ffi::CString::new(cmdline).map_err(|_| "the command line holds a NUL byte".to_string())?;
    let len = line.as_bytes_with_nul().len();
    // SAFETY: the file descriptors are open, the command line is NUL-terminated and `len` long.
    let r = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_kexec_file_load,
            kernel.as_raw_fd(),
            initrd.as_raw_fd(),
            len as nix::libc::c_ulong,
            line.as_ptr(),
            0 as nix::libc::c_ulong,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    Err(match e.raw_os_error() {
        Some(nix::libc::ENOEXEC) => format!("the kernel refuses the new kernel as not bootable by kexec ({e})"),
        Some(nix::libc::EKEYREJECTED) | Some(nix::libc::EBADMSG) => {
            format!("the kernel refuses the new kernel's signature ({e})")
        }
        Some(nix::libc::EPERM) => format!("the kernel does not allow kexec here (lockdown, or kexec disabled: {e})"),
        _ => format!("kexec_file_load: {e}"),
    })
}

/// Forgets a loaded kernel (an upgrade that stopped).
fn unload() {
    // SAFETY: the unload form takes no file descriptors and no command line.
    let r = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_kexec_file_load,
            -1,
            -1,
            0 as nix::libc::c_ulong,
            std::ptr::null::<nix::libc::c_char>(),
            nix::libc::KEXEC_FILE_UNLOAD as nix::libc::c_ulong,
        )
    };
    if r != 0 {
        warn!("could not unload the upgrade's kernel: {}", std::io::Error::last_os_error());
    }
}
