//! A small HTTP/1.1 client for the admin API (used by `quotad bench` to create keys and tiers).

use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;

/// Where the admin API is and the token to use.
#[derive(Debug, Clone)]
pub struct AdminClient {
    authority: String,
    token: String,
}

/// The token: explicit, else `QUOTAD_ADMIN_TOKEN`, else `DATA_DIR/admin.token`.
pub fn resolve_token(explicit: Option<&str>, data_dir: &std::path::Path) -> anyhow::Result<String> {
    if let Some(t) = explicit.filter(|t| !t.is_empty()) {
        return Ok(t.to_string());
    }
    if let Ok(t) = std::env::var("QUOTAD_ADMIN_TOKEN") {
        if !t.trim().is_empty() {
            return Ok(t.trim().to_string());
        }
    }
    let p = data_dir.join(crate::server::token::TOKEN_FILE);
    std::fs::read_to_string(&p)
        .map(|t| t.trim().to_string())
        .with_context(|| {
            format!(
                "no admin token: pass --token, set QUOTAD_ADMIN_TOKEN, or make {} readable",
                p.display()
            )
        })
}

/// `HOST:PORT` of an `http://HOST:PORT` URL.
pub fn authority(url: &str) -> anyhow::Result<String> {
    let authority = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("URL must start with http:// (got {url:?})"))?
        .trim_end_matches('/');
    if authority.is_empty() || authority.contains('/') {
        bail!("URL must be http://HOST:PORT (got {url:?})");
    }
    Ok(authority.to_string())
}

impl AdminClient {
    /// A client for `url` (`http://host:port`).
    pub fn new(url: &str, token: String) -> anyhow::Result<Self> {
        Ok(AdminClient {
            authority: authority(url)?,
            token,
        })
    }

    /// Sends one request; returns the status and the JSON body (`Null` if none).
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<(u16, serde_json::Value)> {
        let stream = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::net::TcpStream::connect(&self.authority),
        )
        .await
        .map_err(|_| anyhow!("connecting to {} timed out", self.authority))?
        .with_context(|| format!("cannot connect to quotad at {}", self.authority))?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let bytes = body.map(|b| b.to_string()).unwrap_or_default();
        let req = Request::builder()
            .method(method)
            .uri(format!("/admin/v1{path}"))
            .header("host", &self.authority)
            .header("authorization", format!("Bearer {}", self.token))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(bytes)))?;
        let resp = tokio::time::timeout(Duration::from_secs(30), send.send_request(req))
            .await
            .map_err(|_| anyhow!("admin request timed out"))??;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        let json = if body.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null)
        };
        Ok((status, json))
    }
}
