//! Request paths as Kong reads them, and the upstream path Kong builds from them.

use std::borrow::Cow;

/// Normalise a request path: decode percent-encoded unreserved characters, remove dot
/// segments, merge repeated slashes. The query string must already be cut off.
pub fn normalize(path: &str) -> Cow<'_, str> {
    if is_normal(path) {
        return Cow::Borrowed(path);
    }
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                let c = h * 16 + l;
                if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
                    decoded.push(c);
                } else {
                    decoded.extend_from_slice(&[
                        b'%',
                        bytes[i + 1].to_ascii_uppercase(),
                        bytes[i + 2].to_ascii_uppercase(),
                    ]);
                }
                i += 3;
                continue;
            }
        }
        decoded.push(bytes[i]);
        i += 1;
    }
    let s = String::from_utf8(decoded)
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
    // Dot segments and empty segments.
    let trailing = s.ends_with('/') || s.ends_with("/.") || s.ends_with("/..");
    let mut out: Vec<&str> = Vec::new();
    for seg in s.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    let mut r = String::with_capacity(s.len());
    for seg in &out {
        r.push('/');
        r.push_str(seg);
    }
    if r.is_empty() || (trailing && !r.ends_with('/')) {
        r.push('/');
    }
    Cow::Owned(r)
}

/// Whether a path is already normal (the common case, checked without allocating): absolute,
/// nothing percent-encoded, no empty, `.` or `..` segment but an empty last one.
fn is_normal(path: &str) -> bool {
    let Some(rest) = path.strip_prefix('/') else {
        return false;
    };
    if path.contains('%') {
        return false;
    }
    let mut segs = rest.split('/').peekable();
    while let Some(seg) = segs.next() {
        let last = segs.peek().is_none();
        if seg == "." || seg == ".." || (seg.is_empty() && !last) {
            return false;
        }
    }
    true
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn sanitize_postfix(p: &str) -> &str {
    if p == "." || p == ".." {
        return "";
    }
    p.strip_prefix("./")
        .or_else(|| p.strip_prefix("../"))
        .unwrap_or(p)
}

/// Kong's `path_handling = v0` upstream path (the only one its default router applies):
/// `base` is the service path (`/` when none), `prefix` the matched route path when
/// `strip_path` is on (a regex's whole match), `req` the normalised request path. Borrowed
/// when it is `base` or a piece of `req` (a service on `/` mostly forwards the path as it is).
pub fn upstream_path_v0<'a>(base: &'a str, prefix: Option<&str>, req: &'a str) -> Cow<'a, str> {
    match prefix {
        Some(prefix) => {
            let postfix = sanitize_postfix(req.get(prefix.len()..).unwrap_or(""));
            if let Some(trimmed) = base.strip_suffix('/') {
                if postfix.is_empty() {
                    if base == "/" || req.ends_with('/') {
                        Cow::Borrowed(base)
                    } else {
                        Cow::Borrowed(trimmed)
                    }
                } else if postfix.starts_with('/') {
                    joined(trimmed, postfix, req)
                } else {
                    joined(base, postfix, req)
                }
            } else if postfix.is_empty() {
                if req.len() > 1 && req.ends_with('/') {
                    joined(base, "/", req)
                } else {
                    Cow::Borrowed(base)
                }
            } else if postfix.starts_with('/') {
                joined(base, postfix, req)
            } else {
                Cow::Owned(format!("{base}/{postfix}"))
            }
        }
        None => {
            if base.ends_with('/') {
                joined(base, &req[1.min(req.len())..], req)
            } else if req == "/" {
                Cow::Borrowed(base)
            } else {
                joined(base, req, req)
            }
        }
    }
}

/// `head` followed by `tail`: a slice of `req` when `req` ends with them, else a new string.
fn joined<'a>(head: &str, tail: &str, req: &'a str) -> Cow<'a, str> {
    let n = head.len() + tail.len();
    let whole =
        req.len() >= n && req.ends_with(tail) && req[..req.len() - tail.len()].ends_with(head);
    if whole {
        // Where `head` begins is a character boundary: it is the start of a string.
        Cow::Borrowed(&req[req.len() - n..])
    } else {
        Cow::Owned(format!("{head}{tail}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes() {
        assert_eq!(normalize("/a//b/./c/../d"), "/a/b/d");
        assert_eq!(normalize("/a/%7Eb%2Fc"), "/a/~b%2Fc");
        assert_eq!(normalize("/route%2E%2E/req"), "/route../req");
        assert_eq!(normalize("/x/"), "/x/");
        assert_eq!(normalize(""), "/");
        assert_eq!(normalize("/.."), "/");
        assert_eq!(normalize("/a/b/"), "/a/b/");
        assert_eq!(normalize("/a/."), "/a/");
        assert_eq!(normalize("a/b"), "/a/b");
        assert_eq!(normalize("/"), "/");
        // Already normal paths are borrowed, not copied.
        assert!(matches!(normalize("/a/b.c/d"), Cow::Borrowed(_)));
        assert!(matches!(normalize("/a//b"), Cow::Owned(_)));
    }

    /// Kong's path handling fixtures (service, route, strip, request, v0 result).
    #[test]
    fn v0_matches_kong_fixtures() {
        let cases: &[(&str, Option<&str>, bool, &str, &str)] = &[
            ("/", Some("/route"), true, "/routereq", "/req"),
            ("/srv", Some("/rou"), false, "/roureq", "/srv/roureq"),
            ("/srv", Some("/rou"), true, "/roureq", "/srv/req"),
            ("/srv/", Some("/rou"), true, "/rou", "/srv"),
            ("/service", Some("/"), true, "/", "/service"),
            ("/service", Some("/"), false, "/", "/service"),
            ("/service", Some("/route"), true, "/route/", "/service/"),
            ("/service", Some("/route/"), true, "/route/", "/service/"),
            ("/service/", Some("/route"), true, "/route", "/service"),
            ("/service", None, false, "/route", "/service/route"),
            ("/", Some("/a"), false, "/a/b", "/a/b"),
        ];
        for (base, route, strip, req, want) in cases {
            let prefix = if *strip { *route } else { None };
            assert_eq!(
                upstream_path_v0(base, prefix, req),
                *want,
                "{base} {route:?} {strip} {req}"
            );
        }
        // Regex routes strip their whole match.
        assert_eq!(
            upstream_path_v0("/svc", Some("/users/42"), "/users/42/x"),
            "/svc/x"
        );
        // What is the request path, or the service path, is not copied.
        for (base, prefix, req) in [
            ("/", Some("/"), "/a/b"),
            ("/", None, "/a/b"),
            ("/", Some("/a"), "/a/b"),
            ("/svc", Some("/a"), "/a"),
            ("/svc", None, "/"),
        ] {
            assert!(
                matches!(upstream_path_v0(base, prefix, req), Cow::Borrowed(_)),
                "{base} {prefix:?} {req}"
            );
        }
        assert!(matches!(
            upstream_path_v0("/svc", Some("/a"), "/a/b"),
            Cow::Owned(p) if p == "/svc/b"
        ));
    }
}
