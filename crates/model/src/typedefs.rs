//! Checks for the string kinds of the schema language (Kong's typedefs).

use std::net::IpAddr;
use std::sync::LazyLock;

use regex::Regex;

use crate::schema::StrKind;

/// Kong's `utf8_name`: ASCII alphanumerics, `.`, `-`, `_`, `~`, and any character beyond ASCII.
static NAME: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[A-Za-z0-9._~\x{80}-\x{10FFFF}-]+$").expect("static regex"));
static HOSTNAME: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(?:[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?$")
        .expect("static regex")
});
static HEADER: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$").expect("static regex"));

/// A value that is not of its kind: Kong's validation message, which names what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

impl From<String> for Invalid {
    fn from(s: String) -> Invalid {
        Invalid(s)
    }
}

impl From<&str> for Invalid {
    fn from(s: &str) -> Invalid {
        Invalid(s.to_string())
    }
}

/// Check a string of the given kind; the error names what is wrong.
pub fn check_str(kind: StrKind, s: &str) -> Result<(), Invalid> {
    match kind {
        StrKind::Plain => Ok(()),
        StrKind::Uuid => uuid::Uuid::parse_str(s)
            .map(|_| ())
            .map_err(|_| Invalid::from("expected a valid UUID")),
        StrKind::Name => {
            if NAME.is_match(s) {
                Ok(())
            } else {
                Err(Invalid::from(format!(
                    "invalid value '{s}': the only accepted ascii characters are alphanumerics or ., -, _, and ~"
                )))
            }
        }
        StrKind::Host => check_host(s),
        StrKind::HostPort => {
            let (h, p) = split_host_port(s);
            check_host(h)?;
            check_port(p)
        }
        StrKind::WildcardHostPort => {
            let (h, p) = split_host_port(s);
            check_port(p)?;
            let stripped = if let Some(r) = h.strip_prefix("*.") {
                r
            } else if let Some(r) = h.strip_suffix(".*") {
                r
            } else {
                h
            };
            if stripped.contains('*') {
                return Err(Invalid::from(format!(
                    "invalid wildcard: '{s}': must be placed at leftmost or rightmost label"
                )));
            }
            check_host(stripped)
        }
        StrKind::Path => {
            if !s.starts_with('/') {
                return Err(Invalid::from("should start with: /"));
            }
            check_path_chars(s)
        }
        StrKind::RoutePath => {
            if let Some(re) = s.strip_prefix('~') {
                Regex::new(re).map(|_| ()).map_err(|e| {
                    let msg = e.to_string();
                    let last = msg
                        .lines()
                        .last()
                        .unwrap_or("invalid regex")
                        .trim()
                        .to_string();
                    Invalid(format!("invalid regex: '{re}' ({last})"))
                })
            } else if s.starts_with('/') {
                check_path_chars(s)
            } else {
                Err(Invalid::from(
                    "should start with: / (fixed path) or ~/ (regex path)",
                ))
            }
        }
        StrKind::Ip => s
            .parse::<IpAddr>()
            .map(|_| ())
            .map_err(|_| Invalid(format!("invalid ip address: {s}"))),
        StrKind::IpOrCidr => check_cidr(s),
        StrKind::Url => {
            let rest = s
                .strip_prefix("http://")
                .or_else(|| s.strip_prefix("https://"))
                .ok_or_else(|| {
                    Invalid(format!("invalid url '{s}': scheme must be http or https"))
                })?;
            let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
            let authority = authority.rsplit('@').next().unwrap_or(authority);
            if authority.is_empty() {
                return Err(Invalid::from(format!("invalid url '{s}': missing host")));
            }
            Ok(())
        }
        StrKind::RedirectUri => {
            let parsed = s.split_once("://").filter(|(scheme, rest)| {
                !scheme.is_empty()
                    && scheme
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
                    && !rest.split(['/', '?', '#']).next().unwrap_or("").is_empty()
            });
            if parsed.is_none() {
                Err(Invalid(format!("cannot parse '{s}'")))
            } else if s.contains('#') {
                Err(Invalid(format!("fragment not allowed in '{s}'")))
            } else {
                Ok(())
            }
        }
        StrKind::Tag => {
            // Kong's `validate_tag`: printable ASCII but `,` and `/`, and any other UTF-8.
            if s.chars()
                .any(|c| c == ',' || c == '/' || (c.is_ascii() && (c < ' ' || c == '\x7f')))
            {
                Err(Invalid(format!(
                    "invalid tag '{s}': expected printable ascii (except `,` and `/`) or valid utf-8 sequences"
                )))
            } else {
                Ok(())
            }
        }
        StrKind::Certificate => crate::pem::parse_cert_chain(s).map(|_| ()),
        StrKind::Key => crate::pem::check_key(s),
        StrKind::HeaderName => {
            if HEADER.is_match(s) {
                Ok(())
            } else {
                Err(Invalid::from(format!(
                    "bad header name '{s}', allowed characters are A-Z, a-z, 0-9, '_', and '-'"
                )))
            }
        }
    }
}

fn split_host_port(s: &str) -> (&str, Option<&str>) {
    if let Some(rest) = s.strip_prefix('[') {
        if let Some((h, tail)) = rest.split_once(']') {
            return (h, tail.strip_prefix(':'));
        }
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, Some(p)),
        _ => (s, None),
    }
}

fn check_port(p: Option<&str>) -> Result<(), Invalid> {
    match p {
        None => Ok(()),
        Some(p) => match p.parse::<u32>() {
            Ok(n) if n <= 65535 => Ok(()),
            _ => Err(Invalid::from(format!("invalid port number '{p}'"))),
        },
    }
}

fn check_host(h: &str) -> Result<(), Invalid> {
    if h.parse::<IpAddr>().is_ok() || (h.len() <= 253 && HOSTNAME.is_match(h)) {
        Ok(())
    } else {
        Err(Invalid::from(format!("invalid hostname: {h}")))
    }
}

fn check_path_chars(s: &str) -> Result<(), Invalid> {
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Invalid::from(format!(
            "invalid path: '{s}' (characters outside of the reserved list of RFC 3986 found)"
        )));
    }
    if s.contains("//") {
        return Err(Invalid::from(format!(
            "invalid path: '{s}' (must not contain '//')"
        )));
    }
    Ok(())
}

fn check_cidr(s: &str) -> Result<(), Invalid> {
    let (ip, bits) = match s.split_once('/') {
        Some((ip, b)) => (ip, Some(b)),
        None => (s, None),
    };
    let addr: IpAddr = ip
        .parse()
        .map_err(|_| format!("invalid ip or cidr range: '{s}'"))?;
    if let Some(b) = bits {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        match b.parse::<u8>() {
            Ok(n) if n <= max => {}
            _ => return Err(Invalid::from(format!("invalid ip or cidr range: '{s}'"))),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        assert!(check_str(StrKind::Name, "my-svc_1.v2~x").is_ok());
        assert!(check_str(StrKind::Name, "bad name").is_err());
        assert!(
            check_str(StrKind::Name, "сервис-1").is_ok(),
            "Kong's utf8_name"
        );
        assert!(check_str(StrKind::Name, "a/b").is_err());
        assert!(check_str(StrKind::Host, "example.com").is_ok());
        assert!(check_str(StrKind::Host, "10.0.0.1").is_ok());
        assert!(check_str(StrKind::Host, "exa mple").is_err());
        assert!(check_str(StrKind::WildcardHostPort, "*.example.com").is_ok());
        assert!(check_str(StrKind::WildcardHostPort, "example.*").is_ok());
        assert!(check_str(StrKind::WildcardHostPort, "a.*.com").is_err());
        assert!(check_str(StrKind::WildcardHostPort, "example.com:8080").is_ok());
        assert!(check_str(StrKind::HostPort, "10.0.0.1:99999").is_err());
        assert!(check_str(StrKind::HostPort, "[::1]:80").is_ok());
        assert!(check_str(StrKind::RoutePath, "/a").is_ok());
        assert!(check_str(StrKind::RoutePath, "~/a/(?<id>\\d+)").is_ok());
        assert!(check_str(StrKind::RoutePath, "~/a/(").is_err());
        assert!(check_str(StrKind::RoutePath, "a").is_err());
        assert!(check_str(StrKind::IpOrCidr, "10.0.0.0/8").is_ok());
        assert!(check_str(StrKind::IpOrCidr, "10.0.0.0/33").is_err());
        assert!(check_str(StrKind::Url, "https://x.example/log").is_ok());
        assert!(check_str(StrKind::Url, "ftp://x").is_err());
        assert!(check_str(StrKind::Tag, "a,b").is_err());
    }
}
