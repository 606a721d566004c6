//! TLS material shared by the ETSI 014 client (the engine, after the
//! privilege drop) and the simulated KMEs (`qkdsim`): PEM bytes to rustls
//! client and server configs, and the subject CN of a peer certificate.
//!
//! Everything here takes BYTES, never paths: the engine runs chrooted and
//! gets its CA, certificate and key from the parent, which read the files
//! before the drop. Only the `ring` provider is used (aws-lc-rs does not
//! build well on OpenBSD); TLS 1.2 and 1.3 only.

use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::Arc;
use zeroize::Zeroizing;

/// A certificate, key or CA that cannot be used. The text names what was
/// wrong, never the key bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsError(pub String);

impl std::fmt::Display for TlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsError {}

fn err(what: impl Into<String>) -> TlsError {
    TlsError(what.into())
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Every certificate in a PEM blob (a chain: leaf first). At least one.
pub fn certs_from_pem(what: &str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(format!("{what}: bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(err(format!("{what}: no CERTIFICATE in PEM")));
    }
    Ok(certs)
}

/// The private key of a PEM blob (PKCS#8, PKCS#1 or SEC1). The error text
/// comes from the PEM parser's kind, never from the bytes.
pub fn key_from_pem(
    what: &str,
    pem: &Zeroizing<Vec<u8>>,
) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => err(format!("{what}: no PRIVATE KEY in PEM")),
        _ => err(format!("{what}: bad private key PEM")),
    })
}

/// A root store holding every certificate of the CA PEM.
pub fn roots_from_pem(pem: &[u8]) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in certs_from_pem("ca", pem)? {
        roots
            .add(c)
            .map_err(|e| err(format!("ca: unusable CA certificate: {e}")))?;
    }
    Ok(roots)
}

/// Client side (the SAE): server checked against `ca_pem` and the name the
/// caller gives at connect time; our certificate offered for mutual TLS.
pub fn client_config(
    ca_pem: &[u8],
    cert_pem: &[u8],
    key_pem: &Zeroizing<Vec<u8>>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = roots_from_pem(ca_pem)?;
    let certs = certs_from_pem("cert", cert_pem)?;
    let key = key_from_pem("key", key_pem)?;
    let cfg = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| err(format!("tls: {e}")))?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .map_err(|e| err(format!("cert/key: {e}")))?;
    Ok(Arc::new(cfg))
}

/// Server side (a simulated KME): a client certificate signed by `ca_pem`
/// is REQUIRED (mutual TLS, ETSI 014 §4).
pub fn server_config(
    ca_pem: &[u8],
    cert_pem: &[u8],
    key_pem: &Zeroizing<Vec<u8>>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let roots = Arc::new(roots_from_pem(ca_pem)?);
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider())
        .build()
        .map_err(|e| err(format!("ca: {e}")))?;
    let certs = certs_from_pem("cert", cert_pem)?;
    let key = key_from_pem("key", key_pem)?;
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| err(format!("tls: {e}")))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| err(format!("cert/key: {e}")))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// The subject commonName of a DER certificate, if it has exactly one
/// (UTF8String, PrintableString or IA5String). The certificate has already
/// been verified by rustls; this only reads its subject.
pub fn subject_common_name(cert: &[u8]) -> Option<String> {
    let (_, certificate, _) = der_tlv(cert).filter(|t| t.0 == 0x30)?;
    let (_, mut tbs, _) = der_tlv(certificate).filter(|t| t.0 == 0x30)?;
    // [0] version (optional), serial, signature algorithm, issuer, validity.
    if tbs.first() == Some(&0xa0) {
        tbs = der_tlv(tbs)?.2;
    }
    for _ in 0..4 {
        tbs = der_tlv(tbs)?.2;
    }
    let (tag, mut subject, _) = der_tlv(tbs)?;
    if tag != 0x30 {
        return None;
    }
    let mut found = None;
    while !subject.is_empty() {
        let (set_tag, mut set, rest) = der_tlv(subject)?;
        subject = rest;
        if set_tag != 0x31 {
            return None;
        }
        while !set.is_empty() {
            let (_, atv, rest) = der_tlv(set).filter(|t| t.0 == 0x30)?;
            set = rest;
            let (oid_tag, oid, value) = der_tlv(atv)?;
            if oid_tag != 0x06 || oid != [0x55, 0x04, 0x03] {
                continue;
            }
            let (vtag, v, _) = der_tlv(value)?;
            if found.is_some() || !matches!(vtag, 0x0c | 0x13 | 0x16) {
                return None;
            }
            found = Some(String::from_utf8(v.to_vec()).ok()?);
        }
    }
    found
}

/// One DER tag-length-value: (tag, content, rest). Single-byte tags,
/// definite lengths up to 4 bytes.
fn der_tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *b.first()?;
    let first = *b.get(1)? as usize;
    let (len, hdr) = if first < 0x80 {
        (first, 2)
    } else {
        let n = first & 0x7f;
        if n == 0 || n > 4 {
            return None;
        }
        let bytes = b.get(2..2 + n)?;
        (
            bytes.iter().fold(0usize, |a, x| (a << 8) | *x as usize),
            2 + n,
        )
    };
    let end = hdr.checked_add(len)?;
    Some((tag, b.get(hdr..end)?, &b[end..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_with(cn: Option<&str>) -> Vec<u8> {
        let mut p = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name
            .push(rcgen::DnType::OrganizationName, "qkd");
        if let Some(cn) = cn {
            p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        }
        let k = rcgen::KeyPair::generate().unwrap();
        p.self_signed(&k).unwrap().der().to_vec()
    }

    #[test]
    fn reads_common_name() {
        assert_eq!(
            subject_common_name(&cert_with(Some("SAE-HQ"))).as_deref(),
            Some("SAE-HQ")
        );
        assert_eq!(subject_common_name(&cert_with(None)), None);
        assert_eq!(subject_common_name(b"\x30\x03\x30\x01"), None);
        assert_eq!(subject_common_name(&[]), None);
    }

    #[test]
    fn der_lengths_are_bounded() {
        assert_eq!(
            der_tlv(&[0x30, 0x82, 0x00, 0x01, 0x05]).map(|t| t.1.len()),
            Some(1)
        );
        assert!(der_tlv(&[0x30, 0x85, 1, 1, 1, 1, 1]).is_none());
        assert!(der_tlv(&[0x30, 0x05, 0x00]).is_none());
    }

    #[test]
    fn pem_errors_name_the_item_not_the_bytes() {
        let e = certs_from_pem("cert", b"nothing here").unwrap_err();
        assert_eq!(e.0, "cert: no CERTIFICATE in PEM");
        let key = Zeroizing::new(
            b"-----BEGIN PRIVATE KEY-----\nQUJD\n-----END PRIVATE KEY-----\n".to_vec(),
        );
        // A syntactically valid PEM with a junk key parses here; rustls then
        // refuses it when the config is built, without echoing it.
        let k = key_from_pem("key", &key);
        assert!(k.is_ok());
        let none = Zeroizing::new(b"xx".to_vec());
        assert_eq!(
            key_from_pem("key", &none).unwrap_err().0,
            "key: no PRIVATE KEY in PEM"
        );
    }
}
