//! # TLS interception: veil's CA and the leaf certificates it mints.
//!
//! Owns `keys/ca.pem` and `keys/ca.key` (created on first run, key 0600) and a bounded cache of
//! leaf certificates, one per intercepted host. Every host is served from one rustls
//! `ServerConfig` whose [`LeafResolver`] picks (or mints) the leaf by SNI.
//!
//! Choices, against hudsucker's `rcgen_authority.rs`:
//! - leaves share one leaf key generated at start, never the CA key, so a leaked leaf key (it
//!   sits in memory of a process that talks to the network) cannot sign anything;
//! - concurrent first handshakes for one host mint once: the cache hands out one `OnceLock` per
//!   host and every racer waits on it;
//! - leaves live 30 days, are cached for half of that, and are backdated 60 s for clock skew;
//!   serials are random.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, CidrSubnet, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, GeneralSubtree, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    NameConstraints, SerialNumber,
};

use crate::config::HostPattern;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// CA certificate file name in the keys dir (this is what apps trust).
pub const CA_CERT_FILE: &str = "ca.pem";
/// CA private key file name in the keys dir (mode 0600).
pub const CA_KEY_FILE: &str = "ca.key";

/// Leaf validity. Short enough that a leaked leaf expires soon, long enough to cache well.
const LEAF_LIFETIME: Duration = Duration::from_secs(30 * 86_400);
/// Re-mint after half the lifetime, so a cached leaf never nears expiry while in use.
const LEAF_CACHE_TTL: Duration = Duration::from_secs(15 * 86_400);
/// Backdating absorbs clients whose clocks run a little behind veil's.
const BACKDATE: Duration = Duration::from_secs(60);
/// Distinct intercepted hosts are few (a dozen providers); 1024 bounds memory if a client
/// sends many SNI names.
const LEAF_CACHE_CAPACITY: usize = 1024;
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
/// an existing CA is checked against them on every load.
#[derive(Debug, Clone, Copy)]
pub struct CaScope<'a> {
    /// The hosts veil intercepts.
    pub hosts: &'a [HostPattern],
    /// A new CA may sign only for `hosts`.
    pub constrain: bool,
}

impl<'a> CaScope<'a> {
    /// The scope `config` asks for.
    pub fn of(config: &'a crate::config::Config) -> CaScope<'a> {
        CaScope {
            hosts: &config.intercept,
            constrain: config.ca_name_constraints,
        }
    }

    /// No hosts, no constraints (tests and tools).
    pub const ANY: CaScope<'static> = CaScope {
        hosts: &[],
        constrain: false,
    };
}

/// The name constraints of a new CA for `hosts` (RFC 5280 §4.2.1.10).
///
/// Permitted: a DNS name covers itself and its subdomains, so `*.openai.azure.com` becomes
/// `openai.azure.com`; an IP address becomes a single-address subnet.
///
/// IP addresses are constrained too, always: RFC 5280 leaves a name type without a permitted
/// subtree unconstrained, so a CA with DNS subtrees only would still sign `IP:10.0.0.1` for a
/// thief of `ca.key` (veil#10). An IP family with no intercepted address gets an excluded
/// subtree covering all of it (`0.0.0.0/0`, `::/0`); a family with intercepted addresses is
/// already narrowed by their permitted subnets.
fn name_constraints_for(hosts: &[HostPattern]) -> NameConstraints {
    let mut permitted: Vec<GeneralSubtree> = Vec::new();
    let (mut v4, mut v6) = (false, false);
    for h in hosts {
        let t = match h.host.parse::<IpAddr>() {
            Ok(ip) => {
                v4 |= ip.is_ipv4();
                v6 |= ip.is_ipv6();
                GeneralSubtree::IpAddress(CidrSubnet::from_addr_prefix(
                    ip,
                    if ip.is_ipv4() { 32 } else { 128 },
                ))
            }
            Err(_) => GeneralSubtree::DnsName(h.host.clone()),
        };
        if !permitted.contains(&t) {
            permitted.push(t);
        }
    }
    let mut excluded = Vec::new();
    if !v4 {
        excluded.push(GeneralSubtree::IpAddress(CidrSubnet::from_addr_prefix(
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            0,
        )));
    }
    if !v6 {
        excluded.push(GeneralSubtree::IpAddress(CidrSubnet::from_addr_prefix(
            IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            0,
        )));
    }
    NameConstraints {
        permitted_subtrees: permitted,
        excluded_subtrees: excluded,
    }
}

/// What a thief of `ca.key` could still sign that apps trusting this CA would accept, when
/// the CA's name constraints leave IP addresses (or everything) open; `None` when both DNS
/// names and IP addresses are constrained.
fn constraint_gap(nc: Option<&NameConstraints>) -> Option<&'static str> {
    let Some(nc) = nc else {
        return Some("it has no name constraints: a stolen ca.key can impersonate any site");
    };
    let ip = |t: &GeneralSubtree| matches!(t, GeneralSubtree::IpAddress(_));
    if nc.permitted_subtrees.iter().any(ip) || nc.excluded_subtrees.iter().any(ip) {
        return None;
    }
    Some(
        "its name constraints cover DNS names only: a stolen ca.key can still sign certificates \
         for any IP address",
    )
}

/// Hosts of `hosts` that name constraints `nc` do not allow a leaf for.
fn outside(nc: &NameConstraints, hosts: &[HostPattern]) -> Vec<String> {
    let dns_in = |d: &str, host: &str| {
        let d = d.trim_start_matches('.').to_ascii_lowercase();
        d.is_empty() || host == d || host.ends_with(&format!(".{d}"))
    };
    let ip_in = |c: &CidrSubnet, ip: std::net::IpAddr| match (c, ip) {
        (CidrSubnet::V4(net, mask), std::net::IpAddr::V4(a)) => {
            (0..4).all(|i| a.octets()[i] & mask[i] == net[i] & mask[i])
        }
        (CidrSubnet::V6(net, mask), std::net::IpAddr::V6(a)) => {
            (0..16).all(|i| a.octets()[i] & mask[i] == net[i] & mask[i])
        }
        _ => false,
    };
    // Whether subtree `t` matches `host`; `None` when it constrains another name type.
    let judge = |t: &GeneralSubtree, host: &str, ip: Option<std::net::IpAddr>| match (t, ip) {
        (GeneralSubtree::DnsName(d), None) => Some(dns_in(d, host)),
        (GeneralSubtree::IpAddress(c), Some(ip)) => Some(ip_in(c, ip)),
        _ => None,
    };
    // A name type with no permitted subtree is unconstrained; an excluded one always loses.
    let allowed = |host: &str| {
        let ip = host.parse().ok();
        let permitted: Vec<bool> = nc
            .permitted_subtrees
            .iter()
            .filter_map(|t| judge(t, host, ip))
            .collect();
        (permitted.is_empty() || permitted.contains(&true))
            && !nc
                .excluded_subtrees
                .iter()
                .any(|t| judge(t, host, ip) == Some(true))
    };
    hosts
        .iter()
        .filter(|h| !allowed(&h.host))
        .map(|h| {
            if h.wildcard {
                format!("*.{}", h.host)
            } else {
                h.host.clone()
            }
        })
        .collect()
}

impl CertificateAuthority {
    /// Loads `ca.pem` + `ca.key` from `dir`, creating both on first run (name-constrained to
    /// `scope`'s hosts when it says so). A loaded CA whose name constraints leave out one of
    /// `scope`'s hosts is an error: apps would reject every leaf for that host.
    pub fn load_or_create(dir: &Path, scope: CaScope<'_>) -> Result<Self, CaError> {
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
            (false, false) => Self::create(&cert_path, &key_path, scope),
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

    fn create(cert_path: &Path, key_path: &Path, scope: CaScope<'_>) -> Result<Self, CaError> {
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
        crate::keys::write_secret_file(key_path, key_pem.as_bytes())
            .map_err(|e| CaError(e.to_string()))?;
        let cert_pem = cert.pem();
        std::fs::write(cert_path, &cert_pem)
            .map_err(|e| CaError(format!("{}: {e}", cert_path.display())))?;
        tracing::info!(path = %cert_path.display(), "created CA certificate");
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

type Slot = Arc<OnceLock<Option<Arc<CertifiedKey>>>>;

/// Picks the leaf for a handshake by SNI, minting and caching it on first use.
pub struct LeafResolver {
    ca: Arc<CertificateAuthority>,
    leaf_key: KeyPair,
    signing_key: Arc<dyn rustls::sign::SigningKey>,
    cache: Mutex<HashMap<String, (Instant, Slot)>>,
    capacity: usize,
    /// Leaves minted so far (shared with the proxy's counters).
    minted: Arc<AtomicU64>,
}

impl fmt::Debug for LeafResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeafResolver")
            .field("cached", &self.cache.lock().map(|c| c.len()).unwrap_or(0))
            .finish_non_exhaustive()
    }
}

impl LeafResolver {
    /// A resolver over `ca` with a fresh leaf key and the default cache size.
    pub fn new(ca: Arc<CertificateAuthority>) -> Self {
        Self::with_capacity(ca, LEAF_CACHE_CAPACITY)
    }

    /// A resolver whose cache holds at most `capacity` hosts (0 = mint every time, for benches).
    pub fn with_capacity(ca: Arc<CertificateAuthority>, capacity: usize) -> Self {
        let leaf_key = KeyPair::generate().expect("invariant: ECDSA P-256 key generation works");
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let signing_key = rustls::crypto::ring::sign::any_supported_type(&der)
            .expect("invariant: rcgen's P-256 key is a supported rustls key");
        LeafResolver {
            ca,
            leaf_key,
            signing_key,
            cache: Mutex::new(HashMap::new()),
            capacity,
            minted: Arc::default(),
        }
    }

    /// The count of leaves minted (cache misses), live.
    pub fn minted_counter(&self) -> Arc<AtomicU64> {
        self.minted.clone()
    }

    /// True when a fresh leaf for `host` is cached.
    pub fn is_cached(&self, host: &str) -> bool {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .get(&host.to_ascii_lowercase())
            .is_some_and(|(born, slot)| born.elapsed() < LEAF_CACHE_TTL && slot.get().is_some())
    }

    /// The leaf for `host`: from the cache, or minted now (once, however many callers race).
    pub fn leaf(&self, host: &str) -> Option<Arc<CertifiedKey>> {
        let host = host.to_ascii_lowercase();
        if self.capacity == 0 {
            return self.mint(&host);
        }
        let slot = {
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let fresh = cache
                .get(&host)
                .filter(|(born, _)| now.duration_since(*born) < LEAF_CACHE_TTL)
                .map(|(_, slot)| slot.clone());
            match fresh {
                Some(slot) => slot,
                None => {
                    if cache.len() >= self.capacity {
                        evict(&mut cache, now, self.capacity);
                    }
                    let slot: Slot = Arc::new(OnceLock::new());
                    cache.insert(host.clone(), (now, slot.clone()));
                    slot
                }
            }
        };
        slot.get_or_init(|| self.mint(&host)).clone()
    }

    fn mint(&self, host: &str) -> Option<Arc<CertifiedKey>> {
        let _span = tracing::debug_span!("mint_leaf", host).entered();
        self.minted.fetch_add(1, Ordering::Relaxed);
        match self.ca.mint(host, &self.leaf_key) {
            Ok(der) => Some(Arc::new(CertifiedKey::new(
                vec![der],
                self.signing_key.clone(),
            ))),
            Err(e) => {
                tracing::warn!(host, error = %e, "cannot mint leaf certificate");
                None
            }
        }
    }
}

/// Drops expired entries, then the oldest until there is room for one more.
fn evict(cache: &mut HashMap<String, (Instant, Slot)>, now: Instant, capacity: usize) {
    cache.retain(|_, (born, _)| now.duration_since(*born) < LEAF_CACHE_TTL);
    while cache.len() >= capacity {
        let Some(oldest) = cache
            .iter()
            .min_by_key(|(_, (born, _))| *born)
            .map(|(k, _)| k.clone())
        else {
            break;
        };
        cache.remove(&oldest);
    }
}

impl ResolvesServerCert for LeafResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // No SNI (an IP address, or an old client): we cannot know which name to sign.
        self.leaf(hello.server_name()?)
    }
}

/// Serves one leaf whatever the ClientHello says (a client that sent no SNI).
#[derive(Debug)]
struct OneLeaf(Arc<CertifiedKey>);

impl ResolvesServerCert for OneLeaf {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// `base` serving `leaf` to every client: for handshakes without SNI, where the proxy already
/// knows the host from CONNECT. One config per such connection; clients that send SNI (all
/// of them for DNS names) share `base`.
pub fn server_config_for(
    base: &rustls::ServerConfig,
    leaf: Arc<CertifiedKey>,
) -> Arc<rustls::ServerConfig> {
    let mut config = base.clone();
    config.cert_resolver = Arc::new(OneLeaf(leaf));
    Arc::new(config)
}

/// The one `ServerConfig` for every intercepted host: leaves by SNI, ALPN h2 then http/1.1.
pub fn server_config(resolver: Arc<LeafResolver>) -> Arc<rustls::ServerConfig> {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("invariant: ring supports the default protocol versions")
    .with_no_client_auth()
    .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_is_created_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::load_or_create(dir.path(), CaScope::ANY).unwrap();
        let again = CertificateAuthority::load_or_create(dir.path(), CaScope::ANY).unwrap();
        assert_eq!(ca.cert_pem(), again.cert_pem());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(CA_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn half_present_ca_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        CertificateAuthority::load_or_create(dir.path(), CaScope::ANY).unwrap();
        std::fs::remove_file(dir.path().join(CA_KEY_FILE)).unwrap();
        let err = CertificateAuthority::load_or_create(dir.path(), CaScope::ANY).unwrap_err();
        assert!(err.to_string().contains("ca.key is missing"), "{err}");
    }

    fn patterns(hosts: &[&str]) -> Vec<HostPattern> {
        hosts
            .iter()
            .map(|h| HostPattern::parse(h).unwrap())
            .collect()
    }

    /// webpki's verdict on a leaf of `ca` for `host`.
    fn webpki_verdict(ca: &CertificateAuthority, leaf: &[u8], host: &str) -> Result<(), String> {
        let ca_der = rustls_pemfile::certs(&mut ca.cert_pem().as_bytes())
            .next()
            .unwrap()
            .unwrap();
        let anchor = webpki::anchor_from_trusted_cert(&ca_der).unwrap();
        let leaf = CertificateDer::from(leaf.to_vec());
        let cert = webpki::EndEntityCert::try_from(&leaf).unwrap();
        cert.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &[anchor],
            &[],
            rustls::pki_types::UnixTime::now(),
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(|e| format!("{e:?}"))?;
        let name = rustls::pki_types::ServerName::try_from(host.to_string()).unwrap();
        cert.verify_is_valid_for_subject_name(&name)
            .map_err(|e| format!("{e:?}"))
    }

    /// openssl's verdict, a second independent verifier.
    fn openssl_verdict(ca: &CertificateAuthority, leaf: &[u8], host: &str) -> Result<(), String> {
        use base64::Engine;
        let dir = tempfile::tempdir().unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(leaf);
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        let pem = format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            lines.join("\n")
        );
        std::fs::write(dir.path().join("leaf.pem"), pem).unwrap();
        let name_flag = if host.parse::<IpAddr>().is_ok() {
            "-verify_ip"
        } else {
            "-verify_hostname"
        };
        let out = std::process::Command::new("openssl")
            .args([
                "verify",
                "-purpose",
                "sslserver",
                name_flag,
                host,
                "-CAfile",
            ])
            .arg(ca.cert_path())
            .arg(dir.path().join("leaf.pem"))
            .output()
            .expect("openssl is installed");
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr))
        }
    }

    #[test]
    fn constrained_ca_signs_only_for_the_intercepted_hosts() {
        let dir = tempfile::tempdir().unwrap();
        let hosts = patterns(&["api.openai.com", "*.openai.azure.com"]);
        let scope = CaScope {
            hosts: &hosts,
            constrain: true,
        };
        let ca = Arc::new(CertificateAuthority::load_or_create(dir.path(), scope).unwrap());
        let nc = ca
            .name_constraints()
            .expect("the new CA is name-constrained");
        assert_eq!(
            nc.permitted_subtrees,
            vec![
                GeneralSubtree::DnsName("api.openai.com".into()),
                GeneralSubtree::DnsName("openai.azure.com".into()),
            ]
        );
        // A leaf for an intercepted host passes both verifiers; a leaf for any other site,
        // signed with the same CA key (what a thief of ca.key would do), fails both.
        let resolver = LeafResolver::new(ca.clone());
        for host in ["api.openai.com", "eastus.openai.azure.com"] {
            let leaf = resolver.leaf(host).unwrap().cert[0].to_vec();
            webpki_verdict(&ca, &leaf, host).unwrap_or_else(|e| panic!("{host}: {e}"));
            openssl_verdict(&ca, &leaf, host).unwrap_or_else(|e| panic!("{host}: {e}"));
        }
        for host in ["www.mybank.example", "api.openai.com.evil.example"] {
            let leaf = resolver.leaf(host).unwrap().cert[0].to_vec();
            let e = webpki_verdict(&ca, &leaf, host).unwrap_err();
            assert!(e.contains("NameConstraint"), "{host}: {e}");
            let e = openssl_verdict(&ca, &leaf, host).unwrap_err();
            assert!(e.contains("subtree violation"), "{host}: {e}");
        }
    }

    /// Both verifiers reject a leaf for `host` signed by `ca`'s key for a name-constraint
    /// reason.
    fn assert_constraint_rejects(ca: &CertificateAuthority, host: &str) {
        let leaf = ca.mint(host, &KeyPair::generate().unwrap()).unwrap();
        let e = webpki_verdict(ca, &leaf, host).unwrap_err();
        assert!(e.contains("NameConstraint"), "{host}: {e}");
        let e = openssl_verdict(ca, &leaf, host).unwrap_err();
        assert!(e.contains("subtree violation"), "{host}: {e}");
    }

    // See: veil#10
    #[test]
    fn ip_10_0_0_1_leaf_signed_with_a_stolen_ca_key() {
        // The CA of a DNS-only intercept list excludes every IPv4 and IPv6 address, so a thief
        // of ca.key cannot sign IP:10.0.0.1 (or any address) for apps that trust it.
        let dir = tempfile::tempdir().unwrap();
        let hosts = patterns(&["api.openai.com"]);
        let scope = CaScope {
            hosts: &hosts,
            constrain: true,
        };
        let ca = CertificateAuthority::load_or_create(dir.path(), scope).unwrap();
        let nc = ca.name_constraints().unwrap();
        assert_eq!(
            nc.excluded_subtrees,
            vec![
                GeneralSubtree::IpAddress(CidrSubnet::from_addr_prefix(
                    IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                    0
                )),
                GeneralSubtree::IpAddress(CidrSubnet::from_addr_prefix(
                    IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                    0
                )),
            ]
        );
        for host in ["10.0.0.1", "127.0.0.1", "::1"] {
            assert_constraint_rejects(&ca, host);
        }
        // DNS leaves inside the list still pass both verifiers.
        let leaf = ca
            .mint("api.openai.com", &KeyPair::generate().unwrap())
            .unwrap();
        webpki_verdict(&ca, &leaf, "api.openai.com").unwrap();
        openssl_verdict(&ca, &leaf, "api.openai.com").unwrap();
        assert_eq!(constraint_gap(Some(&nc)), None);
        // Intercepting an IP later is outside the CA: refused at load with the way out.
        let later = patterns(&["api.openai.com", "10.0.0.1"]);
        let err = CertificateAuthority::load_or_create(
            dir.path(),
            CaScope {
                hosts: &later,
                constrain: true,
            },
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("10.0.0.1") && err.contains("ca.key"), "{err}");
    }

    // See: veil#10
    #[test]
    fn an_intercepted_ip_narrows_its_family_and_excludes_the_other() {
        let dir = tempfile::tempdir().unwrap();
        let hosts = patterns(&["api.openai.com", "127.0.0.1"]);
        let scope = CaScope {
            hosts: &hosts,
            constrain: true,
        };
        let ca = CertificateAuthority::load_or_create(dir.path(), scope).unwrap();
        let leaf = ca.mint("127.0.0.1", &KeyPair::generate().unwrap()).unwrap();
        webpki_verdict(&ca, &leaf, "127.0.0.1").unwrap();
        openssl_verdict(&ca, &leaf, "127.0.0.1").unwrap();
        for host in ["10.0.0.1", "127.0.0.2", "::1"] {
            assert_constraint_rejects(&ca, host);
        }
    }

    // See: veil#10
    #[test]
    fn a_ca_without_an_ip_constraint_is_flagged() {
        // What a CA created before veil#10 carries: DNS subtrees only.
        let dns_only = NameConstraints {
            permitted_subtrees: vec![GeneralSubtree::DnsName("api.openai.com".into())],
            excluded_subtrees: vec![],
        };
        let gap = constraint_gap(Some(&dns_only)).unwrap();
        assert!(gap.contains("IP address"), "{gap}");
        assert!(
            constraint_gap(None)
                .unwrap()
                .contains("no name constraints")
        );
        assert_eq!(
            constraint_gap(Some(&name_constraints_for(&patterns(&["api.openai.com"])))),
            None
        );
    }

    #[test]
    fn a_constrained_ca_must_cover_the_intercept_list() {
        let dir = tempfile::tempdir().unwrap();
        let first = patterns(&["api.openai.com", "*.openai.azure.com", "127.0.0.1"]);
        CertificateAuthority::load_or_create(
            dir.path(),
            CaScope {
                hosts: &first,
                constrain: true,
            },
        )
        .unwrap();
        // The same or a narrower list loads; subdomains of a permitted name are inside it.
        for ok in [
            vec!["api.openai.com"],
            vec!["x.api.openai.com", "*.openai.azure.com", "127.0.0.1"],
            vec![],
        ] {
            let hosts = patterns(&ok);
            let scope = CaScope {
                hosts: &hosts,
                constrain: true,
            };
            CertificateAuthority::load_or_create(dir.path(), scope)
                .unwrap_or_else(|e| panic!("{ok:?}: {e}"));
        }
        // A host outside it is refused at load, whatever `constrain` says now, with a way out.
        for constrain in [true, false] {
            let hosts = patterns(&[
                "api.openai.com",
                "api.mistral.ai",
                "*.azure.com",
                "10.0.0.1",
            ]);
            let err = CertificateAuthority::load_or_create(
                dir.path(),
                CaScope {
                    hosts: &hosts,
                    constrain,
                },
            )
            .unwrap_err()
            .to_string();
            assert!(
                err.contains("api.mistral.ai, *.azure.com, 10.0.0.1")
                    && err.contains("ca.pem")
                    && err.contains("ca.key"),
                "{err}"
            );
        }
    }

    #[test]
    fn coverage_follows_rfc_5280_per_name_type() {
        let nc = NameConstraints {
            permitted_subtrees: vec![
                GeneralSubtree::DnsName("example.com".into()),
                GeneralSubtree::IpAddress(CidrSubnet::from_addr_prefix(
                    "10.1.0.0".parse().unwrap(),
                    16,
                )),
            ],
            excluded_subtrees: vec![GeneralSubtree::DnsName("bad.example.com".into())],
        };
        let hosts = patterns(&[
            "example.com",
            "api.example.com",
            "x.bad.example.com",
            "notexample.com",
            "10.1.2.3",
            "10.2.0.1",
        ]);
        assert_eq!(
            outside(&nc, &hosts),
            vec!["x.bad.example.com", "notexample.com", "10.2.0.1"]
        );
        // No IP subtree at all: IP hosts are unconstrained.
        let dns_only = NameConstraints {
            permitted_subtrees: vec![GeneralSubtree::DnsName("example.com".into())],
            excluded_subtrees: vec![],
        };
        assert!(outside(&dns_only, &patterns(&["192.0.2.1"])).is_empty());
    }

    #[test]
    fn an_unconstrained_ca_takes_any_intercept_list() {
        let dir = tempfile::tempdir().unwrap();
        let hosts = patterns(&["api.openai.com"]);
        let ca = CertificateAuthority::load_or_create(
            dir.path(),
            CaScope {
                hosts: &hosts,
                constrain: false,
            },
        )
        .unwrap();
        assert!(ca.name_constraints().is_none());
        let other = patterns(&["llm.internal.example"]);
        CertificateAuthority::load_or_create(
            dir.path(),
            CaScope {
                hosts: &other,
                constrain: true,
            },
        )
        .expect("constraints apply to new CAs only");
    }

    #[test]
    fn concurrent_first_handshakes_mint_once() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Arc::new(CertificateAuthority::load_or_create(dir.path(), CaScope::ANY).unwrap());
        let resolver = Arc::new(LeafResolver::new(ca));
        let leaves: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| resolver.leaf("api.openai.com").unwrap()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for leaf in &leaves {
            assert!(
                Arc::ptr_eq(leaf, &leaves[0]),
                "every racer got the same minted leaf"
            );
        }
        let other = resolver.leaf("api.anthropic.com").unwrap();
        assert_ne!(other.cert[0], leaves[0].cert[0]);
    }

    #[test]
    fn serials_are_unique_and_cache_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Arc::new(CertificateAuthority::load_or_create(dir.path(), CaScope::ANY).unwrap());
        let resolver = LeafResolver::with_capacity(ca, 4);
        let mut serials = std::collections::HashSet::new();
        for i in 0..10 {
            let leaf = resolver.leaf(&format!("h{i}.example")).unwrap();
            let (_, cert) = x509_parser::parse_x509_certificate(&leaf.cert[0]).unwrap();
            assert!(serials.insert(cert.raw_serial().to_vec()));
        }
        assert!(resolver.cache.lock().unwrap().len() <= 4);
    }
}
