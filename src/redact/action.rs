//! # Actions that need keys: pseudonyms, keyed hashes, field encryption.
//!
//! Every output here is keyed, never a plain hash: a plain BLAKE3 of an email or a short
//! prompt is reversible by dictionary. Keys come from the [`Keyring`]:
//! - pseudonyms (`u_…`, `p_…`, `[EMAIL:e_…]`) use `identity().derive(Pseudonym)`,
//! - content hashes (`h_…`) use `identity().derive(ContentHash)`,
//!
//! both derived from the *oldest* master secret so they stay stable across rotations and
//! across instances sharing the keys dir; and
//! - `encrypt` uses AES-256-GCM under `current().derive(FieldEncryption)` with a random 96-bit
//!   nonce, emitted as `enc:v1:<key id>:<base64url(nonce ‖ ciphertext ‖ tag)>`; any older key
//!   id stays decryptable with [`decrypt_field`].

use std::fmt;

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::keys::{DerivedKey, KeyId, Keyring, Purpose};

/// Prefix of encrypted field values.
pub const ENC_PREFIX: &str = "enc:v1:";
/// Associated data bound into every field ciphertext: a value cannot be replayed as
/// anything but a veil v1 field.
const ENC_AAD: &[u8] = b"veil field v1";
/// Hex digits in pseudonyms (64 bits): collisions are negligible below ~10^9 users, and
/// short enough to read in a dashboard.
const PSEUDONYM_HEX: usize = 16;
/// Hex digits in content hashes (128 bits): content is compared for equality across
/// millions of records.
const HASH_HEX: usize = 32;

/// The keys a compiled rules object needs. `Debug` never shows key material.
pub(crate) struct FieldKeys {
    pseudonym: DerivedKey,
    content: DerivedKey,
    enc_id: KeyId,
    cipher: Aes256Gcm,
}

impl fmt::Debug for FieldKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FieldKeys(encryption key {}, <redacted>)", self.enc_id)
    }
}

fn hex(bytes: &[u8], n: usize) -> String {
    let mut s = String::with_capacity(n);
    for b in bytes {
        if s.len() >= n {
            break;
        }
        s.push_str(&format!("{b:02x}"));
    }
    s.truncate(n);
    s
}

fn cipher(key: &DerivedKey) -> Aes256Gcm {
    Aes256Gcm::new(key.bytes().into())
}

impl FieldKeys {
    pub(crate) fn new(keys: &Keyring) -> FieldKeys {
        let current = keys.current();
        FieldKeys {
            pseudonym: keys.identity().derive(Purpose::Pseudonym),
            content: keys.identity().derive(Purpose::ContentHash),
            enc_id: current.id(),
            cipher: cipher(&current.derive(Purpose::FieldEncryption)),
        }
    }

    /// `u_<16 hex>`: the user pseudonym.
    pub(crate) fn user_pseudonym(&self, id: &str) -> crate::keys::UserPseudonym {
        crate::keys::pseudonymize_user_with(&self.pseudonym, id)
    }

    /// [`FieldKeys::user_pseudonym`] as text, for a `pseudonymize` action on a JSON leaf.
    pub(crate) fn user(&self, id: &str) -> String {
        self.user_pseudonym(id).into_string()
    }

    /// `<p>_<16 hex>` keyed by `domain` (a detector label or `field`).
    pub(crate) fn tagged(&self, prefix: &str, domain: &[u8], value: &str) -> String {
        let mut h = blake3::Hasher::new_keyed(self.pseudonym.bytes());
        h.update(domain);
        h.update(value.as_bytes());
        format!("{prefix}_{}", hex(h.finalize().as_bytes(), PSEUDONYM_HEX))
    }

    /// `h_<32 hex>`: keyed content hash.
    pub(crate) fn hash(&self, value: &str) -> String {
        format!(
            "h_{}",
            hex(self.content.mac(value.as_bytes()).as_bytes(), HASH_HEX)
        )
    }

    /// Inline hash of a detector match: `h_<16 hex>`, domain-separated by detector.
    pub(crate) fn hash_short(&self, domain: &[u8], value: &str) -> String {
        let mut h = blake3::Hasher::new_keyed(self.content.bytes());
        h.update(domain);
        h.update(value.as_bytes());
        format!("h_{}", hex(h.finalize().as_bytes(), PSEUDONYM_HEX))
    }

    /// `enc:v1:<key id>:<base64url>`.
    pub(crate) fn encrypt(&self, plaintext: &str) -> String {
        let nonce: [u8; 12] = rand::random();
        let ct = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext.as_bytes(),
                    aad: ENC_AAD,
                },
            )
            .expect("invariant: AES-GCM encryption of an in-memory buffer cannot fail");
        let mut blob = Vec::with_capacity(12 + ct.len());
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(&ct);
        format!(
            "{ENC_PREFIX}{}:{}",
            self.enc_id,
            URL_SAFE_NO_PAD.encode(blob)
        )
    }
}

/// Why an `enc:v1:` value could not be decrypted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecryptError(String);

impl fmt::Display for DecryptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DecryptError {}

/// Decrypts a value produced by the `encrypt` action, with whichever key id it names.
pub fn decrypt_field(value: &str, keys: &Keyring) -> Result<String, DecryptError> {
    let err = |m: &str| DecryptError(m.to_string());
    let rest = value
        .trim()
        .strip_prefix(ENC_PREFIX)
        .ok_or_else(|| err("not an encrypted field (expected enc:v1:<key id>:<data>)"))?;
    let (id, data) = rest.split_once(':').ok_or_else(|| err("missing key id"))?;
    let id: KeyId = id.parse().map_err(|_| err("bad key id"))?;
    let key = keys
        .get(id)
        .ok_or_else(|| DecryptError(format!("key {id} is not in this keyring")))?;
    let blob = URL_SAFE_NO_PAD
        .decode(data)
        .map_err(|_| err("data is not base64url"))?;
    if blob.len() < 12 + 16 {
        return Err(err("data too short"));
    }
    let (nonce, ct) = blob.split_at(12);
    let plain = cipher(&key.derive(Purpose::FieldEncryption))
        .decrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: ct,
                aad: ENC_AAD,
            },
        )
        .map_err(|_| err("authentication failed (wrong key or tampered value)"))?;
    String::from_utf8(plain).map_err(|_| err("plaintext is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::MasterKey;

    fn ring(b: u8) -> Keyring {
        Keyring::single(MasterKey::from_bytes(KeyId(1), [b; 32]))
    }

    #[test]
    fn pseudonyms_are_keyed_stable_and_shaped() {
        let a = FieldKeys::new(&ring(1));
        let b = FieldKeys::new(&ring(1));
        let c = FieldKeys::new(&ring(2));
        let u = a.user("alice");
        assert_eq!(u, b.user("alice"));
        assert_ne!(u, c.user("alice"));
        assert_ne!(u, a.user("bob"));
        assert_eq!(u.len(), 2 + PSEUDONYM_HEX);
        assert!(u.starts_with("u_") && u[2..].bytes().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(a.hash("x").len(), 2 + HASH_HEX);
        assert!(!format!("{a:?}").contains("01"));
    }

    #[test]
    fn encrypt_round_trips_and_rejects_tampering() {
        let keys = ring(3);
        let f = FieldKeys::new(&keys);
        let e = f.encrypt("hello wörld");
        assert!(e.starts_with("enc:v1:k1:"));
        assert_ne!(e, f.encrypt("hello wörld"), "random nonce");
        assert_eq!(decrypt_field(&e, &keys).unwrap(), "hello wörld");
        assert!(decrypt_field(&e, &ring(4)).is_err());
        let mut t = e.clone();
        let last = t.pop().unwrap();
        t.push(if last == 'A' { 'B' } else { 'A' });
        assert!(decrypt_field(&t, &keys).is_err());
        assert!(decrypt_field("enc:v1:k9:AAAA", &keys).is_err());
        assert!(decrypt_field("plain", &keys).is_err());
    }
}
