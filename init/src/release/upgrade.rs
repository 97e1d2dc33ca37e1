//! An in-place upgrade of one blade, as decisions: which files of a served release to fetch and
//! what they must be, the kernel command line the next release boots with, whether the blade
//! may boot it once the evacuation is over, and what the new boot does about the drain. The
//! fetching, the `kexec_file_load` and the reboot are the init's edge (`pid1::upgrade`).
//!
//! What a crash leaves behind, at each step:
//! - fetching and verifying: nothing (the files live in memory, the blade is untouched);
//! - evacuating: the blade is drained (its peers remember it) and the guests that moved run
//!   elsewhere; a kernel loaded for kexec is forgotten by a reboot; nothing is lost;
//! - booting the new kernel: as a reboot; a kernel that does not come up leaves the blade to
//!   its watchdog or the operator, whose cold reset boots the release PXE serves, drained.

use serde::{Deserialize, Serialize};

use super::{Artifact, Manifest};
use crate::migration::Evacuation;

/// The kernel and initrd a release folder serves, by the names `image/build` gives them.
pub const KERNEL: &str = "bladevisor.vmlinuz";
pub const INITRD: &str = "bladevisor.initrd";
/// The manifest beside them.
pub const MANIFEST: &str = "bladevisor.manifest";
/// The largest kernel and initrd a blade fetches (today's are 8 and 41 MiB).
pub const MAX_KERNEL_BYTES: u64 = 64 << 20;
pub const MAX_INITRD_BYTES: u64 = 512 << 20;
/// What must stay available besides the fetched files (they are held twice while loading).
pub const MEMORY_HEADROOM_MIB: u64 = 128;
/// The kernel's command line limit on x86 (`COMMAND_LINE_SIZE`), with its NUL.
pub const MAX_CMDLINE: usize = 2048;
/// The command line keys an upgrade sets for the next boot.
pub const AFTER_KEY: &str = "bladevisor.after-upgrade";
pub const FROM_KEY: &str = "bladevisor.upgraded-from";
pub const MOVED_KEY: &str = "bladevisor.upgrade-moved";
pub const PAUSE_KEY: &str = "bladevisor.upgrade-pause-ms";

/// What an upgraded boot knows of the upgrade that made it (from its command line).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upgraded {
    /// The release it left.
    pub from: Option<String>,
    /// The guests its evacuation moved, and the sum of their migrations' downtime.
    pub guests_moved: Option<usize>,
    pub pause_ms: Option<u64>,
}

/// What the evacuation before the kexec did, for the next boot to tell.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Moved {
    pub guests: usize,
    pub pause_ms: u64,
}

/// Where an upgrade stands, as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpgradeStatus {
    /// The release folder's URL.
    pub from_url: String,
    /// The release being installed, once its manifest is read.
    #[serde(default)]
    pub to: Option<String>,
    /// `fetching`, `evacuating`, `booting`; or over: `failed`, `current` (already on it).
    pub phase: String,
    /// What happens now, or why it failed.
    pub detail: String,
    /// Whether the new release undrains the blade once it is healthy.
    pub undrain: bool,
    /// Whether guests that cannot move are stopped rather than the upgrade refused.
    pub stop_guests: bool,
}

impl UpgradeStatus {
    pub fn running(&self) -> bool {
        !matches!(self.phase.as_str(), "failed" | "current")
    }
}

/// What to fetch for a release, checked before a byte of it is fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub version: String,
    pub kernel: (String, Artifact),
    pub initrd: (String, Artifact),
}

/// A release folder's URL: `http://` or `https://`, printable, without a query; its trailing
/// slashes are dropped.
pub fn base_url(url: &str) -> Result<String, String> {
    let shown = crate::config::error::shorten(url, 120);
    if url.len() > 1024 || url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(format!("{shown:?}: not a URL (control characters, spaces or over 1024 bytes)"));
    }
    if !(url.starts_with("http://") || url.starts_with("https://")) || url.contains(['?', '#']) {
        return Err(format!("{shown:?}: a release folder is an http:// or https:// URL without a query"));
    }
    Ok(url.trim_end_matches('/').to_string())
}

/// A version as `image/build` allows it: letters, digits and `. _ + ~ -`, at most 64.
pub fn valid_version(v: &str) -> bool {
    !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"._+~-".contains(&b))
}

/// The files to fetch from `base` for the release `m` describes, and what each must be.
pub fn plan(base: &str, m: &Manifest) -> Result<Plan, String> {
    if !valid_version(&m.version) {
        let shown = crate::config::error::shorten(&m.version, 80);
        return Err(format!("{base}/{MANIFEST}: version {shown:?} is not a release version"));
    }
    let artifact = |name: &str, max: u64| -> Result<(String, Artifact), String> {
        let a = m.artifacts.get(name).ok_or_else(|| format!("{base}/{MANIFEST} lists no {name}"))?;
        if a.sha256.len() != 64 || !a.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("{base}/{MANIFEST}: {name}'s sha256 is not 64 hex digits"));
        }
        if a.bytes == 0 || a.bytes > max {
            return Err(format!("{base}/{MANIFEST}: {name} is {} bytes; a blade takes 1 to {max}", a.bytes));
        }
        Ok((format!("{base}/{name}"), Artifact { sha256: a.sha256.to_ascii_lowercase(), bytes: a.bytes }))
    };
    Ok(Plan {
        version: m.version.clone(),
        kernel: artifact(KERNEL, MAX_KERNEL_BYTES)?,
        initrd: artifact(INITRD, MAX_INITRD_BYTES)?,
    })
}

impl Plan {
    /// Refused when the blade lacks the memory to hold both files twice (fetched, then loaded)
    /// and keep its headroom.
    pub fn fits(&self, available_mib: u64) -> Result<(), String> {
        let need = (self.kernel.1.bytes + self.initrd.1.bytes).div_ceil(1 << 20) * 2 + MEMORY_HEADROOM_MIB;
        if available_mib < need {
            return Err(format!(
                "release {} needs {need} MiB of memory to fetch and load, the blade has {available_mib} MiB available",
                self.version
            ));
        }
        Ok(())
    }
}

/// Whether fetched bytes are the artifact the manifest names.
pub fn check(url: &str, data: &[u8], want: &Artifact) -> Result<(), String> {
    if data.len() as u64 != want.bytes {
        return Err(format!("{url}: {} bytes, the manifest says {}", data.len(), want.bytes));
    }
    let got = crate::config::credentials::sha256_hex(data);
    if got != want.sha256 {
        return Err(format!("{url}: SHA-256 {got}, the manifest says {}: not the release it describes", want.sha256));
    }
    Ok(())
}

/// The command line the next release boots with: this boot's, without what the boot loader
/// added (`BOOT_IMAGE=`, `initrd=`) or an earlier upgrade set, with this upgrade's keys (and,
/// once the evacuation is over, what it moved).
pub fn next_cmdline(current: &str, from_version: &str, undrain: bool, moved: Option<Moved>) -> Result<String, String> {
    let mut words: Vec<String> = current
        .split_whitespace()
        .filter(|w| {
            let key = w.split_once('=').map_or(*w, |(k, _)| k);
            !["BOOT_IMAGE", "initrd", AFTER_KEY, FROM_KEY, MOVED_KEY, PAUSE_KEY].contains(&key)
        })
        .map(String::from)
        .collect();
    words.push(format!("{AFTER_KEY}={}", if undrain { "undrain" } else { "drained" }));
    if valid_version(from_version) {
        words.push(format!("{FROM_KEY}={from_version}"));
    }
    if let Some(m) = moved {
        words.push(format!("{MOVED_KEY}={}", m.guests));
        words.push(format!("{PAUSE_KEY}={}", m.pause_ms));
    }
    let line = words.join(" ");
    if line.len() >= MAX_CMDLINE {
        return Err(format!("the kernel command line would be {} bytes; the kernel takes {MAX_CMDLINE}", line.len()));
    }
    Ok(line)
}

/// What an upgraded boot was asked (its command line's [`AFTER_KEY`]): undrain once healthy.
pub fn undrain_asked(value: Option<&str>) -> bool {
    value == Some("undrain")
}

/// Once the evacuation is over: boot the new release, wait, or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Boot it; these guests, still here, stop first (the operator allowed it).
    Boot { stopping: Vec<String> },
    /// Guests that moved still hold their paused source here: wait for them to end.
    Wait(Vec<String>),
    /// Do not: why (the blade stays drained, the guests where they are).
    Refuse(String),
}

/// How long the paused copies of guests that moved may take to end before the shutdown ends
/// them (their destination confirmed: the copy here holds nothing).
pub const LEAVING_GRACE: std::time::Duration = std::time::Duration::from_secs(60);

/// Decides from the finished evacuation and the guests still holding a process here;
/// `waited`: how long since the evacuation ended.
pub fn after_evacuation(
    ev: &Evacuation,
    still_here: &[String],
    stop_guests: bool,
    waited: std::time::Duration,
) -> Next {
    let moved = |g: &String| ev.guests.iter().any(|i| &i.guest == g && i.moved == Some(true));
    let (leaving, staying): (Vec<String>, Vec<String>) = still_here.iter().cloned().partition(moved);
    if staying.is_empty() || stop_guests {
        if !leaving.is_empty() && waited < LEAVING_GRACE {
            return Next::Wait(leaving);
        }
        return Next::Boot { stopping: staying };
    }
    let why: Vec<String> = staying
        .iter()
        .map(|g| {
            let item = ev.guests.iter().find(|i| &i.guest == g);
            match item.and_then(|i| i.result.as_deref()) {
                Some(r) => format!("{g} ({r})"),
                None => format!("{g} (not part of the evacuation)"),
            }
        })
        .collect();
    Next::Refuse(format!(
        "guests still on this blade: {}; the blade stays drained on its release (retry, or upgrade with --stop-guests)",
        why.join("; ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::migration::EvacuationItem;

    fn manifest(version: &str) -> Manifest {
        let mut m = Manifest { version: version.into(), ..Default::default() };
        m.artifacts.insert(KERNEL.into(), Artifact { sha256: "AB".repeat(32), bytes: 8 << 20 });
        m.artifacts.insert(INITRD.into(), Artifact { sha256: "cd".repeat(32), bytes: 40 << 20 });
        m
    }

    #[test]
    fn a_release_folder_is_an_http_url_without_a_query() {
        assert_eq!(base_url("http://10.0.2.2:8000/rel/1.5/").unwrap(), "http://10.0.2.2:8000/rel/1.5");
        assert!(base_url("https://deploy/r").is_ok());
        for bad in ["ftp://x/r", "http://x/r?a=1", "http://x/r r", "http://x/\nr", "/srv/out"] {
            assert!(base_url(bad).is_err(), "{bad:?} accepted");
        }
        assert!(base_url(&format!("http://x/{}", "a".repeat(2000))).unwrap_err().contains("1024"));
    }

    #[test]
    fn the_plan_names_both_files_and_what_they_must_be() {
        let p = plan("http://h/r", &manifest("1.5")).unwrap();
        assert_eq!(p.version, "1.5");
        assert_eq!(p.kernel.0, "http://h/r/bladevisor.vmlinuz");
        assert_eq!(p.kernel.1.sha256, "ab".repeat(32), "hashes compare in lower case");
        assert_eq!(p.initrd.0, "http://h/r/bladevisor.initrd");
        assert_eq!(p.initrd.1.bytes, 40 << 20);
    }

    #[test]
    fn a_manifest_that_is_not_a_release_is_refused_before_fetching() {
        let e = plan("http://h/r", &manifest("1.5 rm -rf")).unwrap_err();
        assert!(e.contains("not a release version"), "{e}");
        let mut m = manifest("1.5");
        m.artifacts.remove(INITRD);
        assert!(plan("http://h/r", &m).unwrap_err().contains("lists no bladevisor.initrd"));
        let mut m = manifest("1.5");
        m.artifacts.get_mut(KERNEL).unwrap().sha256 = "xyz".into();
        assert!(plan("http://h/r", &m).unwrap_err().contains("64 hex digits"));
        let mut m = manifest("1.5");
        m.artifacts.get_mut(INITRD).unwrap().bytes = u64::MAX;
        assert!(plan("http://h/r", &m).unwrap_err().contains("a blade takes 1 to"));
    }

    #[test]
    fn a_release_is_fetched_only_with_memory_to_spare() {
        let p = plan("http://h/r", &manifest("1.5")).unwrap();
        // 48 MiB twice, and the headroom.
        assert!(p.fits(96 + MEMORY_HEADROOM_MIB).is_ok());
        let e = p.fits(200).unwrap_err();
        assert!(e.contains("needs 224 MiB") && e.contains("200 MiB available"), "{e}");
    }

    #[test]
    fn fetched_bytes_must_be_the_manifests() {
        let data = b"kernel";
        let other = Artifact { sha256: "0".repeat(64), bytes: 6 };
        // The digest is computed here, not trusted: only an exact match passes.
        let right = crate::config::credentials::sha256_hex(data);
        assert!(check("u", data, &Artifact { sha256: right, bytes: 6 }).is_ok());
        let e = check("http://h/r/bladevisor.initrd", data, &other).unwrap_err();
        assert!(e.contains("http://h/r/bladevisor.initrd") && e.contains("not the release"), "{e}");
        let e = check("u", b"kern", &other).unwrap_err();
        assert!(e.contains("4 bytes, the manifest says 6"), "{e}");
    }

    #[test]
    fn the_next_boot_keeps_the_blades_arguments_and_says_what_the_upgrade_asked() {
        let now = "BOOT_IMAGE=/vmlinuz initrd=bladevisor.initrd console=ttyS0 panic=-1 bladevisor.node=blade1 \
                   bladevisor.config=http://10.0.2.2:8000/cluster.toml bladevisor.after-upgrade=drained \
                   bladevisor.upgraded-from=1.3";
        let next = next_cmdline(now, "1.4", true, None).unwrap();
        assert_eq!(
            next,
            "console=ttyS0 panic=-1 bladevisor.node=blade1 bladevisor.config=http://10.0.2.2:8000/cluster.toml \
             bladevisor.after-upgrade=undrain bladevisor.upgraded-from=1.4"
        );
        let moved = Some(Moved { guests: 2, pause_ms: 71 });
        let again = next_cmdline(&format!("{next} bladevisor.upgrade-moved=9"), "1.5", false, moved).unwrap();
        assert_eq!(
            again,
            "console=ttyS0 panic=-1 bladevisor.node=blade1 bladevisor.config=http://10.0.2.2:8000/cluster.toml \
             bladevisor.after-upgrade=drained bladevisor.upgraded-from=1.5 bladevisor.upgrade-moved=2 \
             bladevisor.upgrade-pause-ms=71"
        );
        let next = next_cmdline("console=ttyS0", "not a version!", false, None).unwrap();
        assert_eq!(next, "console=ttyS0 bladevisor.after-upgrade=drained", "an odd version is left out");
        let long = format!("x={}", "a".repeat(MAX_CMDLINE));
        assert!(next_cmdline(&long, "1.4", false, None).unwrap_err().contains("command line"));
        assert!(undrain_asked(Some("undrain")) && !undrain_asked(Some("drained")) && !undrain_asked(None));
    }

    #[test]
    fn a_guest_left_behind_stops_the_upgrade_unless_the_operator_allowed_stopping_it() {
        let ev = Evacuation {
            done: true,
            guests: vec![
                EvacuationItem { guest: "web".into(), moved: Some(true), ..Default::default() },
                EvacuationItem {
                    guest: "db".into(),
                    moved: Some(false),
                    result: Some("no blade can take guest db: blade2: drained".into()),
                    ..Default::default()
                },
            ],
        };
        let now = std::time::Duration::ZERO;
        assert_eq!(after_evacuation(&ev, &[], false, now), Next::Boot { stopping: vec![] });
        let Next::Refuse(why) = after_evacuation(&ev, &["db".into()], false, now) else { panic!("booted") };
        assert!(
            why.contains("db (no blade can take guest db: blade2: drained)") && why.contains("--stop-guests"),
            "{why}"
        );
        let Next::Refuse(why) = after_evacuation(&ev, &["late".into()], false, now) else { panic!("booted") };
        assert!(why.contains("late (not part of the evacuation)"), "{why}");
        // A guest that moved holds its paused copy here a moment: waited for, within a grace.
        assert_eq!(after_evacuation(&ev, &["web".into()], false, now), Next::Wait(vec!["web".into()]));
        assert_eq!(after_evacuation(&ev, &["web".into()], false, LEAVING_GRACE), Next::Boot { stopping: vec![] });
        let Next::Refuse(_) = after_evacuation(&ev, &["web".into(), "db".into()], false, now) else { panic!() };
        assert_eq!(
            after_evacuation(&ev, &["db".into()], true, LEAVING_GRACE),
            Next::Boot { stopping: vec!["db".into()] }
        );
    }
}
