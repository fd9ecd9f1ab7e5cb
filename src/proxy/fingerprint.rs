//! # Fingerprint: credentials turned into keyed fingerprints before anything is recorded.
//!
//! Called by the forward stage when it starts a recording: it receives the request head (and
//! the response head) and hands back the headers and path as they are recorded, every
//! credential replaced by `fp_` + 16 hex, plus the API key's fingerprint for spend per key.
//! Which headers and query parameters are credentials is
//! [`exchange::credentials`](crate::exchange::credentials)'s call. The raw credential never
//! leaves this module: it is never stored, logged or put in an `Exchange`.

use http::HeaderMap;

use crate::exchange::Headers;
use crate::exchange::credentials::{self, CredentialHeader};
use crate::keys::DerivedKey;

/// Keyed fingerprints of credentials (`fp_` + 16 hex), so spend can be attributed per key
/// without ever storing the key. Which headers and query parameters are credentials is
/// [`credentials`]'s call, the same list the rules and the seal use.
#[derive(Debug, Clone)]
pub struct Fingerprinter {
    key: DerivedKey,
}

impl Fingerprinter {
    /// A fingerprinter under `key` (`Purpose::Fingerprint` of the identity master key).
    pub fn new(key: DerivedKey) -> Self {
        Fingerprinter { key }
    }

    /// `fp_` + the first 8 bytes of the keyed BLAKE3 of `secret`, in hex.
    pub fn fingerprint(&self, secret: &str) -> String {
        let hex = self.key.mac(secret.as_bytes()).to_hex();
        let mut out = String::with_capacity(19);
        out.push_str("fp_");
        out.push_str(&hex[..16]);
        out
    }

    /// The recorded copy of `headers`: credential values replaced by fingerprints, lowercase
    /// names, wire order. Returns the headers and the API key's fingerprint, if any: with
    /// several key headers, the one [`credentials::ranked_header`] ranks first (`authorization`
    /// first), so the choice does not depend on the header map's order.
    pub fn record_headers(&self, headers: &HeaderMap) -> (Headers, Option<String>) {
        let bytes = headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len())
            .sum();
        let mut out = Headers::with_capacity(headers.len(), bytes);
        // The key's fingerprint with its rank (lower is preferred; a subprotocol's key last).
        let mut api_key: Option<(usize, String)> = None;
        for (name, value) in headers {
            let name = name.as_str();
            let text = String::from_utf8_lossy(value.as_bytes());
            if let Some((rank, kind)) = credentials::ranked_header(name) {
                let fp = self.fingerprint(&credentials::secret_of(name, &text));
                out.push(name, &fp);
                if kind == CredentialHeader::ApiKey
                    && api_key.as_ref().is_none_or(|(r, _)| rank < *r)
                {
                    api_key = Some((rank, fp));
                }
            } else if name == "sec-websocket-protocol" {
                let (value, key) = self.record_subprotocols(&text);
                if api_key.is_none() {
                    api_key = key.map(|k| (usize::MAX, k));
                }
                out.push(name, &value);
            } else {
                out.push(name, &text);
            }
        }
        (out, api_key.map(|(_, fp)| fp))
    }

    /// A `Sec-WebSocket-Protocol` value (RFC 6455 §11.3.4: comma-separated subprotocol
    /// names) with credentials fingerprinted. A browser cannot set headers on a WebSocket, so
    /// APIs take the key as a subprotocol: OpenAI's Realtime API as
    /// `openai-insecure-api-key.<KEY>`, others as an entry of its own after `token` or
    /// `access_token`, or a bare JWT. So a name is kept only when it looks like a protocol
    /// name (at most 32 characters of `a-z 0-9 - . _`, naming no credential, not following
    /// an entry that does); `<label>.<secret>` with a credential label becomes
    /// `<label>.fp_…`; any other name becomes its fingerprint. Returns the value and the
    /// first fingerprint.
    fn record_subprotocols(&self, value: &str) -> (String, Option<String>) {
        let mut key = None;
        let mut after_label = false;
        let mut fingerprint = |secret: &str| {
            let fp = self.fingerprint(secret);
            key.get_or_insert_with(|| fp.clone());
            fp
        };
        let names: Vec<String> = value
            .split(',')
            .map(|name| {
                let name = name.trim();
                let follows_label = std::mem::replace(&mut after_label, false);
                if let Some((label, secret)) = name.split_once('.')
                    && names_a_credential(label)
                    && !secret.is_empty()
                {
                    return format!("{label}.{}", fingerprint(secret));
                }
                let shaped = name.len() <= 32
                    && name.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b)
                    });
                if shaped && !follows_label {
                    after_label = names_a_credential(name);
                    name.to_string()
                } else {
                    fingerprint(name)
                }
            })
            .collect();
        (names.join(", "), key)
    }

    /// `path?query` with credential query parameters fingerprinted. Returns the path and the
    /// fingerprint of the first credential parameter.
    pub fn record_path(&self, path_and_query: &str) -> (String, Option<String>) {
        let Some((path, query)) = path_and_query.split_once('?') else {
            return (path_and_query.to_string(), None);
        };
        let mut api_key = None;
        let mut out = String::with_capacity(path_and_query.len());
        out.push_str(path);
        out.push('?');
        for (i, pair) in query.split('&').enumerate() {
            if i > 0 {
                out.push('&');
            }
            match pair.split_once('=') {
                Some((k, v)) if credentials::is_credential_param(k) => {
                    // A presigned URL's `X-Amz-Credential` names its key like SigV4's header.
                    let scope = k
                        .eq_ignore_ascii_case("x-amz-credential")
                        .then(|| percent_encoding::percent_decode_str(v).decode_utf8_lossy())
                        .and_then(|scope| credentials::sigv4_key(&scope));
                    let fp = self.fingerprint(scope.as_deref().unwrap_or(v));
                    api_key.get_or_insert_with(|| fp.clone());
                    out.push_str(k);
                    out.push('=');
                    out.push_str(&fp);
                }
                _ => out.push_str(pair),
            }
        }
        (out, api_key)
    }
}

/// True when a subprotocol label names a credential (`openai-insecure-api-key`, `token`,
/// `auth-bearer`...).
fn names_a_credential(label: &str) -> bool {
    let label = label.to_ascii_lowercase();
    ["key", "token", "auth", "secret", "bearer"]
        .iter()
        .any(|w| label.contains(w))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `record_headers`' fields as owned pairs, for indexing.
    fn owned((h, key): (Headers, Option<String>)) -> (Vec<(String, String)>, Option<String>) {
        let pairs = h
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        (pairs, key)
    }

    fn fingerprinter() -> Fingerprinter {
        let key = crate::keys::MasterKey::from_bytes(crate::keys::KeyId(1), [3; 32]);
        Fingerprinter::new(key.derive(crate::keys::Purpose::Fingerprint))
    }

    #[test]
    fn a_sigv4_key_has_one_fingerprint_in_a_header_and_in_a_presigned_url() {
        let fp = fingerprinter();
        let mut h = HeaderMap::new();
        h.insert(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=AKIAEXAMPLEKEY/20261130/us-east-1/bedrock/aws4_request, \
             SignedHeaders=host;x-amz-date, Signature=0badc0de"
                .parse()
                .unwrap(),
        );
        let (headers, from_header) = owned(fp.record_headers(&h));
        assert!(!headers[0].1.contains("AKIA") && !headers[0].1.contains("0badc0de"));
        let (path, from_url) = fp.record_path(
            "/model/m/invoke?X-Amz-Algorithm=AWS4-HMAC-SHA256\
             &X-Amz-Credential=AKIAEXAMPLEKEY%2F20261201%2Fus-east-1%2Fbedrock%2Faws4_request\
             &X-Amz-Signature=feedface",
        );
        assert!(from_header.is_some());
        assert_eq!(from_url, from_header, "one key, one fingerprint");
        assert!(
            !path.contains("AKIA") && !path.contains("feedface"),
            "{path}"
        );
        // Not the fingerprint of a bearer token with the same text.
        assert_ne!(from_header.unwrap(), fp.fingerprint("AKIAEXAMPLEKEY"));
    }

    #[test]
    fn a_key_sent_as_a_websocket_subprotocol_is_fingerprinted() {
        let fp = fingerprinter();
        let mut h = HeaderMap::new();
        h.insert(
            "sec-websocket-protocol",
            "realtime, openai-insecure-api-key.sk-proj-SECRET, openai-beta.realtime-v1"
                .parse()
                .unwrap(),
        );
        let (headers, api_key) = owned(fp.record_headers(&h));
        let want = fp.fingerprint("sk-proj-SECRET");
        assert_eq!(
            headers[0].1,
            format!("realtime, openai-insecure-api-key.{want}, openai-beta.realtime-v1")
        );
        assert_eq!(api_key, Some(want));

        // A key as its own entry after `token`, a bare JWT, a label that is not a credential
        // word: fingerprinted whole; protocol names stay.
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.SECRETsig";
        for (value, raw) in [
            (
                "token, 0123456789abcdef0123456789abcdef",
                "0123456789abcdef0123456789abcdef",
            ),
            (&*format!("graphql-ws, {jwt}"), jwt),
            (
                "base64url.bearer.authorization.k8s.io.SECRETtok",
                "SECRETtok",
            ),
        ] {
            let mut h = HeaderMap::new();
            h.insert("sec-websocket-protocol", value.parse().unwrap());
            let (headers, key) = owned(fp.record_headers(&h));
            assert!(!headers[0].1.contains(raw), "{value} -> {}", headers[0].1);
            assert!(key.is_some(), "{value}");
        }
        let mut h = HeaderMap::new();
        h.insert(
            "sec-websocket-protocol",
            "graphql-transport-ws, v10.stomp".parse().unwrap(),
        );
        let (headers, key) = owned(fp.record_headers(&h));
        assert_eq!(headers[0].1, "graphql-transport-ws, v10.stomp");
        assert_eq!(key, None);
    }

    #[test]
    fn credentials_are_fingerprinted_never_kept() {
        let fp = fingerprinter();
        let mut h = HeaderMap::new();
        h.insert("authorization", "Bearer sk-live-SECRET".parse().unwrap());
        h.insert("x-api-key", "sk-live-SECRET".parse().unwrap());
        h.insert("cookie", "session=COOKIESECRET".parse().unwrap());
        h.insert("content-type", "application/json".parse().unwrap());
        let (headers, api_key) = owned(fp.record_headers(&h));
        let text = format!("{headers:?}");
        assert!(!text.contains("SECRET"), "{text}");
        // The same key via Bearer or x-api-key has the same fingerprint.
        assert_eq!(headers[0].1, headers[1].1);
        assert_eq!(api_key.as_deref(), Some(headers[0].1.as_str()));
        assert!(headers.contains(&("content-type".into(), "application/json".into())));

        let (path, key) = fp.record_path("/v1beta/models/g:generateContent?alt=sse&key=AIzaSECRET");
        assert!(!path.contains("SECRET"), "{path}");
        assert!(path.starts_with("/v1beta/models/g:generateContent?alt=sse&key=fp_"));
        assert!(key.is_some());
        assert_eq!(fp.record_path("/v1/x").0, "/v1/x");
        // OAuth tokens and percent-encoded names are credentials too.
        let (path, _) = fp.record_path("/x?access_token=ya29.SECRET&k%65y=AIzaSECRET2&alt=json");
        assert!(!path.contains("SECRET"), "{path}");
        assert!(path.ends_with("&alt=json"), "{path}");
    }

    /// With several key headers the exchange's key is `authorization`'s, then the providers'
    /// own headers' before a gateway's, whatever order the header map iterates in.
    #[test]
    fn the_api_key_is_chosen_by_rank_not_by_map_order() {
        let fp = fingerprinter();
        let names = [
            "ocp-apim-subscription-key",
            "x-goog-api-key",
            "api-key",
            "x-api-key",
        ];
        for first in 0..names.len() {
            let mut h = HeaderMap::new();
            for k in 0..names.len() {
                let name = names[(first + k) % names.len()];
                h.insert(name, format!("KEY-{name}").parse().unwrap());
            }
            let (_, key) = fp.record_headers(&h);
            assert_eq!(key, Some(fp.fingerprint("KEY-x-api-key")), "first {first}");
            h.insert("authorization", "Bearer KEY-auth".parse().unwrap());
            let (_, key) = fp.record_headers(&h);
            assert_eq!(key, Some(fp.fingerprint("KEY-auth")), "first {first}");
        }
        let mut h = HeaderMap::new();
        h.insert("ocp-apim-subscription-key", "APIM".parse().unwrap());
        h.insert("x-auth-token", "TOKEN".parse().unwrap());
        let (headers, key) = owned(fp.record_headers(&h));
        assert_eq!(
            key,
            Some(fp.fingerprint("APIM")),
            "x-auth-token is not the billed key"
        );
        assert!(!format!("{headers:?}").contains("TOKEN"), "{headers:?}");
    }
}
