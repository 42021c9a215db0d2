//! Access tokens, as Konnect's: personal (`kpat_`) and system-account (`spat_`) tokens, each
//! with a name, an expiry and roles on control planes.
//!
//! A token is shown once, when it is made. The store keeps its public part (`lookup`, which
//! finds the row) and an Argon2id hash of the whole token, never the token. Checking a token
//! reads its row on every request (so a revocation or an expiry holds at once, on every
//! process sharing the store) but hashes it with Argon2 only the first time a process sees
//! it: a token already verified against that row is remembered by its SHA-256, in memory.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use gantry_store::{Store, StoreError, TokenRow};
use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Random characters after the prefix: 48 of 62 symbols, about 285 bits.
const SECRET_LEN: usize = 48;
/// The first characters after the prefix, stored in clear to find the row.
const LOOKUP_LEN: usize = 12;
const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Failed attempts a client may make per window before it is refused outright.
pub const FAILURES_ALLOWED: u32 = 10;
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Tokens remembered as verified, per process.
const VERIFIED_MAX: usize = 10_000;

/// Who holds the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenKind {
    /// A person's token: `kpat_`.
    Personal,
    /// A system account's: `spat_`.
    System,
}

impl TokenKind {
    pub fn prefix(self) -> &'static str {
        match self {
            TokenKind::Personal => "kpat_",
            TokenKind::System => "spat_",
        }
    }
}

/// What a token may do on a control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Read.
    Viewer,
    /// Read and write; on `*`, also create and delete control planes.
    Admin,
}

impl std::str::FromStr for Role {
    type Err = TokenError;
    fn from_str(s: &str) -> Result<Role, TokenError> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "admin" => Ok(Role::Admin),
            other => Err(TokenError::BadRole(other.to_string())),
        }
    }
}

/// A role on one control plane (by id), or on all of them (`*`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub control_plane: String,
    pub role: Role,
}

/// A token's description as stored (the row's document).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenInfo {
    pub name: String,
    pub kind: TokenKind,
    pub roles: Vec<Grant>,
}

/// The holder of a verified token.
#[derive(Debug, Clone, PartialEq)]
pub struct Principal {
    pub token_id: String,
    pub name: String,
    pub roles: Vec<Grant>,
}

impl Principal {
    /// The strongest role this token has on control plane `cp` (its id).
    pub fn role_on(&self, cp: &str) -> Option<Role> {
        self.roles
            .iter()
            .filter(|g| g.control_plane == "*" || g.control_plane == cp)
            .map(|g| g.role)
            .max()
    }

    /// Whether it may create and delete control planes and manage the organisation.
    pub fn org_admin(&self) -> bool {
        self.roles
            .iter()
            .any(|g| g.control_plane == "*" && g.role == Role::Admin)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("unknown role '{0}': viewer or admin")]
    BadRole(String),
    #[error("a token needs a name")]
    NoName,
    #[error("token hashing failed: {0}")]
    Hash(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stored token {0} has a description that does not read: {1}")]
    Corrupt(String, String),
}

/// Why a request's token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("A valid token is required")]
    Missing,
    #[error("Invalid credentials")]
    Invalid,
    #[error("The token has expired")]
    Expired,
    #[error("The token has been revoked")]
    Revoked,
    #[error("Too many failed authentication attempts; retry later")]
    TooManyFailures,
}

fn random_chars(n: usize) -> String {
    let mut rng = rand::thread_rng();
    (0..n)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

fn hasher() -> Argon2<'static> {
    // Argon2id, version 0x13, OWASP's minimum (19 MiB, 2 passes, 1 lane): argon2's defaults.
    Argon2::default()
}

fn hash_token(token: &str) -> Result<String, TokenError> {
    let salt_bytes: [u8; 16] = rand::thread_rng().gen();
    let salt = SaltString::encode_b64(&salt_bytes).map_err(|e| TokenError::Hash(e.to_string()))?;
    Ok(hasher()
        .hash_password(token.as_bytes(), &salt)
        .map_err(|e| TokenError::Hash(e.to_string()))?
        .to_string())
}

fn verify_hash(token: &str, phc: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|h| hasher().verify_password(token.as_bytes(), &h).is_ok())
}

/// A newly made token: the secret, to show once, and its row.
pub struct Created {
    pub token: String,
    pub row: TokenRow,
}

/// Make and store a token. `expires_in`: none for a token that never expires.
pub async fn create(
    store: &Store,
    name: &str,
    kind: TokenKind,
    roles: Vec<Grant>,
    expires_in: Option<Duration>,
) -> Result<Created, TokenError> {
    if name.trim().is_empty() {
        return Err(TokenError::NoName);
    }
    let token = format!("{}{}", kind.prefix(), random_chars(SECRET_LEN));
    let lookup = token[..kind.prefix().len() + LOOKUP_LEN].to_string();
    let hash = {
        let t = token.clone();
        tokio::task::spawn_blocking(move || hash_token(&t))
            .await
            .map_err(|e| TokenError::Hash(e.to_string()))??
    };
    let now = gantry_model::unix_now();
    let info = TokenInfo {
        name: name.to_string(),
        kind,
        roles,
    };
    let doc = match serde_json::to_value(&info) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => return Err(TokenError::Hash("token description".into())),
    };
    let row = TokenRow {
        id: uuid::Uuid::new_v4().to_string(),
        lookup,
        hash,
        doc,
        expires_at: expires_in.map(|d| now + d.as_secs() as i64),
        revoked_at: None,
        created_at: now,
    };
    store.insert_token(&row).await?;
    Ok(Created { token, row })
}

/// A stored token's description.
pub fn info(row: &TokenRow) -> Result<TokenInfo, TokenError> {
    serde_json::from_value(serde_json::Value::Object(row.doc.clone()))
        .map_err(|e| TokenError::Corrupt(row.id.clone(), e.to_string()))
}

/// Checks presented tokens; one per process.
#[derive(Default)]
pub struct Verifier {
    /// SHA-256 of a token already verified → the id and hash of the row it matched.
    verified: Mutex<HashMap<[u8; 32], (String, String)>>,
    /// Failed attempts per client: when the window started, how many.
    failures: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl Verifier {
    pub fn new() -> Verifier {
        Verifier::default()
    }

    fn blocked(&self, client: IpAddr) -> bool {
        let Ok(f) = self.failures.lock() else {
            return false;
        };
        f.get(&client)
            .is_some_and(|(start, n)| start.elapsed() < FAILURE_WINDOW && *n >= FAILURES_ALLOWED)
    }

    fn failed(&self, client: IpAddr, why: &Denied) {
        tracing::warn!(client = %client, reason = %why, "access token refused");
        let Ok(mut f) = self.failures.lock() else {
            return;
        };
        if f.len() > 10_000 {
            f.retain(|_, (start, _)| start.elapsed() < FAILURE_WINDOW);
        }
        let e = f.entry(client).or_insert((Instant::now(), 0));
        if e.0.elapsed() >= FAILURE_WINDOW {
            *e = (Instant::now(), 0);
        }
        e.1 += 1;
    }

    /// Check `presented` (the bearer token, if any) from `client`.
    pub async fn check(
        &self,
        store: &Store,
        presented: Option<&str>,
        client: IpAddr,
    ) -> Result<Principal, CheckError> {
        if self.blocked(client) {
            return Err(CheckError::Denied(Denied::TooManyFailures));
        }
        let Some(token) = presented.map(str::trim).filter(|t| !t.is_empty()) else {
            return Err(CheckError::Denied(Denied::Missing));
        };
        match self.check_token(store, token).await {
            Ok(p) => Ok(p),
            Err(CheckError::Denied(d)) => {
                self.failed(client, &d);
                Err(CheckError::Denied(d))
            }
            Err(e) => Err(e),
        }
    }

    async fn check_token(&self, store: &Store, token: &str) -> Result<Principal, CheckError> {
        let prefix_len = 5;
        let well_formed = (token.starts_with("kpat_") || token.starts_with("spat_"))
            && token.len() == prefix_len + SECRET_LEN
            && token[prefix_len..]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric());
        if !well_formed {
            return Err(CheckError::Denied(Denied::Invalid));
        }
        let lookup = &token[..prefix_len + LOOKUP_LEN];
        let row = store
            .token_by_lookup(lookup)
            .await?
            .ok_or(CheckError::Denied(Denied::Invalid))?;
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let known = self
            .verified
            .lock()
            .ok()
            .and_then(|v| v.get(&digest).cloned())
            .is_some_and(|(id, hash)| id == row.id && hash == row.hash);
        if !known {
            let (t, phc) = (token.to_string(), row.hash.clone());
            let ok = tokio::task::spawn_blocking(move || verify_hash(&t, &phc))
                .await
                .unwrap_or(false);
            if !ok {
                return Err(CheckError::Denied(Denied::Invalid));
            }
            if let Ok(mut v) = self.verified.lock() {
                if v.len() >= VERIFIED_MAX {
                    v.clear();
                }
                v.insert(digest, (row.id.clone(), row.hash.clone()));
            }
        }
        // Revocation and expiry are read from the row on every request.
        if row.revoked_at.is_some() {
            return Err(CheckError::Denied(Denied::Revoked));
        }
        if row
            .expires_at
            .is_some_and(|at| at <= gantry_model::unix_now())
        {
            return Err(CheckError::Denied(Denied::Expired));
        }
        let info = info(&row).map_err(|e| CheckError::Store(e.to_string()))?;
        Ok(Principal {
            token_id: row.id,
            name: info.name,
            roles: info.roles,
        })
    }
}

/// A check that did not yield a principal.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("{0}")]
    Denied(Denied),
    #[error("cannot read access tokens: {0}")]
    Store(String),
}

impl From<StoreError> for CheckError {
    fn from(e: StoreError) -> CheckError {
        CheckError::Store(e.to_string())
    }
}

/// The token a request presents: `Authorization: Bearer ...`, or Kong's `Kong-Admin-Token`
/// header (what Kong Manager and decK's `--headers` send to Kong's Admin API).
pub fn presented(headers: &axum::http::HeaderMap) -> Option<&str> {
    if let Some(v) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let (scheme, rest) = v.trim().split_once(' ').unwrap_or((v, ""));
        if scheme.eq_ignore_ascii_case("bearer") {
            return Some(rest.trim());
        }
    }
    headers
        .get("kong-admin-token")
        .and_then(|v| v.to_str().ok())
}

/// Parse `90d`, `12h`, `30m`, `3600s` or `never` (none).
pub fn parse_duration(s: &str) -> Option<Option<Duration>> {
    if s == "never" {
        return Some(None);
    }
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = n.parse().ok().filter(|n| *n > 0)?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return None,
    };
    Some(Some(Duration::from_secs(secs)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("90d"),
            Some(Some(Duration::from_secs(90 * 86_400)))
        );
        assert_eq!(parse_duration("never"), Some(None));
        assert_eq!(parse_duration("0d"), None);
        assert_eq!(parse_duration("5w"), None);
        assert_eq!(parse_duration("d"), None);
    }

    #[test]
    fn roles_combine() {
        let p = Principal {
            token_id: "t".into(),
            name: "n".into(),
            roles: vec![
                Grant {
                    control_plane: "*".into(),
                    role: Role::Viewer,
                },
                Grant {
                    control_plane: "a".into(),
                    role: Role::Admin,
                },
            ],
        };
        assert_eq!(p.role_on("a"), Some(Role::Admin));
        assert_eq!(p.role_on("b"), Some(Role::Viewer));
        assert!(!p.org_admin());
    }

    #[test]
    fn hashes_verify_only_their_token() {
        let h = hash_token("kpat_abc").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_hash("kpat_abc", &h));
        assert!(!verify_hash("kpat_abd", &h));
    }
}
