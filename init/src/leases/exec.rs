//! `bladevisor lease-exec`: how a guest's QEMU comes to hold its lease itself, the way libvirt's
//! sanlock driver does it. Started as root by PID 1 (in the guest's cgroup, with its files
//! already handed over), it registers this process with the sanlock daemon, acquires the
//! guest's lease for it (or, for a guest arriving by migration, only registers: the lease is
//! acquired for it at switchover), forbids further commands on that connection, drops to the
//! guest's user with no privileges left, and execs QEMU: the same process, so the lease is
//! QEMU's, and sanlock releases it when QEMU dies (the registered connection closes). Nothing
//! of QEMU runs before the lease is held.
//!
//! libsanlock is opened at run time (`libsanlock.so.1`, in the image with sanlock), so only
//! this command needs it.

use std::ffi::{c_char, c_int};

use libloading::{Library, Symbol};

/// sanlock.h: names are 48 bytes, paths 1024.
const NAME_LEN: usize = 48;
const PATH_LEN: usize = 1024;
/// sanlock_resource.h: no further commands on the registered connection.
const RESTRICT_ALL: u32 = 1;

#[repr(C)]
struct Disk {
    path: [c_char; PATH_LEN],
    offset: u64,
    pad1: u32,
    pad2: u32,
}

/// `struct sanlk_resource` with its one disk.
#[repr(C)]
struct Resource {
    lockspace_name: [c_char; NAME_LEN],
    name: [c_char; NAME_LEN],
    lver: u64,
    data64: u64,
    data32: u32,
    unused: u32,
    flags: u32,
    num_disks: u32,
    disk: Disk,
}

/// What to do, from the command line.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub uid: u32,
    pub gid: u32,
    /// `LOCKSPACE:NAME:PATH:OFFSET`.
    pub resource: String,
    /// Register only: the lease is acquired for this process later (a migration's switchover).
    pub register_only: bool,
    pub argv: Vec<String>,
}

fn fixed<const N: usize>(s: &str, what: &str) -> Result<[c_char; N], String> {
    if s.len() >= N || s.bytes().any(|b| b == 0) {
        return Err(format!("{what} {s:?} does not fit sanlock's {N} bytes"));
    }
    let mut out = [0 as c_char; N];
    for (o, b) in out.iter_mut().zip(s.bytes()) {
        *o = b as c_char;
    }
    Ok(out)
}

/// `LOCKSPACE:NAME:PATH:OFFSET` as sanlock's struct (no escapes: our names and paths have no ':').
fn resource(spec: &str) -> Result<Box<Resource>, String> {
    let parts: Vec<&str> = spec.split(':').collect();
    let [ls, name, path, offset] = parts.as_slice() else {
        return Err(format!("{spec:?} is not LOCKSPACE:NAME:PATH:OFFSET"));
    };
    let offset: u64 = offset.parse().map_err(|_| format!("{spec:?}: the offset is not a number"))?;
    Ok(Box::new(Resource {
        lockspace_name: fixed(ls, "lockspace")?,
        name: fixed(name, "lease name")?,
        lver: 0,
        data64: 0,
        data32: 0,
        unused: 0,
        flags: 0,
        num_disks: 1,
        disk: Disk { path: fixed(path, "path")?, offset, pad1: 0, pad2: 0 },
    }))
}

/// sanlock's negative return codes, for the operator.
fn why(rv: c_int) -> String {
    match -rv {
        243 => "another blade holds it (SANLK_ACQUIRE_IDLIVE)".into(),
        11 => "it is held (EAGAIN)".into(),
        2 => "sanlock is not running or the lockspace is not joined (ENOENT)".into(),
        111 => "sanlock is not running (ECONNREFUSED)".into(),
        n => format!("sanlock error {}", -n),
    }
}

/// Registers, acquires, restricts, drops privileges and execs; returns only on failure.
pub fn run(plan: &Plan) -> String {
    match prepare(plan) {
        Ok(()) => {}
        Err(e) => return e,
    }
    let Some(prog) = plan.argv.first() else { return "nothing to run".into() };
    let err = std::os::unix::process::CommandExt::exec(std::process::Command::new(prog).args(&plan.argv[1..]));
    format!("cannot run {prog}: {err}")
}

fn prepare(plan: &Plan) -> Result<(), String> {
    let res = resource(&plan.resource)?;
    // SAFETY: libsanlock's documented C API, called with the argument types of its header; the
    // library stays loaded (leaked) because the registered connection must outlive this call.
    unsafe {
        let lib = Library::new("libsanlock.so.1").map_err(|e| format!("cannot load libsanlock: {e}"))?;
        let lib: &'static Library = Box::leak(Box::new(lib));
        let register: Symbol<unsafe extern "C" fn() -> c_int> =
            lib.get(b"sanlock_register").map_err(|e| e.to_string())?;
        let acquire: Symbol<
            unsafe extern "C" fn(c_int, c_int, u32, c_int, *mut *mut Resource, *mut std::ffi::c_void) -> c_int,
        > = lib.get(b"sanlock_acquire").map_err(|e| e.to_string())?;
        let restrict: Symbol<unsafe extern "C" fn(c_int, u32) -> c_int> =
            lib.get(b"sanlock_restrict").map_err(|e| e.to_string())?;
        let sock = register();
        if sock < 0 {
            return Err(format!("cannot register with sanlock: {}", why(sock)));
        }
        if !plan.register_only {
            let mut one = [Box::into_raw(res)];
            let rv = acquire(sock, -1, 0, 1, one.as_mut_ptr(), std::ptr::null_mut());
            drop(Box::from_raw(one[0]));
            if rv < 0 {
                return Err(format!("cannot acquire the lease {}: {}", plan.resource, why(rv)));
            }
        }
        let rv = restrict(sock, RESTRICT_ALL);
        if rv < 0 {
            return Err(format!("cannot restrict the sanlock connection: {}", why(rv)));
        }
        // The registered connection must survive the exec: it is how sanlock knows QEMU lives.
        let flags = nix::libc::fcntl(sock, nix::libc::F_GETFD);
        if flags < 0 || nix::libc::fcntl(sock, nix::libc::F_SETFD, flags & !nix::libc::FD_CLOEXEC) < 0 {
            return Err(format!("cannot keep the sanlock connection: {}", std::io::Error::last_os_error()));
        }
        // Groups first, then the group, then the user: after setuid nothing can be dropped.
        if nix::libc::prctl(nix::libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0
            || nix::libc::setgroups(0, std::ptr::null()) < 0
            || nix::libc::setgid(plan.gid) < 0
            || nix::libc::setuid(plan.uid) < 0
        {
            return Err(format!("cannot drop to uid {}: {}", plan.uid, std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// The command line PID 1 gives a leased guest's service: this binary's `lease-exec`, then QEMU's.
pub fn wrap(exe: &str, uid: u32, gid: u32, resource: &str, register_only: bool, qemu: Vec<String>) -> Vec<String> {
    let mut a =
        vec![exe.to_string(), "lease-exec".into(), "--uid".into(), uid.to_string(), "--gid".into(), gid.to_string()];
    a.extend(["--resource".into(), resource.to_string()]);
    if register_only {
        a.push("--register-only".into());
    }
    a.push("--".into());
    a.extend(qemu);
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resource_string_becomes_sanlocks_struct() {
        let r = resource("lab:web:/dev/mapper/lab-leases:5242880").unwrap();
        assert_eq!((r.num_disks, r.disk.offset), (1, 5 << 20));
        assert_eq!(r.name[..3], [b'w' as c_char, b'e' as c_char, b'b' as c_char]);
        assert_eq!(r.name[3], 0);
        assert_eq!(std::mem::size_of::<Resource>(), 48 + 48 + 8 + 8 + 4 + 4 + 4 + 4 + 1024 + 8 + 8);
        assert!(resource("lab:web:/dev/x").err().unwrap().contains("LOCKSPACE:NAME:PATH:OFFSET"));
        assert!(resource(&format!("lab:{}:/p:0", "n".repeat(48))).err().unwrap().contains("48 bytes"));
    }

    #[test]
    fn a_leased_guest_runs_through_lease_exec_before_qemu() {
        let a = wrap("/usr/bin/bladevisor", 5, 6, "lab:web:/p:0", true, vec!["/usr/bin/qemu".into(), "-S".into()]);
        assert_eq!(
            a.join(" "),
            "/usr/bin/bladevisor lease-exec --uid 5 --gid 6 --resource lab:web:/p:0 --register-only -- /usr/bin/qemu -S"
        );
        // What it passes on is a resource lease-exec can read.
        assert!(resource("lab:web:/p:0").is_ok());
    }
}
