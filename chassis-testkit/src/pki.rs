//! A throwaway certificate authority: [`TestCa`] issues leaf certificates ([`Leaf`]) for TLS
//! and mTLS tests and for local runs, with the names, validity and key usages a test needs
//! (an expired certificate, a wrong host name, a SPIFFE-style URI identity).
//!
//! Keys are ECDSA P-256, generated in process with rcgen (fast even in debug builds, unlike
//! RSA). Certificates and keys come as PEM text and DER bytes, and can be written to files for
//! servers that load (and reload) them from disk.
//!
//! ```
//! let ca = chassis_testkit::TestCa::new("example CA");
//! let server = ca.leaf("localhost").ip("127.0.0.1".parse().unwrap()).issue();
//! let client = ca.leaf("orders").uri("spiffe://shop/orders").issue();
//! assert!(server.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
//! assert_ne!(server.cert_der(), client.cert_der());
//! ```

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};

/// Serial numbers: unique within the process, so two leaves for the same names differ.
static SERIAL: AtomicU64 = AtomicU64::new(1);

fn next_serial() -> SerialNumber {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    let n = SERIAL.fetch_add(1, Ordering::Relaxed);
    SerialNumber::from_slice(&[nanos.to_be_bytes(), n.to_be_bytes()].concat())
}

fn offset(at: SystemTime) -> time::OffsetDateTime {
    time::OffsetDateTime::from(at)
}

/// A self-signed certificate authority with an ECDSA P-256 key: issues [`Leaf`] certificates
/// through [`TestCa::leaf`].
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    cert_der: Vec<u8>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").finish_non_exhaustive()
    }
}

impl TestCa {
    /// A new CA whose subject common name is `name`, valid from a day ago for ten years.
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().expect("generating a P-256 key");
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.serial_number = Some(next_serial());
        let now = SystemTime::now();
        params.not_before = offset(now - Duration::from_secs(86_400));
        params.not_after = offset(now + Duration::from_secs(10 * 365 * 86_400));
        let cert = params.self_signed(&key).expect("self-signing the CA");
        Self {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            issuer: Issuer::new(params, key),
        }
    }

    /// The CA certificate as PEM: what a peer adds to its trusted roots.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate as DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// Writes the CA certificate (PEM) to `path` and returns the path.
    pub fn write_cert(&self, path: impl AsRef<Path>) -> PathBuf {
        let path = path.as_ref();
        std::fs::write(path, &self.cert_pem)
            .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        path.to_path_buf()
    }

    /// Starts a leaf certificate whose common name is `name`. `name` is also its first DNS name
    /// when it looks like a host name (contains no `:` or `/`); add others with
    /// [`LeafBuilder::dns`], [`LeafBuilder::ip`] and [`LeafBuilder::uri`].
    pub fn leaf(&self, name: &str) -> LeafBuilder<'_> {
        let now = SystemTime::now();
        LeafBuilder {
            ca: self,
            common_name: name.to_string(),
            sans: if name.contains([':', '/']) {
                Vec::new()
            } else {
                vec![SanType::DnsName(name.try_into().expect("a DNS name"))]
            },
            not_before: now - Duration::from_secs(3_600),
            not_after: now + Duration::from_secs(365 * 86_400),
            usages: vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        }
    }
}

/// Options of one leaf certificate; [`issue`](Self::issue) signs it.
#[derive(Debug)]
pub struct LeafBuilder<'a> {
    ca: &'a TestCa,
    common_name: String,
    sans: Vec<SanType>,
    not_before: SystemTime,
    not_after: SystemTime,
    usages: Vec<ExtendedKeyUsagePurpose>,
}

impl LeafBuilder<'_> {
    /// Adds a DNS subject alternative name.
    pub fn dns(mut self, name: &str) -> Self {
        self.sans
            .push(SanType::DnsName(name.try_into().expect("a DNS name")));
        self
    }

    /// Adds an IP address subject alternative name.
    pub fn ip(mut self, addr: IpAddr) -> Self {
        self.sans.push(SanType::IpAddress(addr));
        self
    }

    /// Adds a URI subject alternative name (a SPIFFE id such as `spiffe://shop/orders`).
    pub fn uri(mut self, uri: &str) -> Self {
        self.sans.push(SanType::URI(uri.try_into().expect("a URI")));
        self
    }

    /// Valid from `not_before` to `not_after` (default: from an hour ago for a year).
    pub fn validity(mut self, not_before: SystemTime, not_after: SystemTime) -> Self {
        self.not_before = not_before;
        self.not_after = not_after;
        self
    }

    /// Expired yesterday (valid for the month before).
    pub fn expired(self) -> Self {
        let now = SystemTime::now();
        self.validity(
            now - Duration::from_secs(31 * 86_400),
            now - Duration::from_secs(86_400),
        )
    }

    /// Valid only from tomorrow.
    pub fn not_yet_valid(self) -> Self {
        let now = SystemTime::now();
        self.validity(
            now + Duration::from_secs(86_400),
            now + Duration::from_secs(31 * 86_400),
        )
    }

    /// Only for servers (extended key usage serverAuth; default: server and client).
    pub fn server_only(mut self) -> Self {
        self.usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self
    }

    /// Only for clients (extended key usage clientAuth; default: server and client).
    pub fn client_only(mut self) -> Self {
        self.usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self
    }

    /// Generates the key and signs the certificate with the CA.
    pub fn issue(self) -> Leaf {
        let key = KeyPair::generate().expect("generating a P-256 key");
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, self.common_name);
        params.distinguished_name = dn;
        params.subject_alt_names = self.sans;
        params.serial_number = Some(next_serial());
        params.not_before = offset(self.not_before);
        params.not_after = offset(self.not_after);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = self.usages;
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.ca.issuer)
            .expect("signing the leaf");
        Leaf {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            key_pem: key.serialize_pem(),
            key_der: key.serialize_der(),
        }
    }
}

/// A leaf certificate and its private key (PKCS#8).
#[derive(Clone)]
pub struct Leaf {
    cert_pem: String,
    cert_der: Vec<u8>,
    key_pem: String,
    key_der: Vec<u8>,
}

impl std::fmt::Debug for Leaf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leaf").finish_non_exhaustive()
    }
}

impl Leaf {
    /// The certificate as PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The certificate as DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The private key as PKCS#8 PEM.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The private key as PKCS#8 DER.
    pub fn key_der(&self) -> &[u8] {
        &self.key_der
    }

    /// Writes `<dir>/<name>.pem` (the certificate) and `<dir>/<name>.key` (the key, mode 0600)
    /// and returns their paths.
    pub fn write(&self, dir: impl AsRef<Path>, name: &str) -> (PathBuf, PathBuf) {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = dir.as_ref();
        let cert = dir.join(format!("{name}.pem"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, &self.cert_pem)
            .unwrap_or_else(|e| panic!("writing {}: {e}", cert.display()));
        std::fs::write(&key, &self.key_pem)
            .unwrap_or_else(|e| panic!("writing {}: {e}", key.display()));
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", key.display()));
        (cert, key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaves_differ_and_files_are_written() {
        let ca = TestCa::new("test CA");
        let a = ca.leaf("localhost").issue();
        let b = ca.leaf("localhost").issue();
        assert_ne!(a.cert_der(), b.cert_der());
        assert_ne!(a.key_der(), b.key_der());
        let dir = std::env::temp_dir().join(format!("chassis-testkit-pki-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = a.write(&dir, "server");
        assert_eq!(std::fs::read_to_string(cert).unwrap(), a.cert_pem());
        assert!(
            std::fs::read_to_string(key)
                .unwrap()
                .contains("PRIVATE KEY")
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
