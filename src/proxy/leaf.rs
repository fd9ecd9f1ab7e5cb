//! # Leaf: the certificate each intercepted TLS session is served with.
//!
//! The `intercept` stage has checked the ClientHello's SNI against the CONNECT host and asks
//! for that host's leaf: through the one rustls `ServerConfig` ([`server_config`]) whose
//! [`LeafResolver`] picks the leaf by SNI, or, for a client that sent no SNI, through
//! [`server_config_for`] with the leaf for the CONNECT host. The resolver mints with the
//! [`CertificateAuthority`] and keeps a bounded cache, one leaf per host. It hands rustls a
//! `CertifiedKey` and never sees a request.
//!
//! Choices, against hudsucker's `rcgen_authority.rs`:
//! - leaves share one leaf key generated at start, never the CA key, so a leaked leaf key (it
//!   sits in memory of a process that talks to the network) cannot sign anything;
//! - concurrent first handshakes for one host mint once: the cache hands out one `OnceLock` per
//!   host and every racer waits on it;
//! - a leaf is cached for half its lifetime, so a cached leaf never nears expiry while in use.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rcgen::KeyPair;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::ca::CertificateAuthority;
use crate::counters::Counters;

/// Re-mint after half the lifetime, so a cached leaf never nears expiry while in use.
const LEAF_CACHE_TTL: Duration = Duration::from_secs(15 * 86_400);
/// Distinct intercepted hosts are few (a dozen providers); 1024 bounds memory if a client
/// sends many SNI names.
const LEAF_CACHE_CAPACITY: usize = 1024;

type Slot = Arc<OnceLock<Option<Arc<CertifiedKey>>>>;

/// Picks the leaf for a handshake by SNI, minting and caching it on first use.
pub struct LeafResolver {
    ca: Arc<CertificateAuthority>,
    leaf_key: KeyPair,
    signing_key: Arc<dyn rustls::sign::SigningKey>,
    cache: Mutex<HashMap<String, (Instant, Slot)>>,
    capacity: usize,
    /// The registry: each mint counts in `proxy.leaves_minted`, each lookup the cache served
    /// in `proxy.leaf_cache_hits`.
    counters: Arc<Counters>,
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
    pub fn new(ca: Arc<CertificateAuthority>, counters: Arc<Counters>) -> Self {
        Self::with_capacity(ca, LEAF_CACHE_CAPACITY, counters)
    }

    /// A resolver whose cache holds at most `capacity` hosts (0 = mint every time, for benches).
    pub fn with_capacity(
        ca: Arc<CertificateAuthority>,
        capacity: usize,
        counters: Arc<Counters>,
    ) -> Self {
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
            counters,
        }
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
                Some(slot) => {
                    // A hit, even when a racer's first mint is still in progress: this caller
                    // mints nothing (hits + minted = lookups).
                    self.counters.proxy.leaf_cache_hits.inc();
                    slot
                }
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
        self.counters.proxy.leaves_minted.inc();
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
    use crate::proxy::ca::CaScope;

    #[test]
    fn concurrent_first_handshakes_mint_once() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Arc::new(CertificateAuthority::load_or_create(dir.path(), CaScope::ANY).unwrap());
        let counters = Arc::new(Counters::default());
        let resolver = Arc::new(LeafResolver::new(ca, counters.clone()));
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
        assert_eq!(counters.proxy.leaves_minted.get(), 2, "one mint per host");
        assert_eq!(
            counters.proxy.leaf_cache_hits.get(),
            7,
            "the other seven racers were served by the cache"
        );
    }

    #[test]
    fn serials_are_unique_and_cache_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Arc::new(CertificateAuthority::load_or_create(dir.path(), CaScope::ANY).unwrap());
        let resolver = LeafResolver::with_capacity(ca, 4, Arc::default());
        let mut serials = std::collections::HashSet::new();
        for i in 0..10 {
            let leaf = resolver.leaf(&format!("h{i}.example")).unwrap();
            let (_, cert) = x509_parser::parse_x509_certificate(&leaf.cert[0]).unwrap();
            assert!(serials.insert(cert.raw_serial().to_vec()));
        }
        assert!(resolver.cache.lock().unwrap().len() <= 4);
    }
}
