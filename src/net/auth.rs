//! Authentication's shared state and files (PROTOCOL §8): the key files read
//! into a [`Verifier`] (at start and on SIGHUP), the verifier every worker
//! uses (swapped whole, picked up by each worker on its next use), and the
//! per-user connection table.
//!
//! Locks here are control-plane only: the verifier's on a reload and when a
//! worker notices one (a generation counter tells it, one atomic load per
//! token verified); the user table's when a connection authenticates or an
//! authenticated one closes. Never on the market-data path.
//!
//! Never: puts a key's bytes, a secret or a token in an error or a log
//! (errors name the file and what is wrong with it).

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::auth::users::UserTable;
use crate::auth::{KeySet, Verifier};
use crate::config::AuthConfig;

/// What every worker shares for authentication.
#[derive(Debug)]
pub struct AuthShared {
    verifier: Mutex<Arc<Verifier>>,
    /// Bumped on each reload.
    generation: AtomicU64,
    /// Connections per user in this process (`max_connections`).
    users: Mutex<UserTable>,
}

impl AuthShared {
    pub fn new(verifier: Verifier) -> AuthShared {
        AuthShared {
            verifier: Mutex::new(Arc::new(verifier)),
            generation: AtomicU64::new(0),
            users: Mutex::new(UserTable::new()),
        }
    }

    /// The current verifier and its generation.
    pub fn verifier(&self) -> (Arc<Verifier>, u64) {
        let v = self.verifier.lock().unwrap_or_else(|p| p.into_inner());
        (v.clone(), self.generation.load(Ordering::Acquire))
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Replaces the verifier (a reload): workers take it on their next use;
    /// open connections keep what they were given.
    pub fn set_verifier(&self, v: Verifier) {
        let mut slot = self.verifier.lock().unwrap_or_else(|p| p.into_inner());
        *slot = Arc::new(v);
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// The user table. A poisoned lock is taken anyway (the process is on
    /// its way out, see `net::health`; until then limits stay enforced).
    pub fn users(&self) -> MutexGuard<'_, UserTable> {
        self.users.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn read(path: &Path, what: &str) -> io::Result<Vec<u8>> {
    std::fs::read(path)
        .map_err(|e| io::Error::new(e.kind(), format!("{what} {}: {e}", path.display())))
}

fn invalid(path: &Path, what: &str, why: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{what} {}: {why}", path.display()),
    )
}

/// Reads every configured key file into a verifier.
pub fn load_verifier(cfg: &AuthConfig) -> io::Result<Verifier> {
    let mut keys = KeySet::new();
    if let Some(p) = &cfg.secret_file {
        keys.add_secret(&read(p, "JWT secret file")?)
            .map_err(|e| invalid(p, "JWT secret file", e))?;
    }
    for p in &cfg.public_key_files {
        keys.add_pem(&read(p, "JWT public key file")?)
            .map_err(|e| invalid(p, "JWT public key file", e))?;
    }
    if let Some(p) = &cfg.jwks_file {
        keys.add_jwks(&read(p, "JWKS file")?)
            .map_err(|e| invalid(p, "JWKS file", e))?;
    }
    if keys.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "--auth optional|required needs a key: --jwt-secret-file, --jwt-public-key-file or --jwt-jwks-file",
        ));
    }
    Ok(Verifier::new(keys, cfg.verifier.clone()))
}
