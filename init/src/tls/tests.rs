use super::pki::{issue, new_ca, BLADE_DAYS};
use super::*;

/// A CA and a blade's credentials signed by it.
pub fn creds(ca: &pki::Issued, node: &str) -> Pem {
    let b = issue(&ca.cert, &ca.key, node, &["192.0.2.7".parse().unwrap()], BLADE_DAYS).unwrap();
    Pem { ca: ca.cert.clone(), cert: b.cert, key: b.key }
}

#[test]
fn a_blade_certificate_names_its_blade_and_addresses_and_is_checked_at_load() {
    let ca = new_ca("lab").unwrap();
    let pem = creds(&ca, "blade1");
    let tls = ClusterTls::new("creds.toml", "blade1", pem.clone()).unwrap();
    let leaf = &certs_from_pem("x", &pem.cert).unwrap()[0];
    assert!(names(leaf, "blade1") && names(leaf, "192.0.2.7"));
    assert!(!names(leaf, "blade2") && !names(leaf, "192.0.2.8"));
    assert_eq!(tls.node, "blade1");
    assert!(!format!("{:?}", tls.pem).contains("PRIVATE"), "the key is never printed");

    let e = ClusterTls::new("creds.toml", "blade2", pem.clone()).unwrap_err();
    assert!(e.contains("creds.toml: cert does not name this blade (blade2)"), "{e}");
    let other = new_ca("other").unwrap();
    let foreign = Pem { ca: other.cert.clone(), ..pem.clone() };
    let e = ClusterTls::new("creds.toml", "blade1", foreign).unwrap_err();
    assert_eq!(e, "creds.toml: cert: not signed by the cluster CA given with it");
    let wrong_key = Pem { key: creds(&ca, "blade1").key, ..pem.clone() };
    let e = ClusterTls::new("creds.toml", "blade1", wrong_key).unwrap_err();
    assert!(e.starts_with("creds.toml: cert and key:"), "{e}");
}

#[test]
fn bad_pem_is_named_and_the_key_never_quoted() {
    let e = certs_from_pem("creds.toml: ca", "hello").unwrap_err();
    assert_eq!(e, "creds.toml: ca: no certificate (-----BEGIN CERTIFICATE-----) in it");
    let e =
        key_from_pem("creds.toml: key", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").unwrap_err();
    assert_eq!(e, "creds.toml: key: no private key (-----BEGIN PRIVATE KEY-----) in it");
    let e = operator_client("ca.pem", "").unwrap_err();
    assert!(e.starts_with("ca.pem: no certificate"), "{e}");
}

#[test]
fn qemu_gets_the_blade_certificate_as_both_ends() {
    let ca = new_ca("lab").unwrap();
    let pem = creds(&ca, "blade1");
    let files = qemu_files(&pem);
    let names: Vec<&str> = files.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        names,
        ["dh-params.pem", "ca-cert.pem", "server-cert.pem", "server-key.pem", "client-cert.pem", "client-key.pem"]
    );
    assert_eq!(files[2].1, files[4].1);
    assert!(files[3].1.contains("PRIVATE KEY"));
}

#[test]
fn an_expiring_certificate_is_a_warning_and_an_expired_one_a_fault() {
    let ca = new_ca("lab").unwrap();
    let tls = ClusterTls::new("c", "blade1", creds(&ca, "blade1")).unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let left = tls.not_after.unwrap() - now;
    assert!((BLADE_DAYS - 1) * 86400 < left && left <= BLADE_DAYS * 86400, "{left}");
    assert_eq!(expiry("blade1", now + 90 * 86400, now), None);
    let (fault, w) = expiry("blade1", now + 10 * 86400 + 5, now).unwrap();
    assert!(!fault && w.starts_with("TLS: this blade's certificate expires in 10 days"), "{w}");
    assert!(w.contains("bladevisor credentials issue <dir> blade1"), "{w}");
    let (fault, w) = expiry("blade1", now - 3 * 86400, now).unwrap();
    assert!(fault && w.contains("expired 3 days ago"), "{w}");
}
