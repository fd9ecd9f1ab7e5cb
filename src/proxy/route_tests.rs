//! Unit tests of [`route`]: every branch, no sockets.

use super::*;
use crate::config::RawConfig;

fn settings(raw: RawConfig) -> ProxySettings {
    ProxySettings::from_raw(raw)
}

fn defaults() -> ProxySettings {
    settings(RawConfig::default())
}

/// The route of `method uri` under `s`, its target owned (so a test may drop `s`).
fn decide(method: Method, uri: &str, s: &ProxySettings) -> Route<'static> {
    let uri: Uri = uri.parse().expect("test URI parses");
    match route(
        RequestHead {
            method: &method,
            uri: &uri,
        },
        s,
    ) {
        Route::Forward {
            target,
            path_and_query,
        } => Route::Forward {
            target: Cow::Owned(target.into_owned()),
            path_and_query,
        },
        Route::Intercept { host, port } => Route::Intercept { host, port },
        Route::Tunnel { host, port } => Route::Tunnel { host, port },
        Route::Reject(why) => Route::Reject(why),
    }
}

fn rejection(r: Route) -> ProxyError {
    match r {
        Route::Reject(why) => why,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[test]
fn connect_to_an_intercepted_host_is_intercepted() {
    assert_eq!(
        decide(Method::CONNECT, "API.OpenAI.com:443", &defaults()),
        Route::Intercept {
            host: "api.openai.com".into(),
            port: 443
        }
    );
}

#[test]
fn connect_to_an_intercept_pattern_with_its_own_port() {
    let s = settings(RawConfig {
        intercept: Some(vec!["llm.internal:8443".into()]),
        ..RawConfig::default()
    });
    assert_eq!(
        decide(Method::CONNECT, "llm.internal:8443", &s),
        Route::Intercept {
            host: "llm.internal".into(),
            port: 8443
        },
        "a pattern naming a port allows that port"
    );
}

#[test]
fn connect_to_another_host_is_a_blind_tunnel() {
    assert_eq!(
        decide(Method::CONNECT, "example.com:443", &defaults()),
        Route::Tunnel {
            host: "example.com".into(),
            port: 443
        }
    );
}

#[test]
fn connect_to_a_port_not_allowed_is_refused() {
    let why = rejection(decide(Method::CONNECT, "example.com:22", &defaults()));
    assert_eq!(why.status(), StatusCode::FORBIDDEN);
    assert_eq!(why.code(), "port_not_allowed");
    assert!(why.is_refused());
    assert!(why.message().contains("port 22"), "{}", why.message());
}

#[test]
fn connect_to_loopback_is_refused_unless_local_targets_are_allowed() {
    for target in ["127.0.0.1:443", "[::1]:443", "169.254.169.254:443"] {
        let why = rejection(decide(Method::CONNECT, target, &defaults()));
        assert_eq!(why.status(), StatusCode::FORBIDDEN, "{target}");
        assert_eq!(why.code(), "destination_refused", "{target}");
        assert!(why.is_refused(), "{target}");
    }
    let open = settings(RawConfig {
        allow_local_targets: Some(true),
        ..RawConfig::default()
    });
    assert_eq!(
        decide(Method::CONNECT, "[::1]:443", &open),
        Route::Tunnel {
            host: "::1".into(),
            port: 443
        }
    );
}

#[test]
fn connect_without_a_port_is_a_bad_request() {
    let why = rejection(decide(Method::CONNECT, "example.com", &defaults()));
    assert_eq!(why.status(), StatusCode::BAD_REQUEST);
    assert_eq!(why.code(), "bad_request");
    assert!(!why.is_refused());
}

#[test]
fn connect_without_an_authority_is_a_bad_request() {
    let why = rejection(decide(Method::CONNECT, "/just/a/path", &defaults()));
    assert_eq!(why.status(), StatusCode::BAD_REQUEST);
    assert_eq!(why.message(), "CONNECT needs host:port");
    assert!(!why.is_refused());
}

#[test]
fn connect_example_com_99999_is_a_bad_port() {
    let why = rejection(decide(Method::CONNECT, "example.com:99999", &defaults()));
    assert_eq!(why.status(), StatusCode::BAD_REQUEST);
    assert_eq!(why.code(), "bad_port");
    assert!(!why.is_refused());
}

#[test]
fn absolute_form_is_forwarded_and_recorded_when_intercepted() {
    let Route::Forward {
        target,
        path_and_query,
    } = decide(
        Method::POST,
        "https://api.openai.com/v1/chat/completions?x=1",
        &defaults(),
    )
    else {
        panic!("expected a forward");
    };
    assert_eq!(path_and_query, "/v1/chat/completions?x=1");
    assert_eq!(
        *target,
        Target::new(
            "https",
            "api.openai.com".into(),
            443,
            String::new(),
            exchange::Route::PlainHttp,
            true,
        )
        .unwrap()
    );
}

#[test]
fn absolute_form_to_another_host_is_forwarded_unrecorded() {
    let s = settings(RawConfig {
        allow_ports: Some(vec![80, 443]),
        ..RawConfig::default()
    });
    let Route::Forward { target, .. } = decide(Method::GET, "http://example.com/", &s) else {
        panic!("expected a forward");
    };
    assert_eq!((target.scheme, target.port), ("http", 80));
    assert!(!target.record);
}

#[test]
fn absolute_form_obeys_the_destination_rules() {
    // Port 80 is not in the default allow_ports.
    let why = rejection(decide(Method::GET, "http://example.com/", &defaults()));
    assert_eq!(
        (why.status(), why.code()),
        (StatusCode::FORBIDDEN, "port_not_allowed")
    );
    assert!(why.is_refused());
    let why = rejection(decide(Method::GET, "https://127.0.0.1/admin", &defaults()));
    assert_eq!(
        (why.status(), why.code()),
        (StatusCode::FORBIDDEN, "destination_refused")
    );
    assert!(why.is_refused());
}

#[test]
fn absolute_form_with_another_scheme_is_a_bad_request() {
    let why = rejection(decide(Method::GET, "ftp://example.com/file", &defaults()));
    assert_eq!(why.status(), StatusCode::BAD_REQUEST);
    assert_eq!(why.code(), "bad_request");
    assert!(!why.is_refused());
}

#[test]
fn gateway_path_goes_to_the_route_base() {
    let Route::Forward {
        target,
        path_and_query,
    } = decide(Method::POST, "/openai/v1/chat/completions?x=1", &defaults())
    else {
        panic!("expected a forward");
    };
    assert_eq!(path_and_query, "/v1/chat/completions?x=1");
    assert_eq!(
        (target.scheme, target.host.as_str(), target.port),
        ("https", "api.openai.com", 443)
    );
    assert_eq!(
        target.route,
        exchange::Route::Gateway {
            name: "openai".into()
        }
    );
    assert!(target.record, "gateway traffic is always recorded");
}

#[test]
fn a_gateway_request_borrows_the_target_the_settings_built() {
    let s = defaults();
    let uri: Uri = "/openai/v1/models".parse().unwrap();
    let head = RequestHead {
        method: &Method::GET,
        uri: &uri,
    };
    let Route::Forward {
        target: Cow::Borrowed(target),
        ..
    } = route(head, &s)
    else {
        panic!("expected a forward to the settings' own target");
    };
    let built = s.gateways["openai"].as_ref().unwrap();
    assert!(std::ptr::eq(target, built), "not built per request");
}

#[test]
fn gateway_name_followed_by_a_query_keeps_the_query() {
    let Route::Forward { path_and_query, .. } = decide(Method::GET, "/openai?x=1", &defaults())
    else {
        panic!("expected a forward");
    };
    assert_eq!(path_and_query, "/?x=1");
}

#[test]
fn gateway_route_with_a_prefix_to_a_local_target() {
    // Gateway routes are the operator's own destinations: no port or address rule applies.
    let s = settings(RawConfig {
        routes: Some(
            [(
                "local".to_string(),
                "http://127.0.0.1:11434/api".to_string(),
            )]
            .into(),
        ),
        ..RawConfig::default()
    });
    let Route::Forward {
        target,
        path_and_query,
    } = decide(Method::POST, "/local/chat", &s)
    else {
        panic!("expected a forward");
    };
    assert_eq!(
        (
            target.scheme,
            target.host.as_str(),
            target.port,
            target.prefix.as_str()
        ),
        ("http", "127.0.0.1", 11434, "/api")
    );
    assert_eq!(path_and_query, "/chat");
}

#[test]
fn unknown_gateway_route_is_404_naming_the_routes() {
    let why = rejection(decide(Method::GET, "/nope/v1/models", &defaults()));
    assert_eq!(why.status(), StatusCode::NOT_FOUND);
    assert_eq!(why.code(), "no_route");
    assert!(!why.is_refused());
    assert!(
        why.message().contains("\"nope\"") && why.message().contains("openai"),
        "{}",
        why.message()
    );
}

#[test]
fn upstream_uri_has_the_port_only_when_not_the_default_and_ipv6_in_brackets() {
    let uri = |scheme, host: &str, port| {
        let t = Target::new(
            scheme,
            host.into(),
            port,
            String::new(),
            exchange::Route::Intercept,
            true,
        )
        .unwrap();
        t.upstream_uri(PathAndQuery::from_static("/v1/x?a=1"))
            .unwrap()
            .to_string()
    };
    // route() keeps hosts without brackets; the URI must put them back.
    for (scheme, host, port, want) in [
        (
            "https",
            "api.openai.com",
            443,
            "https://api.openai.com/v1/x?a=1",
        ),
        (
            "https",
            "api.openai.com",
            8443,
            "https://api.openai.com:8443/v1/x?a=1",
        ),
        ("http", "example.com", 80, "http://example.com/v1/x?a=1"),
        (
            "http",
            "example.com",
            443,
            "http://example.com:443/v1/x?a=1",
        ),
        ("https", "::1", 8443, "https://[::1]:8443/v1/x?a=1"),
        (
            "https",
            "2001:db8::1",
            443,
            "https://[2001:db8::1]/v1/x?a=1",
        ),
    ] {
        assert_eq!(uri(scheme, host, port), want);
    }
}

#[test]
fn a_host_that_makes_no_authority_is_veils_400() {
    let e = Target::new(
        "https",
        "bad host".into(),
        443,
        String::new(),
        exchange::Route::Intercept,
        true,
    )
    .unwrap_err();
    assert_eq!(e.status(), StatusCode::BAD_REQUEST);
}
