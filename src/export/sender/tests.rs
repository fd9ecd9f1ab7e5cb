//! Sender tests: which answers are retried, `Retry-After` forms, TLS file errors.

use super::*;

#[test]
fn only_the_transient_statuses_retry() {
    for code in [429u16, 502, 503, 504] {
        let a = classify(
            Signal::Traces,
            StatusCode::from_u16(code).unwrap(),
            Some(Duration::from_secs(3)),
            "application/x-protobuf",
            Some(Bytes::new()),
            "u",
        );
        assert!(
            matches!(a, Attempt::Retry { after: Some(d), .. } if d == Duration::from_secs(3)),
            "{code}: {a:?}"
        );
    }
    for code in [400u16, 401, 404, 413, 415, 500, 501] {
        let body = RpcStatus {
            code: 3,
            message: "bad span".into(),
        }
        .encode_to_vec();
        let a = classify(
            Signal::Traces,
            StatusCode::from_u16(code).unwrap(),
            None,
            "application/x-protobuf",
            Some(body.into()),
            "u",
        );
        assert!(
            matches!(&a, Attempt::Reject { why } if why.contains("bad span")),
            "{code}: {a:?}"
        );
    }
    let a = classify(
        Signal::Logs,
        StatusCode::OK,
        None,
        "application/json",
        Some(Bytes::from_static(
            br#"{"partialSuccess":{"rejectedLogRecords":"1"}}"#,
        )),
        "u",
    );
    assert_eq!(a, Attempt::Delivered);
}

#[test]
fn tls_files_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let err = OtlpClient::with_tls(&TlsFiles {
        ca: Some(missing.clone()),
        ..TlsFiles::default()
    })
    .unwrap_err();
    assert!(err.to_string().contains("missing.pem"), "{err}");
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").unwrap();
    let err = OtlpClient::with_tls(&TlsFiles {
        ca: Some(empty),
        ..TlsFiles::default()
    })
    .unwrap_err();
    assert!(err.to_string().contains("no PEM certificate"), "{err}");
    // A real CA file loads.
    let key = rcgen::KeyPair::generate().unwrap();
    let ca = rcgen::CertificateParams::new(vec!["collector.test".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let pem = dir.path().join("ca.pem");
    std::fs::write(&pem, ca.pem()).unwrap();
    OtlpClient::with_tls(&TlsFiles {
        ca: Some(pem),
        ..TlsFiles::default()
    })
    .unwrap();
}

#[test]
fn retry_after_seconds_and_dates() {
    assert_eq!(
        retry_after(&HeaderValue::from_static("7")),
        Some(Duration::from_secs(7))
    );
    let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(120));
    let d = retry_after(&HeaderValue::from_str(&later).unwrap()).unwrap();
    assert!(
        d > Duration::from_secs(100) && d <= Duration::from_secs(120),
        "{d:?}"
    );
    assert_eq!(
        retry_after(&HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT")),
        Some(Duration::ZERO)
    );
    assert_eq!(retry_after(&HeaderValue::from_static("soon")), None);
}
