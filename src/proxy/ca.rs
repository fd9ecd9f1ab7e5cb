//! # CA: veil's certificate authority, which signs the leaves interception serves.
//!
//! Owns `keys/ca.pem` and `keys/ca.key` (created on first run, key 0600). Built once at start
//! from a [`CaScope`] (the intercepted hosts, from
//! [`ProxySettings::ca_scope`](super::ProxySettings::ca_scope)); hands [`leaf`](super::leaf)
//! a CA that signs one leaf certificate per host ([`CertificateAuthority::mint`]). A new CA is
//! name-constrained to the intercepted hosts (`name_constraints.rs`), and a loaded one is
//! checked against them, so a stolen `ca.key` cannot impersonate other sites. It never sees a
//! connection, a request or a ClientHello.
//!
//! Choices, against hudsucker's `rcgen_authority.rs`: leaves are signed over a leaf key, never
//! the CA key (see [`leaf`](super::leaf)); they live 30 days and are backdated 60 s for clock
//! skew; serials are random.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CidrSubnet, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, GeneralSubtree, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    NameConstraints, SerialNumber,
};

use crate::config::HostPattern;
use rustls::pki_types::CertificateDer;

use super::name_constraints::{constraint_gap, name_constraints_for, outside};

/// CA certificate file name in the keys dir (this is what apps trust).
pub const CA_CERT_FILE: &str = "ca.pem";
/// CA private key file name in the keys dir (mode 0600).
pub const CA_KEY_FILE: &str = "ca.key";

/// Leaf validity. Short enough that a leaked leaf expires soon, long enough to cache well.
const LEAF_LIFETIME: Duration = Duration::from_secs(30 * 86_400);
/// Backdating absorbs clients whose clocks run a little behind veil's.
const BACKDATE: Duration = Duration::from_secs(60);
/// CA validity: ten years; the CA is local to one deployment.
const CA_LIFETIME: Duration = Duration::from_secs(3650 * 86_400);

/// Why the CA could not be loaded or created, or a leaf minted.
#[derive(Debug)]
pub struct CaError(String);

impl fmt::Display for CaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CaError {}

/// veil's certificate authority: signs leaf certificates for intercepted hosts.
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    cert_path: PathBuf,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("cert_path", &self.cert_path)
            .finish_non_exhaustive()
    }
}

/// The hosts a CA is for. A new CA carries X.509 name constraints limited to them (when
/// `constrain`), so a stolen CA key cannot impersonate any other site to apps that trust it;
/// an existing CA is checked against them on every load. Built from the configuration by
/// [`ProxySettings::ca_scope`](super::ProxySettings::ca_scope).
#[derive(Debug, Clone, Copy)]
pub struct CaScope<'a> {
    /// The hosts veil intercepts.
    pub hosts: &'a [HostPattern],
    /// A new CA may sign only for `hosts`.
    pub constrain: bool,
}

impl CaScope<'_> {
    /// No hosts, no constraints (tests and tools).
    pub const ANY: CaScope<'static> = CaScope {
        hosts: &[],
        constrain: false,
    };
}

impl CertificateAuthority {
    /// Loads `ca.pem` + `ca.key` from `dir`, creating both on first run (name-constrained to
    /// `scope`'s hosts when it says so). A loaded CA whose name constraints leave out one of
    /// `scope`'s hosts is an error: apps would reject every leaf for that host.
    pub fn load_or_create(dir: &Path, scope: CaScope<'_>) -> Result<Self, CaError> {
        let mut unsaved = crate::keys::Unsaved::default();
        let ca = Self::load_or_generate(dir, scope, &mut unsaved)?;
        match unsaved.save() {
            Ok(()) => Ok(ca),
            // Created by another process meanwhile: use that one, if it is complete now.
            Err(e @ crate::keys::KeyError::Appeared(_)) => {
                let mut again = crate::keys::Unsaved::default();
                let ca = Self::load_or_generate(dir, scope, &mut again)?;
                if again.is_empty() {
                    Ok(ca)
                } else {
                    Err(CaError(e.to_string()))
                }
            }
            Err(e) => Err(CaError(e.to_string())),
        }
    }

    /// [`CertificateAuthority::load_or_create`], except that a new CA is only in memory: its
    /// key (0600) and then its certificate are added to `unsaved`, to be written when the
    /// caller is sure it will use them ([`crate::keys::Unsaved::save`]).
    pub fn load_or_generate(
        dir: &Path,
        scope: CaScope<'_>,
        unsaved: &mut crate::keys::Unsaved,
    ) -> Result<Self, CaError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        match (cert_path.exists(), key_path.exists()) {
            (true, true) => {
                let ca = Self::load(&cert_path, &key_path)?;
                ca.check_scope(scope, &key_path)?;
                if scope.constrain
                    && let Some(gap) = constraint_gap(ca.name_constraints().as_ref())
                {
                    tracing::warn!(
                        "{}: {gap}. Remove {} and {} and restart veil to create a CA constrained \
                         to the intercepted hosts (apps must then trust the new ca.pem)",
                        cert_path.display(),
                        cert_path.display(),
                        key_path.display()
                    );
                }
                Ok(ca)
            }
            (false, false) => Self::generate(&cert_path, &key_path, scope, unsaved),
            (true, false) => Err(CaError(format!(
                "{} exists but {} is missing: restore the key or remove the certificate to start over",
                cert_path.display(),
                key_path.display()
            ))),
            (false, true) => Err(CaError(format!(
                "{} exists but {} is missing: restore the certificate or remove the key to start over",
                key_path.display(),
                cert_path.display()
            ))),
        }
    }

    fn load(cert_path: &Path, key_path: &Path) -> Result<Self, CaError> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|e| CaError(format!("{}: {e}", p.display())))
        };
        let cert_pem = read(cert_path)?;
        let key_pem = zeroize::Zeroizing::new(read(key_path)?);
        check_key_mode(key_path);
        let key = KeyPair::from_pem(&key_pem).map_err(|e| {
            CaError(format!(
                "{}: not a usable private key: {e}",
                key_path.display()
            ))
        })?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|e| {
            CaError(format!(
                "{}: not a usable CA certificate: {e}",
                cert_path.display()
            ))
        })?;
        Ok(CertificateAuthority {
            issuer,
            cert_pem,
            cert_path: cert_path.to_path_buf(),
        })
    }

    /// The CA's DNS and IP name constraints, if it has any (other name types do not bear on
    /// the hosts veil signs for).
    pub fn name_constraints(&self) -> Option<NameConstraints> {
        use x509_parser::extensions::GeneralName;
        let der = rustls_pemfile::certs(&mut self.cert_pem.as_bytes())
            .next()?
            .ok()?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
        let nc = cert.name_constraints().ok()??.value;
        let convert = |v: &Option<Vec<x509_parser::extensions::GeneralSubtree<'_>>>| {
            v.iter()
                .flatten()
                .filter_map(|t| match &t.base {
                    GeneralName::DNSName(d) => Some(GeneralSubtree::DnsName(d.to_string())),
                    GeneralName::IPAddress(b) if b.len() == 8 => Some(GeneralSubtree::IpAddress(
                        CidrSubnet::V4(b[..4].try_into().ok()?, b[4..].try_into().ok()?),
                    )),
                    GeneralName::IPAddress(b) if b.len() == 32 => Some(GeneralSubtree::IpAddress(
                        CidrSubnet::V6(b[..16].try_into().ok()?, b[16..].try_into().ok()?),
                    )),
                    _ => None,
                })
                .collect::<Vec<_>>()
        };
        let nc = NameConstraints {
            permitted_subtrees: convert(&nc.permitted_subtrees),
            excluded_subtrees: convert(&nc.excluded_subtrees),
        };
        (!nc.permitted_subtrees.is_empty() || !nc.excluded_subtrees.is_empty()).then_some(nc)
    }

    fn check_scope(&self, scope: CaScope<'_>, key_path: &Path) -> Result<(), CaError> {
        let Some(nc) = self.name_constraints() else {
            return Ok(());
        };
        let out = outside(&nc, scope.hosts);
        if out.is_empty() {
            return Ok(());
        }
        Err(CaError(format!(
            "{}: this CA may sign only for the hosts it was created for (X.509 name constraints), \
             and veil is set to intercept {} outside them; apps would reject those leaves. \
             Remove {} and {} to create a CA for the current intercept list (apps must then \
             trust the new one), or stop intercepting those hosts",
            self.cert_path.display(),
            out.join(", "),
            self.cert_path.display(),
            key_path.display()
        )))
    }

    fn generate(
        cert_path: &Path,
        key_path: &Path,
        scope: CaScope<'_>,
        unsaved: &mut crate::keys::Unsaved,
    ) -> Result<Self, CaError> {
        let key = KeyPair::generate().map_err(|e| CaError(format!("generating CA key: {e}")))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "veil");
        dn.push(
            DnType::CommonName,
            format!("veil local interception CA {}", short_random_hex()),
        );
        params.distinguished_name = dn;
        // Path length 0: this CA signs leaves only, never another CA.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + CA_LIFETIME;
        params.serial_number = Some(random_serial());
        if scope.constrain && !scope.hosts.is_empty() {
            params.name_constraints = Some(name_constraints_for(scope.hosts));
        } else if scope.constrain {
            tracing::warn!(
                "no host is intercepted: the new CA carries no name constraints (a stolen key could sign for any site); set `intercept` before the CA is created"
            );
        }
        let cert = params
            .self_signed(&key)
            .map_err(|e| CaError(format!("signing CA certificate: {e}")))?;
        let key_pem = zeroize::Zeroizing::new(key.serialize_pem());
        let cert_pem = cert.pem();
        // The key first: a certificate without its key on disk would be trusted by apps and
        // useless to veil.
        unsaved.add(
            key_path.to_path_buf(),
            key_pem.as_bytes(),
            crate::keys::Unsaved::SECRET,
            "CA key",
        );
        unsaved.add(
            cert_path.to_path_buf(),
            cert_pem.as_bytes(),
            crate::keys::Unsaved::PUBLIC,
            "CA certificate",
        );
        Ok(CertificateAuthority {
            issuer: Issuer::new(params, key),
            cert_pem,
            cert_path: cert_path.to_path_buf(),
        })
    }

    /// The CA certificate in PEM, as apps must trust it.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Where the CA certificate is on disk.
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// Mints a leaf certificate for `host` over `leaf_key`, signed by this CA.
    pub fn mint(&self, host: &str, leaf_key: &KeyPair) -> Result<CertificateDer<'static>, CaError> {
        let mut params = CertificateParams::new(vec![host.to_string()])
            .map_err(|e| CaError(format!("bad host name {host:?}: {e}")))?;
        let mut dn = DistinguishedName::new();
        // An IP host lives in the SAN only (RFC 6125 §6.2.1: never matched against the CN).
        // As a CN it would fail openssl's name-constraint check, which reads a CN made of
        // digits and dots as a DNS name outside the CA's DNS subtrees. With an empty subject
        // rcgen marks the SAN critical, as RFC 5280 §4.1.2.6 asks.
        if host.parse::<IpAddr>().is_err() {
            dn.push(DnType::CommonName, host);
        }
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + LEAF_LIFETIME;
        params.serial_number = Some(random_serial());
        let cert = params
            .signed_by(leaf_key, &self.issuer)
            .map_err(|e| CaError(format!("signing leaf for {host}: {e}")))?;
        Ok(cert.der().clone())
    }
}

fn check_key_mode(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(path = %path.display(), mode = format!("{mode:o}"), "CA key is readable by others; chmod 600 it");
        }
    }
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    rand::fill(&mut bytes);
    bytes[0] &= 0x7f; // positive INTEGER
    bytes[0] |= 0x01; // and no leading zero byte to strip
    SerialNumber::from_slice(&bytes)
}

fn short_random_hex() -> String {
    let mut b = [0u8; 4];
    rand::fill(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
#[path = "ca_tests.rs"]
mod tests;
