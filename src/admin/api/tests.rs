//! Round trips of every admin API document: the wire shape it encodes to, and back.

use std::fmt;
use std::time::Duration;

use base64::Engine;
use http::{Method, StatusCode, Uri};
use serde::Serialize;
use serde_json::json;

use super::*;
use crate::exchange::{ExchangeId, Headers, Outcome, Route};
use crate::keys::{KeyId, UserPseudonym};
use crate::seal::tests::openai_chat;

/// `v` encodes to `wire` (names and shapes) and decodes back to itself.
fn round_trip<T>(v: &T, wire: serde_json::Value)
where
    T: Serialize + serde::de::DeserializeOwned + PartialEq + fmt::Debug,
{
    let text = serde_json::to_string(v).unwrap();
    let as_value: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(as_value, wire, "wire shape");
    assert_eq!(&serde_json::from_str::<T>(&text).unwrap(), v, "decoded");
}

fn uri(s: &str) -> Uri {
    s.parse().unwrap()
}

#[test]
fn requests_round_trip_through_their_path() {
    let id = ExchangeId::new();
    let all = [
        AdminRequest::Health,
        AdminRequest::Unseal {
            id,
            reason: Some("ticket #42 & more".into()),
        },
        AdminRequest::Unseal { id, reason: None },
        AdminRequest::Forget {
            id,
            reason: Some("user asked".into()),
        },
        AdminRequest::ForgetUser {
            user: "alice@example.com/ü ?&".into(),
            reason: Some("gdpr".into()),
        },
        AdminRequest::Purge {
            older_than: Duration::from_secs(30 * 86_400),
        },
        AdminRequest::Purge {
            older_than: Duration::from_millis(1500),
        },
        AdminRequest::Compact,
        AdminRequest::ReloadKeys,
        AdminRequest::Rewrap,
        AdminRequest::ReloadRules,
        AdminRequest::Ca,
    ];
    for r in all {
        let parsed = AdminRequest::parse(&r.method(), &uri(&r.path_and_query()));
        assert_eq!(parsed.as_ref(), Ok(&r), "{}", r.path_and_query());
    }
    // What curl users type is read the same way.
    assert_eq!(
        AdminRequest::parse(&Method::POST, &uri("/v1/purge?older_than=30d")),
        Ok(AdminRequest::Purge {
            older_than: Duration::from_secs(30 * 86_400)
        })
    );
    assert_eq!(
        AdminRequest::parse(
            &Method::DELETE,
            &uri(&format!("/v1/exchanges/{id}?reason=user+asked"))
        ),
        Ok(AdminRequest::Forget {
            id,
            reason: Some("user asked".into())
        })
    );
}

#[test]
fn bad_requests_are_400_and_unknown_ones_404() {
    let status = |m: Method, u: &str| AdminRequest::parse(&m, &uri(u)).unwrap_err().status();
    assert_eq!(
        status(Method::GET, "/v1/exchanges/not-an-id"),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(status(Method::POST, "/v1/purge"), StatusCode::BAD_REQUEST);
    // See: veil#11 (item 8: an overflowing duration once wrapped to hours)
    let e = AdminRequest::parse(&Method::POST, &uri("/v1/purge?older_than=213503982334602d"))
        .unwrap_err();
    assert_eq!(e.status(), StatusCode::BAD_REQUEST);
    assert!(e.to_string().contains("too large"), "{e}");
    assert_eq!(
        status(Method::DELETE, "/v1/users/%zz/exchanges"),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        status(Method::DELETE, "/v1/users//exchanges"),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(status(Method::POST, "/v1/exchanges"), StatusCode::NOT_FOUND);
    assert_eq!(status(Method::POST, "/healthz"), StatusCode::NOT_FOUND);
    assert_eq!(status(Method::GET, "/v1/compact"), StatusCode::NOT_FOUND);
}

#[test]
fn request_debug_and_endpoint_never_show_the_raw_user() {
    let r = AdminRequest::ForgetUser {
        user: "alice@example.com".into(),
        reason: None,
    };
    assert!(!format!("{r:?}").contains("alice"), "{r:?}");
    assert!(!r.endpoint().contains("alice"));
    assert!(r.is_destructive() && !AdminRequest::Compact.is_destructive());
}

#[test]
fn error_documents_round_trip() {
    let a = ExchangeId::new();
    let b = ExchangeId::new();
    round_trip(
        &ErrorResponse {
            error: "no such admin endpoint".into(),
        },
        json!({"error": "no such admin endpoint"}),
    );
    let lists = DestroyFailure {
        error: "audit log: Is a directory".into(),
        destroyed: vec![a],
        pending: vec![],
        not_destroyed: vec![b],
        request_id: None,
        forgotten: None,
        user: None,
        purged: None,
    };
    let base = json!({"error": "audit log: Is a directory", "destroyed": [a.to_string()],
        "pending": [], "not_destroyed": [b.to_string()]});
    round_trip(&lists, base.clone());
    let mut wire = base.clone();
    wire["request_id"] = json!(b.to_string());
    wire["forgotten"] = json!(false);
    round_trip(
        &DestroyFailure {
            request_id: Some(b),
            forgotten: Some(false),
            ..lists.clone()
        },
        wire,
    );
    let mut wire = base.clone();
    wire["user"] = json!("u_0123456789abcdef");
    round_trip(
        &DestroyFailure {
            user: Some(UserPseudonym::parse("u_0123456789abcdef").unwrap()),
            ..lists.clone()
        },
        wire,
    );
    let mut wire = base;
    wire["purged"] = json!(1);
    round_trip(
        &DestroyFailure {
            purged: Some(1),
            ..lists
        },
        wire,
    );
}

#[test]
fn forget_and_purge_documents_round_trip() {
    let a = ExchangeId::new();
    round_trip(
        &ForgetResponse {
            request_id: a,
            forgotten: true,
            already_forgotten: false,
            error: None,
            exports: None,
        },
        json!({"request_id": a.to_string(), "forgotten": true}),
    );
    round_trip(
        &ForgetResponse {
            request_id: a,
            forgotten: false,
            already_forgotten: true,
            error: None,
            exports: None,
        },
        json!({"request_id": a.to_string(), "forgotten": false, "already_forgotten": true}),
    );
    round_trip(
        &ForgetResponse {
            request_id: a,
            forgotten: false,
            already_forgotten: false,
            error: Some("unknown".into()),
            exports: None,
        },
        json!({"request_id": a.to_string(), "forgotten": false, "error": "unknown"}),
    );
    round_trip(
        &ForgetUserResponse {
            user: UserPseudonym::parse("u_0123456789abcdef").unwrap(),
            forgotten: vec![a],
            already_forgotten: false,
            exports: None,
        },
        json!({"user": "u_0123456789abcdef", "forgotten": [a.to_string()]}),
    );
    // With the exporter's erase: counts always, lists only when not empty.
    round_trip(
        &ForgetResponse {
            request_id: a,
            forgotten: true,
            already_forgotten: false,
            error: None,
            exports: Some(crate::export::erase::Erased {
                spool_records: 2,
                spool_files: 1,
                records_removed: 0,
                records_lines: 0,
                not_reached: vec!["r-1".into()],
                errors: Vec::new(),
            }),
        },
        json!({"request_id": a.to_string(), "forgotten": true, "exports": {
            "spool_records": 2, "spool_files": 1, "records_removed": 0, "records_lines": 0,
            "not_reached": ["r-1"]
        }}),
    );
    round_trip(
        &PurgeResponse {
            purged: 1,
            ids: vec![a],
        },
        json!({"purged": 1, "ids": [a.to_string()]}),
    );
    round_trip(
        &PurgePreviewResponse {
            would_purge: 1,
            ids: vec![a],
        },
        json!({"would_purge": 1, "ids": [a.to_string()]}),
    );
    // A raw user ID where the pseudonym belongs is refused, without echoing it.
    let e = serde_json::from_value::<ForgetUserResponse>(
        json!({"user": "alice@example.com", "forgotten": []}),
    )
    .unwrap_err();
    assert!(!e.to_string().contains("alice"), "{e}");
}

#[test]
fn maintenance_documents_round_trip() {
    round_trip(
        &CompactResponse {
            segments_removed: 2,
            frames_moved: 17,
            bytes_reclaimed: 1 << 20,
        },
        json!({"segments_removed": 2, "frames_moved": 17, "bytes_reclaimed": 1048576}),
    );
    round_trip(
        &KeysReloadResponse { current: KeyId(3) },
        json!({"current": "k3"}),
    );
    round_trip(
        &RewrapResponse {
            current: KeyId(3),
            rewrapped: 40,
        },
        json!({"current": "k3", "rewrapped": 40}),
    );
    assert!(serde_json::from_value::<KeysReloadResponse>(json!({"current": "3"})).is_err());
    round_trip(
        &RulesReloadResponse {
            digest: "ab12".into(),
        },
        json!({"digest": "ab12"}),
    );
    round_trip(
        &CaResponse {
            cert: "/k/ca.pem".into(),
            bundle: "/k/ca-bundle.pem".into(),
            pem: "-----BEGIN CERTIFICATE-----\n".into(),
            proxy: "127.0.0.1:8080".into(),
        },
        json!({"cert": "/k/ca.pem", "bundle": "/k/ca-bundle.pem",
               "pem": "-----BEGIN CERTIFICATE-----\n", "proxy": "127.0.0.1:8080"}),
    );
}

#[test]
fn health_documents_round_trip() {
    let disk = RecordingHealth {
        part: "disk".into(),
        since: "2026-11-29T08:42:03.630Z".into(),
        reason: "free space below disk_reserve".into(),
    };
    let disk_wire = json!({"part": "disk", "since": "2026-11-29T08:42:03.630Z",
        "reason": "free space below disk_reserve"});
    round_trip(
        &DegradedHealth {
            status: HealthStatus::Degraded,
            sealing: None,
            recording: vec![disk.clone()],
        },
        json!({"status": "degraded", "recording": [disk_wire.clone()]}),
    );
    round_trip(
        &DegradedHealth {
            status: HealthStatus::Degraded,
            sealing: Some(SealingHealth {
                since: "2026-11-29T08:42:03.630Z".into(),
                last_error: "No space left on device (os error 28)".into(),
                failed_commits: 1,
                recoveries: 0,
                detached_failures: 12,
            }),
            recording: vec![disk],
        },
        json!({"status": "degraded", "sealing": {"since": "2026-11-29T08:42:03.630Z",
            "last_error": "No space left on device (os error 28)", "failed_commits": 1,
            "recoveries": 0, "detached_failures": 12}, "recording": [disk_wire]}),
    );
}

/// The view keeps the exact names and shapes `veil unseal` printed before the types
/// existed (veil#11): this is that document, written out by hand.
#[test]
fn exchange_view_has_the_documented_shape_and_round_trips() {
    let ex = openai_chat();
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let req = ex.request_body.bytes();
    let resp = ex.response_body.bytes();
    let headers = |h: &Headers| json!(h);
    let wire = json!({
        "id": ex.id.to_string(),
        "started_at": crate::seal::audit::rfc3339(ex.started_at),
        "timings_ms": {"request_end": 2.0, "response_headers": 300.0, "first_byte": 301.0, "end": 320.0},
        "client_addr": "127.0.0.1:50000",
        "route": {"kind": "intercept"},
        "upstream": {"scheme": "https", "host": "api.openai.com", "port": 443},
        "client_version": "HTTP/1.1",
        "method": "POST",
        "path": "/v1/chat/completions",
        "request_headers": headers(&ex.request_headers),
        "tags": [["x-veil-feature", "triage"]],
        "api_key_fingerprint": "fp_0123456789abcdef",
        "request_body": {"captured_len": req.len(), "wire_len": ex.request_body.wire_len,
            "truncated": false, "content_encoding": null, "chunks": 1,
            "wire_base64": b64(&req), "text": std::str::from_utf8(&req).unwrap()},
        "status": 200,
        "response_headers": headers(&ex.response_headers),
        "response_body": {"captured_len": resp.len(), "wire_len": ex.response_body.wire_len,
            "truncated": false, "content_encoding": null, "chunks": 1,
            "wire_base64": b64(&resp), "text": std::str::from_utf8(&resp).unwrap()},
        "outcome": {"kind": "complete"},
    });
    round_trip(&ExchangeView::of(&ex), wire);
}

#[test]
fn exchange_view_variants_round_trip() {
    let mut ex = openai_chat();
    ex.route = Route::Gateway {
        name: "openai".into(),
    };
    ex.client_addr = None;
    ex.status = None;
    ex.timings.first_byte = None;
    ex.outcome = Outcome::UpstreamFailed {
        kind: crate::exchange::UpstreamFailure::Tls,
        reason: "unknown issuer".into(),
    };
    ex.request_body.chunks = vec![bytes::Bytes::from_static(b"\xff\xfe")];
    ex.response_body.content_encoding = Some("gzip".into());
    let v = ExchangeView::of(&ex);
    let w = serde_json::to_value(&v).unwrap();
    assert_eq!(w["route"], json!({"kind": "gateway", "name": "openai"}));
    assert_eq!(
        w["outcome"],
        json!({"kind": "upstream_failed", "failure": "tls", "reason": "unknown issuer"})
    );
    assert_eq!(
        (&w["client_addr"], &w["status"]),
        (&json!(null), &json!(null))
    );
    assert_eq!(w["timings_ms"]["first_byte"], json!(null));
    assert_eq!(
        w["request_body"]["decoded_base64"],
        json!(b64_of(b"\xff\xfe"))
    );
    assert!(w["request_body"].get("text").is_none());
    assert!(w["response_body"]["decode_error"].is_string(), "{w}");
    assert_eq!(v.request_body.wire_bytes().unwrap(), b"\xff\xfe");
    let back: ExchangeView = serde_json::from_value(w).unwrap();
    assert_eq!(back, v);
    ex.outcome = Outcome::UpstreamAborted {
        reason: "reset".into(),
    };
    let v = ExchangeView::of(&ex);
    assert_eq!(
        serde_json::to_value(&v).unwrap()["outcome"],
        json!({"kind": "upstream_aborted", "reason": "reset"})
    );
    ex.outcome = Outcome::ClientAborted;
    let w = serde_json::to_value(ExchangeView::of(&ex)).unwrap();
    assert_eq!(w["outcome"], json!({"kind": "client_aborted"}));
}

fn b64_of(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// A veil of another version: a field this one does not know, or one it needs missing, is
/// an error naming the field (the client turns it into `AdminErrorKind::Unreadable`).
#[test]
fn unknown_and_missing_fields_are_errors() {
    let ex = openai_chat();
    let mut w = serde_json::to_value(ExchangeView::of(&ex)).unwrap();
    w["request_body"]["summary"] = json!("new in 2.0");
    let e = serde_json::from_value::<ExchangeView>(w.clone()).unwrap_err();
    assert!(e.to_string().contains("unknown field `summary`"), "{e}");
    w["request_body"].as_object_mut().unwrap().remove("summary");
    w.as_object_mut().unwrap().remove("outcome");
    let e = serde_json::from_value::<ExchangeView>(w.clone()).unwrap_err();
    assert!(e.to_string().contains("missing field `outcome`"), "{e}");
    w["outcome"] = json!({"kind": "complete", "reason": "x"});
    assert!(serde_json::from_value::<ExchangeView>(w.clone()).is_err());
    w["outcome"] = json!({"kind": "retried"});
    assert!(serde_json::from_value::<ExchangeView>(w).is_err());

    let e = serde_json::from_value::<PurgeResponse>(json!({"purged": 0, "ids": [], "took_ms": 3}))
        .unwrap_err();
    assert!(e.to_string().contains("unknown field `took_ms`"), "{e}");
    let e = serde_json::from_value::<DestroyFailure>(
        json!({"error": "x", "destroyed": [], "pending": []}),
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("missing field `not_destroyed`"),
        "{e}"
    );
    let e = serde_json::from_value::<DestroyFailure>(json!({"error": "x", "destroyed": [],
        "pending": [], "not_destroyed": [], "quarantined": []}))
    .unwrap_err();
    assert!(e.to_string().contains("unknown field `quarantined`"), "{e}");
}
