//! # Credentials: which header names and query parameters carry secrets.
//!
//! The one classifier behind "no credential leaves veil", used at three places that must
//! agree: the proxy's capture fingerprints these values before an [`Exchange`](super::Exchange)
//! exists, the rules compiler refuses to export these headers (and `header_allowed` refuses
//! them again at run time), and the seal drops them by name before anything reaches disk.
//! Before veil#11 each kept its own copy of the list; a name added to one and not the others
//! would have leaked through the stale copy, so the list lives here once.
//!
//! Pure functions over names: this module never sees a value's secret except to split a
//! `Bearer` token off its scheme ([`secret_of`]), and it keeps nothing.

use std::borrow::Cow;

/// What a credential header carries, which decides whether its fingerprint attributes spend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialHeader {
    /// The app's key for the upstream provider (`authorization`, `x-api-key`, `api-key`,
    /// `x-goog-api-key`): its fingerprint becomes the exchange's API-key fingerprint.
    ApiKey,
    /// A credential for a proxy on the way (`proxy-authorization`): secret, but not the key
    /// the provider bills.
    ProxyAuth,
    /// A session cookie (`cookie` on requests, `set-cookie` on responses).
    Cookie,
    /// A token that goes with a key or stands in for one (AWS `x-amz-security-token`, a
    /// temporary credential's session token; the generic `x-auth-token` and `x-access-token`):
    /// secret, but not the key the provider bills (for AWS that is the access key ID in
    /// `authorization`).
    SessionToken,
}

/// Every credential header, lowercase, with its kind. Sources: RFC 9110 §11.6.2
/// (`authorization`), §11.7.2 (`proxy-authorization`), RFC 6265 (`cookie`, `set-cookie`), and
/// the providers' own key headers: Anthropic `x-api-key`, Azure OpenAI `api-key`, Gemini
/// `x-goog-api-key`, AWS `x-amz-security-token` (SigV4 with temporary credentials); Azure API
/// Management's subscription key `ocp-apim-subscription-key` (Azure OpenAI behind a gateway);
/// and the common token headers `x-auth-token` and `x-access-token` of other gateways.
const HEADERS: &[(&str, CredentialHeader)] = &[
    ("authorization", CredentialHeader::ApiKey),
    ("proxy-authorization", CredentialHeader::ProxyAuth),
    ("x-api-key", CredentialHeader::ApiKey),
    ("api-key", CredentialHeader::ApiKey),
    ("x-goog-api-key", CredentialHeader::ApiKey),
    ("cookie", CredentialHeader::Cookie),
    ("set-cookie", CredentialHeader::Cookie),
    ("x-amz-security-token", CredentialHeader::SessionToken),
    ("ocp-apim-subscription-key", CredentialHeader::ApiKey),
    ("x-auth-token", CredentialHeader::SessionToken),
    ("x-access-token", CredentialHeader::SessionToken),
];

/// Query parameters whose values are credentials: Gemini's `?key=`, OAuth's `access_token`, and
/// the common spellings of API keys, tokens, passwords and signed-URL signatures; OAuth 2.0's
/// `client_secret`, `refresh_token`, `id_token` and authorization `code` (RFC 6749 §4.1.2,
/// §2.3.1, §6; OpenID Connect Core §2). Lowercase; compared after
/// percent-decoding and lowercasing the name (see [`is_credential_param`]).
const PARAMS: &[&str] = &[
    "key",
    "api_key",
    "api-key",
    "apikey",
    "x-goog-api-key",
    "x-api-key",
    "api_token",
    "access_token",
    "access-token",
    "refresh_token",
    "id_token",
    "client_secret",
    "code",
    "token",
    "auth",
    "secret",
    "password",
    "passwd",
    "sig",
    "signature",
    // SigV4 presigned URLs (AWS "Authenticating requests: using query parameters").
    "x-amz-signature",
    "x-amz-credential",
    "x-amz-security-token",
];

/// The credential header names, lowercase, in a fixed order. For callers that match patterns
/// against the names (the rules compiler's `[headers] allow` globs) rather than test one name.
pub fn credential_headers() -> impl Iterator<Item = &'static str> + Clone {
    HEADERS.iter().map(|(name, _)| *name)
}

/// The kind of credential header `name` is, compared ASCII case-insensitively (header names
/// are case-insensitive, RFC 9110 §5.1); `None` when it carries no credential. `name` is taken
/// as is: a caller holding untrusted text trims it first.
pub fn classify_header(name: &str) -> Option<CredentialHeader> {
    ranked_header(name).map(|(_, kind)| kind)
}

/// [`classify_header`] with the header's rank: its position in the list above, so
/// `authorization` comes first and the providers' own key headers before a gateway's. With
/// several key headers, the lowest rank names the exchange's API key.
pub fn ranked_header(name: &str) -> Option<(usize, CredentialHeader)> {
    HEADERS
        .iter()
        .position(|(c, _)| c.eq_ignore_ascii_case(name))
        .map(|i| (i, HEADERS[i].1))
}

/// True when header `name` (any case) carries a credential.
pub fn is_credential_header(name: &str) -> bool {
    classify_header(name).is_some()
}

/// True when query parameter `name` carries a credential: `name` is percent-decoded (invalid
/// escapes kept as they are, `+` read as a space) and lowercased first, so `k%65y` and `KEY`
/// are caught like `key`.
pub fn is_credential_param(name: &str) -> bool {
    let decoded = percent_decode(name).to_ascii_lowercase();
    PARAMS.contains(&decoded.as_str())
}

/// The part of credential header `name`'s `value` that names the key: the token of
/// `Bearer <token>` for `authorization` and `proxy-authorization` (scheme matched in any
/// case); for an AWS SigV4 `authorization` (`AWS4-HMAC-SHA256 Credential=<AKID>/<date>/
/// <region>/<service>/aws4_request, SignedHeaders=…, Signature=…`, AWS "Signature Version 4"
/// reference), [`sigv4_key`] of its access key ID, because the rest changes with every
/// request while spend per key needs one fingerprint per key; else the whole value. Trimmed
/// either way. Splitting the scheme off makes the same key sent as `Bearer k` and as
/// `x-api-key: k` fingerprint alike.
pub fn secret_of<'a>(name: &str, value: &'a str) -> Cow<'a, str> {
    if (name.eq_ignore_ascii_case("authorization")
        || name.eq_ignore_ascii_case("proxy-authorization"))
        && let Some((scheme, token)) = value.trim().split_once(' ')
    {
        if scheme.eq_ignore_ascii_case("bearer") {
            return Cow::Borrowed(token.trim());
        }
        if scheme.eq_ignore_ascii_case("aws4-hmac-sha256")
            && let Some(key) = token
                .split(',')
                .find_map(|f| f.trim().strip_prefix("Credential="))
                .and_then(sigv4_key)
        {
            return Cow::Owned(key);
        }
    }
    Cow::Borrowed(value.trim())
}

/// What a SigV4 credential scope (`<AKID>/<date>/<region>/<service>/aws4_request`, from the
/// `authorization` header or a presigned URL's `X-Amz-Credential`, percent-decoded) is
/// fingerprinted as: its access key ID under a label of its own. The ID is not a secret
/// (it shows in CloudTrail and error messages), so the label keeps its fingerprint apart from
/// a bearer token's that happens to be the same text. `None` without an ID. Attribution by
/// access key ID is what the request claims, as with any key: veil does not verify
/// signatures.
pub fn sigv4_key(scope: &str) -> Option<String> {
    let akid = scope.split('/').next().filter(|k| !k.is_empty())?;
    Some(format!("aws-sigv4\0{akid}"))
}

/// Percent-decodes `s` (invalid escapes are kept as they are, `+` becomes a space).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex_val(b[i + 1]), hex_val(b[i + 2]))
        {
            out.push(h * 16 + l);
            i += 3;
        } else {
            out.push(if b[i] == b'+' { b' ' } else { b[i] });
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_val(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_header_classifies_in_any_case() {
        for name in credential_headers() {
            assert!(is_credential_header(name), "{name}");
            assert!(is_credential_header(&name.to_ascii_uppercase()), "{name}");
            assert_eq!(name, name.to_ascii_lowercase(), "the list is lowercase");
        }
        assert_eq!(credential_headers().count(), 11);
    }

    #[test]
    fn kinds_separate_the_billed_key_from_other_secrets() {
        for name in ["authorization", "X-Api-Key", "api-key", "x-goog-api-key"] {
            assert_eq!(
                classify_header(name),
                Some(CredentialHeader::ApiKey),
                "{name}"
            );
        }
        assert_eq!(
            classify_header("Proxy-Authorization"),
            Some(CredentialHeader::ProxyAuth)
        );
        assert_eq!(classify_header("cookie"), Some(CredentialHeader::Cookie));
        assert_eq!(
            classify_header("set-cookie"),
            Some(CredentialHeader::Cookie)
        );
        assert_eq!(
            classify_header("X-Amz-Security-Token"),
            Some(CredentialHeader::SessionToken)
        );
        assert_eq!(
            classify_header("Ocp-Apim-Subscription-Key"),
            Some(CredentialHeader::ApiKey)
        );
        for name in ["X-Auth-Token", "x-access-token"] {
            assert_eq!(
                classify_header(name),
                Some(CredentialHeader::SessionToken),
                "{name}"
            );
        }
    }

    #[test]
    fn ordinary_and_near_miss_headers_are_not_credentials() {
        for name in [
            "content-type",
            "x-request-id",
            "x-api-key-id",
            "authorization-hint",
            "cookies",
            "",
        ] {
            assert_eq!(classify_header(name), None, "{name:?}");
        }
    }

    #[test]
    fn params_match_after_percent_decoding_and_lowercasing() {
        for name in [
            "key",
            "KEY",
            "k%65y",
            "k%45Y",
            "access_token",
            "api%5Fkey",
            "Signature",
            "X-Amz-Signature",
            "X-Amz-Credential",
            "x-api-key",
            "client_secret",
            "Password",
            "code",
            "refresh_token",
        ] {
            assert!(is_credential_param(name), "{name}");
        }
        for name in ["alt", "keys", "k%6", "%zzkey", "model", ""] {
            assert!(!is_credential_param(name), "{name}");
        }
    }

    #[test]
    fn secret_of_strips_the_bearer_scheme_only_where_it_belongs() {
        assert_eq!(secret_of("authorization", " Bearer  sk-1 "), "sk-1");
        assert_eq!(secret_of("Authorization", "bearer sk-1"), "sk-1");
        assert_eq!(secret_of("proxy-authorization", "BEARER t"), "t");
        // Other schemes and other headers keep the whole (trimmed) value.
        assert_eq!(secret_of("authorization", "Basic dTpw"), "Basic dTpw");
        assert_eq!(secret_of("x-api-key", "Bearer sk-1"), "Bearer sk-1");
        assert_eq!(secret_of("x-api-key", " sk-1\t"), "sk-1");
    }

    #[test]
    fn sigv4_authorization_is_named_by_its_access_key_id() {
        let sig = |date: &str, signature: &str| {
            format!(
                "AWS4-HMAC-SHA256 Credential=AKIAEXAMPLEKEY/{date}/us-east-1/bedrock/aws4_request, \
                 SignedHeaders=host;x-amz-date, Signature={signature}"
            )
        };
        // Two requests, one key: the same secret part, so one fingerprint, labelled apart
        // from a bearer token of the same text.
        let key = "aws-sigv4\0AKIAEXAMPLEKEY";
        assert_eq!(secret_of("authorization", &sig("20261130", "ab12")), key);
        assert_eq!(secret_of("Authorization", &sig("20261201", "cd34")), key);
        assert_ne!(secret_of("authorization", "Bearer AKIAEXAMPLEKEY"), key);
        // A presigned URL's scope names the same key.
        assert_eq!(
            sigv4_key("AKIAEXAMPLEKEY/20261130/us-east-1/bedrock/aws4_request").as_deref(),
            Some(key)
        );
        // Without a credential scope the whole value stays the secret.
        let odd = "AWS4-HMAC-SHA256 SignedHeaders=host, Signature=ab";
        assert_eq!(secret_of("authorization", odd), odd);
        let empty = "AWS4-HMAC-SHA256 Credential=/x, Signature=ab";
        assert_eq!(secret_of("authorization", empty), empty);
    }
}
