//! Leaf certificates checked by independent verifiers (rustls-webpki and openssl).

use std::process::Command;

use crate::support::harness::{Veil, connect, tls_client};
use crate::support::mock_llm::{Alpn, Mock};

async fn leaf_der(veil: &Veil, host: &str) -> Vec<u8> {
    let (code, stream) = connect(veil.addr, host, 443).await;
    assert_eq!(code, 200);
    let tls = tokio_rustls::TlsConnector::from(tls_client(&veil.ca_pem, &[b"http/1.1"]))
        .connect(host.to_string().try_into().unwrap(), stream)
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test]
async fn leaf_chains_to_the_ca_for_server_auth_and_the_name() {
    let mock = Mock::start(Alpn::Http1Only).await;
    let veil = Veil::start(&mock).await;
    let der = leaf_der(&veil, "api.openai.com").await;

    // (1/3) chains to veil's CA for serverAuth, (2/3) valid for the name, (3/3) signatures.
    let ca_der = rustls_pemfile::certs(&mut veil.ca_pem.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    let anchor = webpki::anchor_from_trusted_cert(&ca_der).unwrap();
    let leaf = rustls::pki_types::CertificateDer::from(der.clone());
    let cert = webpki::EndEntityCert::try_from(&leaf).unwrap();
    let now = rustls::pki_types::UnixTime::now();
    cert.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        std::slice::from_ref(&anchor),
        &[],
        now,
        webpki::KeyUsage::server_auth(),
        None,
        None,
    )
    .expect("leaf chains to veil's CA for serverAuth");
    let name = rustls::pki_types::ServerName::try_from("api.openai.com").unwrap();
    cert.verify_is_valid_for_subject_name(&name)
        .expect("valid for the host");
    let other = rustls::pki_types::ServerName::try_from("api.anthropic.com").unwrap();
    assert!(
        cert.verify_is_valid_for_subject_name(&other).is_err(),
        "not valid for other hosts"
    );
    assert!(
        cert.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &[anchor],
            &[],
            now,
            webpki::KeyUsage::client_auth(),
            None,
            None
        )
        .is_err(),
        "serverAuth only"
    );

    // The leaf key is not the CA key.
    let (_, leaf_x509) = x509_parser::parse_x509_certificate(&der).unwrap();
    let (_, ca_x509) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
    assert_ne!(leaf_x509.public_key().raw, ca_x509.public_key().raw);
    assert!(!leaf_x509.is_ca());

    // openssl, a second independent verifier.
    let dir = tempfile::tempdir().unwrap();
    let leaf_pem = dir.path().join("leaf.pem");
    let pem = format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        base64_lines(&der)
    );
    std::fs::write(&leaf_pem, pem).unwrap();
    let out = Command::new("openssl")
        .args([
            "verify",
            "-purpose",
            "sslserver",
            "-verify_hostname",
            "api.openai.com",
            "-CAfile",
        ])
        .arg(&veil.ca_path)
        .arg(&leaf_pem)
        .output()
        .expect("openssl is installed");
    assert!(
        out.status.success(),
        "openssl verify failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    veil.stop().await;
}

#[tokio::test]
async fn one_leaf_per_host_reused_across_connections() {
    let mock = Mock::start(Alpn::Http1Only).await;
    let veil = Veil::start(&mock).await;
    let a = leaf_der(&veil, "api.openai.com").await;
    let b = leaf_der(&veil, "api.openai.com").await;
    let c = leaf_der(&veil, "api.anthropic.com").await;
    assert_eq!(a, b, "cached");
    assert_ne!(a, c);
    veil.stop().await;
}

fn base64_lines(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    b64.as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join("\n")
}
