//! Unit tests of [the CA](super): creation and reuse, name constraints checked by two
//! independent verifiers (webpki and openssl), and a loaded CA checked against the intercept
//! list.

use super::*;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use crate::proxy::leaf::LeafResolver;

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
    let resolver = LeafResolver::new(ca.clone(), Arc::default());
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
