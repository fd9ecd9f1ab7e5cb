//! # Headers: what veil changes in a message's head on its way through.
//!
//! Called by the forward stage for every forwarded request and response: veil's own
//! `x-veil-*` tags are taken off (they tag the record and never go upstream), hop-by-hop
//! headers are dropped (RFC 9110 §7.6.1), h2 cookie crumbs are joined for HTTP/1.1
//! upstreams, and the content encoding is read for the record. Pure functions on a
//! [`HeaderMap`]: this module never sees bodies, never logs and never fingerprints or stores a
//! credential (that is [`Fingerprinter`](super::Fingerprinter)'s job).

use crate::exchange::Headers;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// The `content-encoding` of a message, lowercased; `None` for none or `identity`.
pub(super) fn content_encoding(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase())
        .filter(|v| !v.is_empty() && v != "identity")
}

/// Removes the `x-veil-*` headers (they tag the record and never go upstream) and returns them.
pub(super) fn take_veil_headers(headers: &mut HeaderMap) -> Headers {
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|n| n.as_str().starts_with("x-veil-"))
        .cloned()
        .collect();
    let mut tags = Headers::new();
    for name in names {
        for value in headers.get_all(&name) {
            tags.push(name.as_str(), &String::from_utf8_lossy(value.as_bytes()));
        }
        headers.remove(&name);
    }
    tags
}

/// The hop-by-hop headers (RFC 9110 §7.6.1) always removed, besides `te` (kept when it is
/// `trailers`) and whatever `Connection` lists; `keep-alive` and `proxy-connection` are the
/// legacy ones.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "proxy-authenticate",
    "proxy-authorization",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "keep-alive",
    "proxy-connection",
];

/// Hop-by-hop headers (RFC 9110 §7.6.1) belong to one connection, not to the message.
///
/// One pass over the names first: most messages carry none of these, and removing each
/// absent name hashed it (nine lookups per message, twice per exchange: ~1 % of the
/// forwarding threads at 64 connections, stop 59's profile).
pub(super) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let any = headers
        .keys()
        .any(|n| n == header::TE || HOP_BY_HOP.contains(&n.as_str()));
    if !any {
        return;
    }
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    if headers
        .get(header::TE)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"trailers"))
    {
        headers.remove(header::TE);
    }
}

/// h2 sends one `cookie` header per crumb; HTTP/1.1 upstreams expect one header.
pub(super) fn join_cookies(headers: &mut HeaderMap) {
    let cookies: Vec<&[u8]> = headers
        .get_all(header::COOKIE)
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    if cookies.len() > 1 {
        let joined = cookies.join(&b"; "[..]);
        if let Ok(value) = HeaderValue::from_bytes(&joined) {
            headers.insert(header::COOKIE, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veil_headers_are_taken_and_hop_by_hop_stripped() {
        let mut h = HeaderMap::new();
        h.insert("x-veil-feature", "seo".parse().unwrap());
        h.insert("x-veil-user", "alice".parse().unwrap());
        h.insert("connection", "keep-alive, x-custom".parse().unwrap());
        h.insert("x-custom", "1".parse().unwrap());
        h.insert("te", "gzip".parse().unwrap());
        h.insert("content-type", "application/json".parse().unwrap());
        let tags = take_veil_headers(&mut h);
        strip_hop_by_hop(&mut h);
        assert_eq!(tags.len(), 2);
        assert!(h.keys().all(|k| !k.as_str().starts_with("x-veil-")));
        assert!(
            h.get("x-custom").is_none() && h.get("connection").is_none() && h.get("te").is_none()
        );
        assert!(h.get("content-type").is_some());
    }

    /// Each hop-by-hop name alone, without a `Connection` header, is still stripped: the
    /// pass that skips messages with none of them must know every one.
    #[test]
    fn every_hop_by_hop_name_is_stripped_on_its_own() {
        for name in [
            "connection",
            "proxy-authenticate",
            "proxy-authorization",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "keep-alive",
            "proxy-connection",
            "te",
        ] {
            let mut h = HeaderMap::new();
            h.insert("content-type", "application/json".parse().unwrap());
            h.insert(HeaderName::from_static(name), "x".parse().unwrap());
            strip_hop_by_hop(&mut h);
            assert!(h.get(name).is_none(), "{name} was kept");
            assert_eq!(h.len(), 1, "{name}");
        }
        // `te: trailers` is the one value that may travel.
        let mut h = HeaderMap::new();
        h.insert("te", "trailers".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.get("te").unwrap(), "trailers");
    }

    #[test]
    fn cookies_are_joined_for_http1() {
        let mut h = HeaderMap::new();
        h.append("cookie", "a=1".parse().unwrap());
        h.append("cookie", "b=2".parse().unwrap());
        join_cookies(&mut h);
        assert_eq!(h.get_all("cookie").iter().count(), 1);
        assert_eq!(h.get("cookie").unwrap(), "a=1; b=2");
    }
}
