//! Unit tests of [the destination policy and the resolver](super): what is refused, what the
//! operator's rules open, and how connect failures are classified.

use super::*;
use crate::config::RawConfig;
use crate::proxy::ProxySettings;

#[test]
fn resolve_overrides_only_the_named_host_and_port() {
    let r = Resolver::new(
        vec![ResolveRule::parse("api.openai.com:443:127.0.0.1:9443").unwrap()],
        Arc::default(),
    );
    assert_eq!(
        r.lookup("API.openai.com", 443),
        Some("127.0.0.1:9443".parse().unwrap())
    );
    assert_eq!(r.lookup("api.openai.com", 80), None);
    assert_eq!(r.lookup("example.com", 443), None);
}

#[tokio::test]
async fn connect_failures_are_classified() {
    // Bind then drop a listener to get a port nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let r = Resolver::new(vec![], Arc::new(local_allowed()));
    let err = r
        .connect("127.0.0.1", port, Duration::from_secs(2))
        .await
        .unwrap_err();
    assert_eq!(err.kind, UpstreamFailure::Connect);
    assert_eq!(err.status(), http::StatusCode::BAD_GATEWAY);
    assert!(err.message.contains(&port.to_string()), "{err}");
}

fn local_allowed() -> Destinations {
    Destinations {
        allow_local: true,
        ..Destinations::default()
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

// See: veil#10
#[test]
fn loopback_link_local_and_unspecified_targets_are_refused() {
    let d = Destinations::default();
    for refused in [
        "127.0.0.1:80",
        "127.8.9.10:8080",
        "[::1]:443",
        "[::ffff:127.0.0.1]:80",
        "0.0.0.0:80",
        "0.1.2.3:80",
        "[::]:80",
        "169.254.169.254:80",
        "[fe80::1]:443",
    ] {
        assert!(d.refusal(addr(refused)).is_some(), "{refused}");
    }
    for allowed in [
        "93.184.216.34:443",
        "10.0.0.5:443",
        "192.168.1.2:443",
        "[2606:4700::1]:443",
        "[fd00::1]:443",
    ] {
        assert_eq!(d.refusal(addr(allowed)), None, "{allowed}");
    }
    let open = local_allowed();
    assert_eq!(open.refusal(addr("127.0.0.1:80")), None);
    assert_eq!(open.refusal(addr("169.254.169.254:80")), None);
}

// See: veil#10
#[test]
fn veils_own_listeners_are_refused_even_with_allow_local_targets() {
    let d = Destinations {
        own: vec![addr("127.0.0.1:9901")],
        ..local_allowed()
    };
    d.set_bound(addr("0.0.0.0:9900"));
    assert!(d.refusal(addr("127.0.0.1:9901")).is_some(), "admin");
    assert_eq!(d.refusal(addr("127.0.0.1:9902")), None);
    // The admin API on 127.0.0.1: 0.0.0.0 and :: reach it too (Linux connects them to
    // loopback). See: veil#10 (review).
    for via in ["0.0.0.0:9901", "[::]:9901"] {
        assert!(d.refusal(addr(via)).is_some(), "{via}");
    }
    // Listening on 0.0.0.0: loopback, unspecified and every local address reach it.
    for own in [
        "127.0.0.1:9900",
        "127.1.2.3:9900",
        "0.0.0.0:9900",
        "[::ffff:127.0.0.1]:9900",
    ] {
        assert!(d.refusal(addr(own)).is_some(), "{own}");
    }
    assert_eq!(
        d.refusal(addr("192.0.2.1:9900")),
        None,
        "not a local address"
    );
}

// See: veil#10
#[tokio::test]
async fn a_name_that_resolves_to_loopback_is_refused_at_connect() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let r = Resolver::new(vec![], Arc::default());
    // `localhost` resolves to loopback: refused after resolving, before connecting.
    let err = r
        .connect("localhost", port, Duration::from_secs(2))
        .await
        .unwrap_err();
    assert!(err.refused, "{err}");
    assert_eq!(err.status(), http::StatusCode::FORBIDDEN);
    assert_eq!(err.code(), "destination_refused");
    assert!(err.message.contains("loopback"), "{err}");
    // A literal is refused without any lookup, and explicitly named destinations pass.
    assert!(r.check_literal("127.0.0.1", port).unwrap_err().refused);
    assert!(r.check_literal("api.openai.com", 443).is_ok());
    let rule = ResolveRule::parse(&format!("localhost:{port}:127.0.0.1:{port}")).unwrap();
    let r = Resolver::new(vec![rule], Arc::default());
    r.connect("localhost", port, Duration::from_secs(2))
        .await
        .expect("a --resolve rule is explicit");
    let routed = Destinations {
        explicit: vec![("127.0.0.1".into(), port)],
        ..Destinations::default()
    };
    let r = Resolver::new(vec![], Arc::new(routed));
    assert!(r.check_literal("127.0.0.1", port).is_ok());
    r.connect("127.0.0.1", port, Duration::from_secs(2))
        .await
        .expect("a configured gateway route is explicit");
}

#[test]
fn only_configured_routes_are_explicit() {
    let settings = ProxySettings::from_raw(RawConfig {
        routes: Some([("local".to_string(), "http://127.0.0.1:11434".to_string())].into()),
        ..Default::default()
    });
    let d = settings.resolver.destinations();
    assert!(d.is_explicit("127.0.0.1", 11434));
    assert!(
        !d.is_explicit("api.openai.com", 443),
        "built-in routes are not"
    );
    assert!(!d.is_explicit("127.0.0.1", 11435));
}
