//! # Admin API client: one request to a running veil's admin API.
//!
//! Used by the CLI ([`crate::cli`]) when a running `veil run` holds the sealed store. Sends
//! the bearer token and the operator's name (`x-veil-actor`); never logs either.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

use super::AdminToken;

/// A minimal admin API client (used by the CLI when a running veil holds the store).
#[derive(Debug, Clone)]
pub struct AdminClient {
    /// Where the admin API listens.
    pub addr: SocketAddr,
    /// The bearer token.
    pub token: AdminToken,
    /// Sent as `x-veil-actor`, so the audit trail names the operator.
    pub actor: String,
}

impl AdminClient {
    /// Sends one request; returns the status and the JSON body (or `null`).
    pub async fn request(
        &self,
        method: Method,
        path_and_query: &str,
    ) -> Result<(StatusCode, serde_json::Value), String> {
        let stream = tokio::net::TcpStream::connect(self.addr)
            .await
            .map_err(|e| format!("cannot reach the admin API at {}: {e}", self.addr))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("admin API handshake: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = Request::builder()
            .method(method)
            .uri(path_and_query)
            .header("host", self.addr.to_string())
            .header("authorization", format!("Bearer {}", self.token.secret()))
            .header("x-veil-actor", &self.actor)
            .body(Full::new(Bytes::new()))
            .map_err(|e| format!("bad admin request: {e}"))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("admin API request: {e}"))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("admin API response: {e}"))?
            .to_bytes();
        let v = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
        Ok((status, v))
    }
}
