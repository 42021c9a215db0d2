//! Console sessions, built to OWASP's session management and CSRF guidance:
//! - the session id is 256 random bits from the OS's generator, made anew at each login, and
//!   kept only as its SHA-256 here (a memory dump gives no usable cookie);
//! - it travels in an `HttpOnly`, `SameSite=Strict`, `Path=/` cookie: `__Host-`-prefixed and
//!   `Secure` on TLS and loopback listeners (browsers treat loopback as secure), and never in
//!   a URL; JavaScript cannot read it;
//! - a session ends after 30 minutes without a request, 12 hours after login, or at logout,
//!   which removes it here (the cookie alone is then worthless);
//! - each session has a CSRF token (synchronizer token pattern), which every request that
//!   changes something must send in `X-CSRF-Token`; unsafe requests must also come from the
//!   console's own origin (`Origin` / `Sec-Fetch-Site`), login included (login CSRF).
//!
//! A session holds the access token it was opened with, which the console presents on the
//! user's behalf to the v2 API: every request is authorised there, by that token's roles, as
//! if the user called the API directly; a revoked token ends its sessions at their next request.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap, HeaderValue, Method};
use rand::RngCore;
use sha2::{Digest, Sha256};

/// A session ends after this long without a request.
pub const IDLE: Duration = Duration::from_secs(30 * 60);
/// And this long after login, however active.
pub const ABSOLUTE: Duration = Duration::from_secs(12 * 3600);
/// Sessions held at most; the oldest goes first beyond that.
const MAX_SESSIONS: usize = 10_000;

/// One logged-in browser.
#[derive(Clone)]
pub struct Session {
    /// The access token the user logged in with.
    pub token: String,
    pub csrf: String,
    pub org_admin: bool,
    pub name: String,
    created: Instant,
    seen: Instant,
}

impl Session {
    /// When it ends if no request comes, in Unix milliseconds.
    pub fn expires_at(&self) -> i64 {
        let now = Instant::now();
        let left = (self.seen + IDLE)
            .min(self.created + ABSOLUTE)
            .saturating_duration_since(now);
        gantry_store::now_ms() + left.as_millis() as i64
    }
}

/// The sessions of one console.
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<[u8; 32], Session>>,
}

fn random_hex() -> String {
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

fn digest(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

impl Sessions {
    /// Open a session; returns its id (the cookie's value) and the session.
    pub fn open(&self, token: String, name: String, org_admin: bool) -> (String, Session) {
        let id = random_hex();
        let now = Instant::now();
        let s = Session {
            token,
            csrf: random_hex(),
            org_admin,
            name,
            created: now,
            seen: now,
        };
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, s| live(s, now));
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map.iter().min_by_key(|(_, s)| s.seen).map(|(k, _)| *k) {
                map.remove(&oldest);
            }
        }
        map.insert(digest(&id), s.clone());
        (id, s)
    }

    /// The live session `id` names, marked as used now.
    pub fn touch(&self, id: &str) -> Option<Session> {
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let key = digest(id);
        match map.get_mut(&key) {
            Some(s) if live(s, now) => {
                s.seen = now;
                Some(s.clone())
            }
            Some(_) => {
                map.remove(&key);
                None
            }
            None => None,
        }
    }

    pub fn close(&self, id: &str) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(&digest(id));
    }

    /// End every session opened with `token` (it was refused: revoked or expired).
    pub fn close_token(&self, token: &str) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, s| s.token != token);
    }
}

fn live(s: &Session, now: Instant) -> bool {
    now.duration_since(s.seen) < IDLE && now.duration_since(s.created) < ABSOLUTE
}

/// How the session cookie is named and flagged on one listener.
#[derive(Debug, Clone, Copy)]
pub struct CookieStyle {
    /// `Secure` and the `__Host-` prefix.
    pub secure: bool,
}

impl CookieStyle {
    pub fn name(self) -> &'static str {
        if self.secure {
            "__Host-gantry_console"
        } else {
            "gantry_console"
        }
    }

    /// The `Set-Cookie` value that gives the browser session `id`.
    pub fn set(self, id: &str) -> HeaderValue {
        self.header(id, "")
    }

    /// The `Set-Cookie` value that removes it.
    pub fn clear(self) -> HeaderValue {
        self.header("", "; Max-Age=0")
    }

    fn header(self, value: &str, extra: &str) -> HeaderValue {
        let secure = if self.secure { "; Secure" } else { "" };
        let v = format!(
            "{}={value}; Path=/; HttpOnly; SameSite=Strict{secure}{extra}",
            self.name()
        );
        HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    /// The session id the request's cookies carry.
    pub fn read(self, headers: &HeaderMap) -> Option<String> {
        let name = self.name();
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
            .filter(|v| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))
    }
}

/// Whether a method changes something (and so needs the CSRF checks).
pub fn unsafe_method(m: &Method) -> bool {
    !matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Why an unsafe request is refused as cross-site, if it is: its `Origin` is not the
/// console's own (`scheme://Host`), or `Sec-Fetch-Site` says another site sent it.
pub fn cross_site(headers: &HeaderMap, tls: bool) -> Option<String> {
    let get = |h: header::HeaderName| headers.get(h).and_then(|v| v.to_str().ok());
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        if !matches!(site, "same-origin" | "none") {
            return Some(format!("Sec-Fetch-Site is '{site}'"));
        }
    }
    if let Some(origin) = get(header::ORIGIN) {
        let host = get(header::HOST).unwrap_or("");
        let own = format!("{}://{host}", if tls { "https" } else { "http" });
        if origin != own {
            return Some(format!("origin '{origin}' is not the console's ({own})"));
        }
    }
    None
}

/// Whether `a` and `b` are equal, in time that does not depend on where they differ.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_open_touch_close() {
        let s = Sessions::default();
        let (id, sess) = s.open("kpat_x".into(), "ops".into(), true);
        assert_eq!(id.len(), 64);
        assert_eq!(s.touch(&id).map(|t| t.csrf), Some(sess.csrf.clone()));
        let (other, _) = s.open("kpat_x".into(), "ops".into(), true);
        assert_ne!(id, other, "a new login gets a new id");
        s.close(&id);
        assert!(s.touch(&id).is_none());
        assert!(s.touch(&other).is_some());
        s.close_token("kpat_x");
        assert!(s.touch(&other).is_none());
    }

    #[test]
    fn cookie_flags_and_reading() {
        let secure = CookieStyle { secure: true };
        let set = secure.set(&"a".repeat(64));
        let set = set.to_str().unwrap();
        assert!(set.starts_with("__Host-gantry_console="));
        for flag in ["; Path=/", "; HttpOnly", "; SameSite=Strict", "; Secure"] {
            assert!(set.contains(flag), "{set} lacks {flag}");
        }
        assert!(!set.contains("Domain"));
        let plain = CookieStyle { secure: false };
        assert!(!plain.set("x").to_str().unwrap().contains("Secure"));
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("a=b; __Host-gantry_console={}", "f".repeat(64)))
                .unwrap(),
        );
        assert_eq!(secure.read(&h), Some("f".repeat(64)));
        assert_eq!(plain.read(&h), None);
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("__Host-gantry_console=short"),
        );
        assert_eq!(secure.read(&h), None, "a malformed id is no id");
    }

    #[test]
    fn cross_site_requests_are_named() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8002"));
        assert_eq!(cross_site(&h, false), None);
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:8002"),
        );
        assert_eq!(cross_site(&h, false), None);
        assert!(cross_site(&h, true).is_some(), "scheme differs");
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://evil.example"),
        );
        assert!(cross_site(&h, false).unwrap().contains("evil.example"));
        h.remove(header::ORIGIN);
        h.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(cross_site(&h, false).is_some());
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "ab"));
    }
}
