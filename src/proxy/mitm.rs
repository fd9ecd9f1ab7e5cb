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
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
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

impl CertificateAuthority {
    /// Loads `ca.pem` + `ca.key` from `dir`, creating both on first run.
    pub fn load_or_create(dir: &Path) -> Result<Self, CaError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        match (cert_path.exists(), key_path.exists()) {
            (true, true) => Self::load(&cert_path, &key_path),
            (false, false) => Self::create(&cert_path, &key_path),
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

    fn create(cert_path: &Path, key_path: &Path) -> Result<Self, CaError> {
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
        dn.push(DnType::CommonName, host);
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
        }
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
        let ca = CertificateAuthority::load_or_create(dir.path()).unwrap();
        let again = CertificateAuthority::load_or_create(dir.path()).unwrap();
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
        CertificateAuthority::load_or_create(dir.path()).unwrap();
        std::fs::remove_file(dir.path().join(CA_KEY_FILE)).unwrap();
        let err = CertificateAuthority::load_or_create(dir.path()).unwrap_err();
        assert!(err.to_string().contains("ca.key is missing"), "{err}");
    }

    #[test]
    fn concurrent_first_handshakes_mint_once() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Arc::new(CertificateAuthority::load_or_create(dir.path()).unwrap());
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
        let ca = Arc::new(CertificateAuthority::load_or_create(dir.path()).unwrap());
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
