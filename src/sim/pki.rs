//! Test PKI for qkdsim (`qkdsim pki`): a CA, server certificates for the
//! simulated KMEs and client certificates for SAEs (CN = SAE ID, which is
//! how a KME identifies its caller). Run by the `qkdsim` process (or tests);
//! writes only into the directory it is given, keys mode 0600, atomically.
//!
//! For demos and tests only: ECDSA P-256 keys, validity from rcgen's
//! defaults (1975–4096), no revocation.

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// Subject CN of the test CA; the same DN re-signs an existing CA key.
const CA_CN: &str = "qkdsim test CA";

/// One issued certificate and its key, PEM.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: Zeroizing<String>,
}

impl Issued {
    /// The key as the bytes `tls` and `KmeClient::new` take.
    pub fn key_bytes(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(self.key_pem.as_bytes().to_vec())
    }
}

/// A certificate authority that signs KME and SAE certificates.
pub struct Ca {
    cert: Certificate,
    key: KeyPair,
}

fn ca_params() -> Result<CertificateParams, String> {
    let mut p = CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
    p.distinguished_name.push(DnType::CommonName, CA_CN);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(p)
}

/// 1..=64 of `[A-Za-z0-9._-]`: safe as a file name and as a CN.
pub fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && !n.starts_with('.')
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

impl Ca {
    /// A fresh CA with a new key.
    pub fn new() -> Result<Ca, String> {
        let key = KeyPair::generate().map_err(|e| format!("CA key: {e}"))?;
        Ca::with_key(key)
    }

    /// The CA for an existing key: certificates it signs chain to the CA
    /// certificate made earlier from the same key (same DN, same key id).
    pub fn with_key(key: KeyPair) -> Result<Ca, String> {
        let cert = ca_params()?
            .self_signed(&key)
            .map_err(|e| format!("CA certificate: {e}"))?;
        Ok(Ca { cert, key })
    }

    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    pub fn key_pem(&self) -> Zeroizing<String> {
        Zeroizing::new(self.key.serialize_pem())
    }

    /// A KME server certificate: CN = name; SAN = localhost, 127.0.0.1,
    /// ::1, the name if it is a DNS name, and `extra` names/addresses.
    pub fn server(&self, name: &str, extra: &[String]) -> Result<Issued, String> {
        let mut sans = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
        if name.contains(|c: char| c.is_ascii_alphabetic()) && !name.contains('_') {
            sans.push(name.to_string());
        }
        sans.extend(extra.iter().cloned());
        sans.dedup();
        self.issue(name, sans, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// An SAE client certificate: CN = the SAE ID.
    pub fn client(&self, sae_id: &str) -> Result<Issued, String> {
        self.issue(sae_id, Vec::new(), ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn issue(
        &self,
        cn: &str,
        sans: Vec<String>,
        eku: ExtendedKeyUsagePurpose,
    ) -> Result<Issued, String> {
        let mut p = CertificateParams::new(sans).map_err(|e| format!("{cn}: bad name: {e}"))?;
        p.distinguished_name.push(DnType::CommonName, cn);
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![eku];
        p.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().map_err(|e| format!("{cn}: key: {e}"))?;
        let cert = p
            .signed_by(&key, &self.cert, &self.key)
            .map_err(|e| format!("{cn}: sign: {e}"))?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: Zeroizing::new(key.serialize_pem()),
        })
    }
}

/// `qkdsim pki`: in `dir`, reuses `ca.pem`/`ca.key` if the key exists
/// (else creates them), then writes `kme-NAME.{pem,key}` for each KME and
/// `sae-NAME.{pem,key}` for each SAE. Returns the files written.
pub fn create(
    dir: &Path,
    kmes: &[String],
    saes: &[String],
    hosts: &[String],
) -> Result<Vec<PathBuf>, String> {
    for n in kmes.iter().chain(saes) {
        if !valid_name(n) {
            return Err(format!("bad name {n:?}: use 1-64 of A-Z a-z 0-9 . _ -"));
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut written = Vec::new();
    let ca_key = dir.join("ca.key");
    let ca = if ca_key.exists() {
        let pem = Zeroizing::new(
            std::fs::read_to_string(&ca_key).map_err(|e| format!("{}: {e}", ca_key.display()))?,
        );
        let key = KeyPair::from_pem(&pem).map_err(|e| format!("{}: {e}", ca_key.display()))?;
        Ca::with_key(key)?
    } else {
        let ca = Ca::new()?;
        written.push(write_file(dir, "ca.key", ca.key_pem().as_bytes(), 0o600)?);
        written.push(write_file(dir, "ca.pem", ca.cert_pem().as_bytes(), 0o644)?);
        ca
    };
    for n in kmes {
        let c = ca.server(n, hosts)?;
        written.push(write_file(
            dir,
            &format!("kme-{n}.key"),
            c.key_pem.as_bytes(),
            0o600,
        )?);
        written.push(write_file(
            dir,
            &format!("kme-{n}.pem"),
            c.cert_pem.as_bytes(),
            0o644,
        )?);
    }
    for n in saes {
        let c = ca.client(n)?;
        written.push(write_file(
            dir,
            &format!("sae-{n}.key"),
            c.key_pem.as_bytes(),
            0o600,
        )?);
        written.push(write_file(
            dir,
            &format!("sae-{n}.pem"),
            c.cert_pem.as_bytes(),
            0o644,
        )?);
    }
    Ok(written)
}

/// One file of the PKI, written atomically with its final mode from the start.
fn write_file(dir: &Path, name: &str, data: &[u8], mode: u32) -> Result<PathBuf, String> {
    let path = dir.join(name);
    crate::file::write_atomic(&path, data, mode).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_name("SAE-HQ") && valid_name("kme.a_1"));
        assert!(!valid_name("") && !valid_name("../x") && !valid_name("a/b") && !valid_name(".a"));
    }

    #[test]
    fn client_cn_is_sae_id() {
        let ca = Ca::new().unwrap();
        let c = ca.client("SAE-DR").unwrap();
        let der = crate::tls::certs_from_pem("c", c.cert_pem.as_bytes()).unwrap();
        assert_eq!(
            crate::tls::subject_common_name(&der[0]).as_deref(),
            Some("SAE-DR")
        );
        // A re-made CA from the same key still anchors what it signs.
        let again = Ca::with_key(KeyPair::from_pem(&ca.key_pem()).unwrap()).unwrap();
        let s = again.server("kme-a", &[]).unwrap();
        assert!(
            crate::tls::server_config(
                ca.cert_pem().as_bytes(),
                s.cert_pem.as_bytes(),
                &s.key_bytes()
            )
            .is_ok()
        );
    }
}
