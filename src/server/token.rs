//! The admin token: from `QUOTAD_ADMIN_TOKEN`, or generated once into `DATA_DIR/admin.token`
//! (mode 0600) and reused. Compared in constant time; never logged.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use subtle::ConstantTimeEq;

/// File name of the generated token inside the data directory.
pub const TOKEN_FILE: &str = "admin.token";

/// Where the token came from (for the start-up log, which never shows the token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// The `QUOTAD_ADMIN_TOKEN` environment variable.
    Env,
    /// A file (generated now or earlier).
    File(PathBuf),
}

/// The admin bearer token.
pub struct AdminToken {
    token: String,
    source: TokenSource,
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminToken")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl AdminToken {
    /// A token from a value (env var, tests).
    pub fn from_value(token: String, source: TokenSource) -> Self {
        AdminToken { token, source }
    }

    /// `env` if set and non-empty, else the token file in `data_dir`, created if missing.
    pub fn load_or_create(env: Option<String>, data_dir: &Path) -> std::io::Result<Self> {
        if let Some(t) = env.filter(|t| !t.trim().is_empty()) {
            return Ok(Self::from_value(t.trim().to_string(), TokenSource::Env));
        }
        let path = data_dir.join(TOKEN_FILE);
        match std::fs::read_to_string(&path) {
            Ok(t) if !t.trim().is_empty() => {
                return Ok(Self::from_value(
                    t.trim().to_string(),
                    TokenSource::File(path),
                ))
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(std::io::Error::new(
                    e.kind(),
                    format!("{}: {e}", path.display()),
                ))
            }
        }
        let mut bytes = [0u8; 32];
        getrandom::getrandom(&mut bytes).map_err(|e| std::io::Error::other(e.to_string()))?;
        let token = format!("qdadm_{}", URL_SAFE_NO_PAD.encode(bytes));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)?;
        f.write_all(token.as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        Ok(Self::from_value(token, TokenSource::File(path)))
    }

    /// Where it came from.
    pub fn source(&self) -> &TokenSource {
        &self.source
    }

    /// Whether `presented` is the token (constant time).
    pub fn matches(&self, presented: &str) -> bool {
        bool::from(self.token.as_bytes().ct_eq(presented.as_bytes()))
    }
}
