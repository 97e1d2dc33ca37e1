//! QEMU's migration TLS as blades set it up, between two QEMUs on this host: a stream between
//! the right blades completes; a destination presenting a certificate the cluster CA did not
//! sign, or one naming another blade, and a source that is not the blade the destination
//! expects, all fail at the handshake, with the guest still running on the source.

use bladevisor_lab::pair::{creds, migrate, random_ram, Ends};
use bladevisor_lab::{lab_pki, test_guest, work_dir};

#[test]
fn a_stream_goes_only_between_the_blades_that_agreed_on_it() {
    let dir = work_dir("migration-tls");
    let (disk, ram) = (test_guest(&dir), random_ram(&dir, 32));
    let ca = &lab_pki().ca;
    let other = bladevisor::tls::pki::new_ca("mallory").unwrap();
    let blade1 = creds(&dir, "blade1", ca, "blade1");
    let ends = |src_dir, dst_dir, dst_expects: &str| Ends {
        src_dir,
        dst_dir,
        src_expects: "blade2".into(),
        dst_expects: dst_expects.into(),
    };
    let ok = migrate(&dir, &disk, &ram, 32, Some(&ends(blade1.clone(), creds(&dir, "blade2", ca, "blade2"), "blade1")));
    assert!(ok.is_ok(), "blade1 to blade2 over TLS: {ok:?}");

    let cases = [
        ("a destination whose certificate another CA signed", creds(&dir, "forged2", &other, "blade2"), "blade1"),
        ("a destination whose certificate names blade3", creds(&dir, "blade3", ca, "blade3"), "blade1"),
        ("a destination that expects blade4, not blade1", creds(&dir, "blade2b", ca, "blade2"), "blade4"),
    ];
    for (what, dst_dir, expects) in cases {
        match migrate(&dir, &disk, &ram, 32, Some(&ends(blade1.clone(), dst_dir, expects))) {
            Ok(f) => panic!("{what}: the stream went through ({f:?})"),
            Err((why, source)) => {
                println!("{what}: refused ({why}); the source is {source}");
                assert_eq!(source, "running", "{what}: the guest keeps running on the source ({why})");
            }
        }
    }
}
