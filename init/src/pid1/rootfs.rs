//! The compressed root: the first thing PID 1 does on a blade.
//!
//! The initrd holds a small initramfs: this binary and the C library it runs on, the three kernel
//! modules below, and the image's root filesystem as one compressed read-only file
//! (`/bladevisor/root.squashfs`). PID 1 starts there, attaches that file to a loop device, mounts
//! it read-only under a tmpfs overlay (what the blade writes lives in the tmpfs), moves `/dev`
//! and `/proc` across, deletes the initramfs's own files (the squashfs file stays in RAM while the
//! loop device holds it open: that is the image's cost), makes the overlay the root and executes
//! the image's `/usr/sbin/init`, which is this binary again, now on the real root.
//!
//! RAM then holds the compressed image and the pages actually read from it (page cache, which the
//! kernel may drop and read again), instead of every file unpacked.
//!
//! A crash or power loss in the middle leaves nothing behind: all of it is in RAM. A failure
//! (a module or the image missing or corrupt) is logged and PID 1 goes on in the initramfs, a
//! blade that is up, degraded and says why, as with any other boot failure.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};
use tracing::info;

/// Where the initramfs keeps the root image and the modules that mount it.
pub const IMAGE: &str = "bladevisor/root.squashfs";
pub const MODULES: &str = "bladevisor/modules";
/// Mount points in the initramfs: the image, the writable tmpfs, the overlay of both.
const LOWER: &str = "/.lower";
const RW: &str = "/.rw";
const ROOT: &str = "/.root";
/// Mounted in the initramfs and moved to the new root.
const MOVED: [&str; 2] = ["/proc", "/dev"];
/// The image's init, executed on the new root.
const INIT: &str = "/usr/sbin/init";

const LOOP_CTL_GET_FREE: nix::libc::c_ulong = 0x4C82;
const LOOP_SET_FD: nix::libc::c_ulong = 0x4C00;

/// The compressed root image, when `root` is an initramfs that has one.
pub fn image(root: &Path) -> Option<PathBuf> {
    let p = root.join(IMAGE);
    p.is_file().then_some(p)
}

/// The overlay's options: the image below, the tmpfs's folders above.
pub fn overlay_options(lower: &str, rw: &str) -> String {
    format!("lowerdir={lower},upperdir={rw}/upper,workdir={rw}/work")
}

/// The modules to load, in name order (loop, overlay, squashfs: none depends on another).
pub fn modules(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let rd = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut v: Vec<PathBuf> =
        rd.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "ko")).collect();
    v.sort();
    Ok(v)
}

/// Deletes everything under `dir` that lives on the same filesystem as `dir` (what switch_root
/// does to the initramfs): mount points and what is under them are left alone. Returns the bytes
/// freed.
pub fn clear(dir: &Path) -> u64 {
    let Ok(dev) = std::fs::symlink_metadata(dir).map(|m| m.dev()) else { return 0 };
    clear_on(dir, dev)
}

fn clear_on(dir: &Path, dev: u64) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else { return 0 };
    let mut freed = 0;
    for e in rd.filter_map(|e| e.ok()) {
        let p = e.path();
        let Ok(m) = std::fs::symlink_metadata(&p) else { continue };
        if m.dev() != dev {
            continue;
        }
        if m.is_dir() {
            freed += clear_on(&p, dev);
            let _ = std::fs::remove_dir(&p);
        } else if std::fs::remove_file(&p).is_ok() {
            freed += m.len();
        }
    }
    freed
}

/// Mounts the image and becomes its init: returns only on failure, with the reason.
pub fn enter(image: &Path) -> String {
    match switch(image) {
        Ok(never) => match never {},
        Err(e) => format!("the compressed root {}: {e}; running from the initramfs", image.display()),
    }
}

fn step<T, E: std::fmt::Display>(what: &str, r: Result<T, E>) -> Result<T, String> {
    r.map_err(|e| format!("{what}: {e}"))
}

fn switch(image: &Path) -> Result<std::convert::Infallible, String> {
    let t0 = std::time::Instant::now();
    // The two early mounts the switch needs, as PID 1 mounts them; moved to the new root below,
    // so the image's init finds them mounted.
    for m in super::mounts::EARLY_MOUNTS.iter().filter(|m| MOVED.contains(&m.target)) {
        super::mounts::do_mount(m)?;
    }
    for m in modules(Path::new("/").join(MODULES).as_path())? {
        load_module(&m)?;
    }
    let dev = attach_loop(image)?;
    for d in [LOWER, RW, ROOT] {
        step(&format!("mkdir {d}"), std::fs::create_dir_all(d))?;
    }
    step("mount the image", mount(Some(dev.as_path()), LOWER, Some("squashfs"), MsFlags::MS_RDONLY, None::<&str>))?;
    step("mount the tmpfs", mount(Some("tmpfs"), RW, Some("tmpfs"), MsFlags::empty(), Some("mode=0755")))?;
    for d in ["upper", "work"] {
        step(&format!("mkdir {RW}/{d}"), std::fs::create_dir_all(Path::new(RW).join(d)))?;
    }
    let opts = overlay_options(LOWER, RW);
    step("mount the overlay", mount(Some("overlay"), ROOT, Some("overlay"), MsFlags::empty(), Some(opts.as_str())))?;
    for d in MOVED {
        let to = format!("{ROOT}{d}");
        step(&format!("move {d}"), mount(Some(d), to.as_str(), None::<&str>, MsFlags::MS_MOVE, None::<&str>))?;
    }
    let image_bytes = std::fs::metadata(image).map(|m| m.len()).unwrap_or(0);
    // The image's own bytes are not freed: the loop device holds the file open.
    let freed = clear(Path::new("/")).saturating_sub(image_bytes);
    let image_mib = image_bytes / (1024 * 1024);
    info!(
        image = %image.display(),
        image_mib,
        freed_kib = freed / 1024,
        ms = t0.elapsed().as_millis() as u64,
        "root: the compressed image mounted under a tmpfs overlay; starting its init"
    );
    step("chdir", std::env::set_current_dir(ROOT))?;
    step("move the overlay to /", mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>))?;
    step("chroot", nix::unistd::chroot("."))?;
    step("chdir /", std::env::set_current_dir("/"))?;
    let init = CString::new(INIT).unwrap_or_default();
    Err(format!("exec {INIT}: {}", nix::unistd::execv(&init, std::slice::from_ref(&init)).unwrap_err()))
}

fn load_module(path: &Path) -> Result<(), String> {
    let f = step(&format!("{}", path.display()), File::open(path))?;
    let params = CString::default();
    match nix::kmod::finit_module(&f, &params, nix::kmod::ModuleInitFlags::empty()) {
        Ok(()) | Err(nix::errno::Errno::EEXIST) => Ok(()),
        Err(e) => Err(format!("loading {}: {e}", path.display())),
    }
}

/// Attaches the image read-only to a free loop device; returns the device's path.
fn attach_loop(image: &Path) -> Result<PathBuf, String> {
    let ctl = step("/dev/loop-control", OpenOptions::new().read(true).write(true).open("/dev/loop-control"))?;
    // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number or -1.
    let n = unsafe { nix::libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE as _) };
    if n < 0 {
        return Err(format!("no free loop device: {}", std::io::Error::last_os_error()));
    }
    let dev = PathBuf::from(format!("/dev/loop{n}"));
    let lo = step(&dev.display().to_string(), File::open(&dev))?;
    let img = step(&image.display().to_string(), File::open(image))?;
    // SAFETY: LOOP_SET_FD takes the backing file's descriptor as an integer. Both files are ours
    // and open; opened read-only, the loop device is read-only.
    let r = unsafe { nix::libc::ioctl(lo.as_raw_fd(), LOOP_SET_FD as _, img.as_raw_fd() as nix::libc::c_ulong) };
    if r < 0 {
        return Err(format!("{}: attaching the image: {}", dev.display(), std::io::Error::last_os_error()));
    }
    Ok(dev)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_overlay_puts_the_tmpfs_over_the_image() {
        assert_eq!(overlay_options("/.lower", "/.rw"), "lowerdir=/.lower,upperdir=/.rw/upper,workdir=/.rw/work");
    }

    #[test]
    fn only_an_initramfs_with_the_image_switches() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(image(d.path()), None);
        std::fs::create_dir_all(d.path().join("bladevisor")).unwrap();
        std::fs::write(d.path().join(IMAGE), b"hsqs").unwrap();
        assert_eq!(image(d.path()), Some(d.path().join(IMAGE)));
    }

    #[test]
    fn modules_are_the_ko_files_in_name_order() {
        let d = tempfile::tempdir().unwrap();
        for f in ["squashfs.ko", "loop.ko", "overlay.ko", "README"] {
            std::fs::write(d.path().join(f), b"").unwrap();
        }
        let names: Vec<String> =
            modules(d.path()).unwrap().iter().map(|p| p.file_name().unwrap().to_string_lossy().into()).collect();
        assert_eq!(names, ["loop.ko", "overlay.ko", "squashfs.ko"]);
        assert!(modules(&d.path().join("none")).unwrap_err().contains("none"));
    }

    #[test]
    fn clearing_the_initramfs_deletes_its_files_and_counts_them() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        std::fs::create_dir_all(root.join("usr/sbin")).unwrap();
        std::fs::create_dir_all(root.join("bladevisor/modules")).unwrap();
        std::fs::write(root.join("usr/sbin/bladevisor"), vec![0u8; 3000]).unwrap();
        std::fs::write(root.join("bladevisor/root.squashfs"), vec![0u8; 5000]).unwrap();
        std::os::unix::fs::symlink("usr/sbin/bladevisor", root.join("init")).unwrap();
        std::fs::create_dir_all(root.join(".root")).unwrap();
        let freed = clear(root);
        assert!(freed >= 8000, "{freed}");
        let left: Vec<_> = std::fs::read_dir(root).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
    }
}
