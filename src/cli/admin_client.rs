//! A small HTTP/1.1 client for the admin API, over `http://` or `https://` (rustls, the Mozilla
//! root certificates plus any CA given with `--admin-ca` / `QUOTAD_ADMIN_CA`).

use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;

/// Where the admin API is and the token to use.
#[derive(Clone)]
pub struct AdminClient {
    authority: String,
    /// For `https://`: the TLS client and the name the server's certificate must carry.
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls_pki_types::ServerName<'static>,
    )>,
    token: String,
}

impl std::fmt::Debug for AdminClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminClient")
            .field("authority", &self.authority)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// A TLS client trusting the Mozilla roots and the certificates of the PEM file `ca`.
fn tls_connector(ca: Option<&std::path::Path>) -> anyhow::Result<tokio_rustls::TlsConnector> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = tokio_rustls::rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = ca {
        let certs: Vec<_> = rustls_pki_types::CertificateDer::pem_file_iter(path)
            .with_context(|| format!("cannot read the CA file {}", path.display()))?
            .collect::<Result<_, _>>()
            .with_context(|| format!("{}: not PEM certificates", path.display()))?;
        if certs.is_empty() {
            bail!("{}: no certificate in it", path.display());
        }
        for c in certs {
            roots
                .add(c)
                .with_context(|| format!("{}: a certificate is not usable", path.display()))?;
        }
    }
    let config = tokio_rustls::rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(std::sync::Arc::new(
        config,
    )))
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
    /// A client for `url` (`http://host:port` or `https://host[:port]`), trusting the CA file
    /// `ca` (PEM) besides the usual roots for `https://`.
    pub fn new(url: &str, token: String, ca: Option<&std::path::Path>) -> anyhow::Result<Self> {
        let Some(rest) = url.strip_prefix("https://") else {
            return Ok(AdminClient {
                authority: authority(url)?,
                tls: None,
                token,
            });
        };
        let rest = rest.trim_end_matches('/');
        if rest.is_empty() || rest.contains('/') {
            bail!("URL must be https://HOST[:PORT] (got {url:?})");
        }
        // HOST, [IPv6], HOST:PORT or [IPv6]:PORT; the port defaults to 443.
        let (host, authority) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok() && !p.contains(']') => {
                (h, rest.to_string())
            }
            _ => (rest, format!("{rest}:443")),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = rustls_pki_types::ServerName::try_from(host.to_string())
            .map_err(|_| anyhow!("{host:?} is not a host name or IP address"))?;
        Ok(AdminClient {
            authority,
            tls: Some((tls_connector(ca)?, name)),
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
        let mut send = match &self.tls {
            None => {
                let (send, conn) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
                tokio::spawn(conn);
                send
            }
            Some((tls, name)) => {
                let stream = tls
                    .connect(name.clone(), stream)
                    .await
                    .with_context(|| format!("TLS with {} failed", self.authority))?;
                let (send, conn) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
                tokio::spawn(conn);
                send
            }
        };
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
