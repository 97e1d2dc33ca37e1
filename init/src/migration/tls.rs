//! Migration streams over QEMU's own TLS: a `tls-creds-x509` object reading the blade's
//! credentials from a folder the guest's QEMU may read, `verify-peer` on at both ends. The
//! source checks that the destination's certificate names the blade it meant to send to
//! (`tls-hostname`); the destination lets in only the certificate of the blade that asked it to
//! listen (`tls-authz`, an `authz-simple` object with that blade's subject). Guest memory never
//! crosses the network in clear, and a stream from anyone else is dropped at its handshake.

use std::path::PathBuf;

use serde_json::json;

use super::Vm;

/// QEMU's TLS for one stream: the folder its credentials are in and the blade at the other end.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamTls {
    pub dir: PathBuf,
    pub peer: String,
}

/// The object ids this code owns in a guest's QEMU.
pub const CREDS_ID: &str = "bladevisor-migration-tls";
pub const AUTHZ_ID: &str = "bladevisor-migration-authz";

fn creds(tls: &StreamTls, endpoint: &str) -> serde_json::Value {
    json!({
        "qom-type": "tls-creds-x509",
        "id": CREDS_ID,
        "dir": tls.dir.display().to_string(),
        "endpoint": endpoint,
        "verify-peer": true,
    })
}

/// The source's side, before `migrate`: the credentials loaded afresh (an earlier attempt's
/// object is replaced, so rotated files are read), the destination's name required.
pub fn source(vm: &mut dyn Vm, tls: &StreamTls) -> Result<(), String> {
    // Absent on a first attempt: that error is expected and says nothing.
    let _ = vm.execute("object-del", json!({ "id": CREDS_ID }));
    vm.execute("object-add", creds(tls, "client"))
        .map_err(|e| format!("loading the migration TLS credentials: {e}"))?;
    vm.execute("migrate-set-parameters", json!({ "tls-creds": CREDS_ID, "tls-hostname": tls.peer })).map(|_| ())
}

/// The destination's side, before `migrate-incoming` (a fresh QEMU: no earlier objects): only
/// the source blade's certificate is let in.
pub fn destination(vm: &mut dyn Vm, tls: &StreamTls) -> Result<(), String> {
    vm.execute("object-add", creds(tls, "server"))
        .map_err(|e| format!("loading the migration TLS credentials: {e}"))?;
    vm.execute("object-add", json!({ "qom-type": "authz-simple", "id": AUTHZ_ID, "identity": subject(&tls.peer) }))?;
    vm.execute("migrate-set-parameters", json!({ "tls-creds": CREDS_ID, "tls-authz": AUTHZ_ID })).map(|_| ())
}

/// A blade certificate's subject as GnuTLS writes it (`bladevisor credentials` issues `CN=<node>`).
pub fn subject(node: &str) -> String {
    format!("CN={node}")
}

/// Writes the credentials QEMU reads into `dir` (made, or emptied of earlier files), readable by
/// the guest's QEMU alone (`uid`), not by other guests.
pub fn write_dir(dir: &std::path::Path, uid: u32, pem: &crate::tls::Pem) -> Result<(), String> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let err = |p: &std::path::Path, e: std::io::Error| format!("{}: {e}", p.display());
    std::fs::create_dir_all(dir).map_err(|e| err(dir, e))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|e| err(dir, e))?;
    std::os::unix::fs::chown(dir, Some(uid), Some(uid)).map_err(|e| err(dir, e))?;
    for (name, text) in crate::tls::qemu_files(pem) {
        let p = dir.join(name);
        let _ = std::fs::remove_file(&p);
        let mut f =
            std::fs::OpenOptions::new().write(true).create_new(true).mode(0o400).open(&p).map_err(|e| err(&p, e))?;
        std::io::Write::write_all(&mut f, text.as_bytes()).map_err(|e| err(&p, e))?;
        std::os::unix::fs::fchown(&f, Some(uid), Some(uid)).map_err(|e| err(&p, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::migration::testing::Transcript;

    fn tls() -> StreamTls {
        StreamTls { dir: "/run/bladevisor/guests/web/tls".into(), peer: "blade2".into() }
    }

    #[test]
    fn the_source_requires_the_destination_blades_name() {
        let mut vm = Transcript::new(vec![
            ("object-del", Err("QMP object-del: GenericError: object 'x' not found".into())),
            ("object-add", Ok(json!({}))),
            ("migrate-set-parameters", Ok(json!({}))),
        ]);
        assert_eq!(source(&mut vm, &tls()), Ok(()));
        assert_eq!(vm.seen[1].1["endpoint"], "client");
        assert_eq!(vm.seen[1].1["verify-peer"], true);
        assert_eq!(vm.seen[1].1["dir"], "/run/bladevisor/guests/web/tls");
        assert_eq!(vm.seen[2].1, json!({"tls-creds": CREDS_ID, "tls-hostname": "blade2"}));
    }

    #[test]
    fn the_destination_lets_in_only_the_source_blade() {
        let mut vm = Transcript::new(vec![
            ("object-add", Ok(json!({}))),
            ("object-add", Ok(json!({}))),
            ("migrate-set-parameters", Ok(json!({}))),
        ]);
        assert_eq!(destination(&mut vm, &tls()), Ok(()));
        assert_eq!(vm.seen[0].1["endpoint"], "server");
        assert_eq!(vm.seen[1].1, json!({"qom-type": "authz-simple", "id": AUTHZ_ID, "identity": "CN=blade2"}));
        assert_eq!(vm.seen[2].1, json!({"tls-creds": CREDS_ID, "tls-authz": AUTHZ_ID}));
        let mut bad = Transcript::new(vec![(
            "object-add",
            Err("QMP object-add: GenericError: Unable to access credentials /x/ca-cert.pem".into()),
        )]);
        let e = destination(&mut bad, &tls()).unwrap_err();
        assert!(e.starts_with("loading the migration TLS credentials: "), "{e}");
    }

    #[test]
    fn the_folder_holds_the_six_files_for_the_guests_qemu_only() {
        let d = tempfile::tempdir().unwrap();
        let ca = crate::tls::pki::new_ca("lab").unwrap();
        let b = crate::tls::pki::issue(&ca.cert, &ca.key, "blade1", &[], 30).unwrap();
        let pem = crate::tls::Pem { ca: ca.cert, cert: b.cert, key: b.key };
        let dir = d.path().join("tls");
        let me = nix::unistd::getuid().as_raw();
        write_dir(&dir, me, &pem).unwrap();
        write_dir(&dir, me, &pem).expect("again, over the earlier files");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        let key = dir.join("server-key.pem");
        assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o400);
        assert_eq!(std::fs::read_to_string(key).unwrap(), pem.key);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 6);
    }
}
