//! The cluster's certificates, made by `bladevisor credentials`: a CA (kept offline by the
//! operator: its key signs blades), and per blade a certificate naming it, valid as both server
//! and client (QEMU's migration TLS checks both usages). ECDSA P-256.

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

/// A certificate and its key, in PEM.
pub struct Issued {
    pub cert: String,
    pub key: String,
}

/// How long a CA is valid: ten years.
pub const CA_DAYS: i64 = 3650;
/// How long a blade's certificate is valid: about two years (rotate before).
pub const BLADE_DAYS: i64 = 825;

fn dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

/// Valid from a day ago (blades' clocks drift before time sync) for `days`.
fn validity(p: &mut CertificateParams, days: i64) {
    let now = OffsetDateTime::now_utc();
    p.not_before = now - Duration::days(1);
    p.not_after = now + Duration::days(days);
}

/// A new cluster CA named `cluster`.
pub fn new_ca(cluster: &str) -> Result<Issued, String> {
    let mut p = CertificateParams::default();
    p.distinguished_name = dn(&format!("bladevisor cluster {cluster} CA"));
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    validity(&mut p, CA_DAYS);
    let key = KeyPair::generate().map_err(|e| format!("cannot make a key: {e}"))?;
    let cert = p.self_signed(&key).map_err(|e| format!("cannot sign the CA: {e}"))?;
    Ok(Issued { cert: cert.pem(), key: key.serialize_pem() })
}

/// A certificate for blade `node` (its subject `CN=<node>`, names `DNS:<node>` and each of
/// `ips`), signed by the CA.
pub fn issue(ca_cert: &str, ca_key: &str, node: &str, ips: &[IpAddr], days: i64) -> Result<Issued, String> {
    let ca_key = KeyPair::from_pem(ca_key).map_err(|e| format!("the CA key: {e}"))?;
    let ca_params = CertificateParams::from_ca_cert_pem(ca_cert).map_err(|e| format!("the CA certificate: {e}"))?;
    // The issuer as the CA certificate names it, signed with its key: the signature on the
    // blade's certificate is all that is used of it.
    let ca = ca_params.self_signed(&ca_key).map_err(|e| format!("the CA: {e}"))?;
    let mut p = CertificateParams::new(vec![node.to_string()]).map_err(|e| format!("{node:?}: {e}"))?;
    p.subject_alt_names.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
    p.distinguished_name = dn(node);
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    p.use_authority_key_identifier_extension = true;
    validity(&mut p, days);
    let key = KeyPair::generate().map_err(|e| format!("cannot make a key: {e}"))?;
    let cert = p.signed_by(&key, &ca, &ca_key).map_err(|e| format!("cannot sign {node}'s certificate: {e}"))?;
    Ok(Issued { cert: cert.pem(), key: key.serialize_pem() })
}
