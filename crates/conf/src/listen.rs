//! `*_listen` values: `host:port [ssl] [http2] [reuseport] ...`, comma separated, or `off`.

/// One listening address with its flags.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Listen {
    /// `host:port`, as given (IPv6 in brackets).
    pub addr: String,
    pub ssl: bool,
    pub http2: bool,
    pub reuseport: bool,
    pub proxy_protocol: bool,
    /// `backlog=N`: the queue of connections not yet accepted (default 1024).
    pub backlog: Option<u32>,
    /// `ipv6only=on|off` on an IPv6 address.
    pub ipv6only: Option<bool>,
    /// `so_keepalive=...`: TCP keepalive on accepted connections.
    pub so_keepalive: Option<Keepalive>,
}

/// nginx's `so_keepalive`: `on`, `off`, or `[idle]:[interval]:[count]` (times in seconds, or
/// with `s`, `m`, `h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keepalive {
    Off,
    /// On, with the system's parameters where one is `None`.
    On {
        idle: Option<u32>,
        interval: Option<u32>,
        count: Option<u32>,
    },
}

fn seconds(v: &str) -> Option<u32> {
    let (n, mult) = match v.as_bytes().last()? {
        b's' => (&v[..v.len() - 1], 1),
        b'm' => (&v[..v.len() - 1], 60),
        b'h' => (&v[..v.len() - 1], 3600),
        _ => (v, 1),
    };
    n.parse::<u32>().ok()?.checked_mul(mult)
}

fn keepalive(v: &str) -> Option<Keepalive> {
    match v {
        "on" => Some(Keepalive::On {
            idle: None,
            interval: None,
            count: None,
        }),
        "off" => Some(Keepalive::Off),
        _ => {
            let mut parts = v.split(':');
            let (a, b, c) = (parts.next()?, parts.next()?, parts.next()?);
            if parts.next().is_some() {
                return None;
            }
            let opt = |x: &str, f: fn(&str) -> Option<u32>| -> Option<Option<u32>> {
                if x.is_empty() {
                    Some(None)
                } else {
                    f(x).map(Some)
                }
            };
            Some(Keepalive::On {
                idle: opt(a, seconds)?,
                interval: opt(b, seconds)?,
                count: opt(c, |x| x.parse().ok())?,
            })
        }
    }
}

impl Listen {
    /// Parse a comma-separated list; `off` is the empty list.
    pub fn parse_list(s: &str) -> Result<Vec<Listen>, crate::InvalidValue> {
        let s = s.trim();
        if s == "off" || s.is_empty() {
            return Ok(vec![]);
        }
        s.split(',').map(|e| Listen::parse(e.trim())).collect()
    }

    fn parse(entry: &str) -> Result<Listen, crate::InvalidValue> {
        let mut words = entry.split_whitespace();
        let addr = words.next().ok_or("empty listen entry")?;
        let (host, port) = addr
            .rsplit_once(':')
            .ok_or_else(|| format!("'{addr}' is not host:port"))?;
        if host.is_empty() {
            return Err(crate::InvalidValue(format!("'{addr}' has no host")));
        }
        port.parse::<u16>()
            .map_err(|_| format!("'{port}' in '{addr}' is not a port number"))?;
        let mut l = Listen {
            addr: addr.to_string(),
            ..Listen::default()
        };
        let bad = |m: String| crate::InvalidValue(format!("{m} in '{entry}'"));
        for w in words {
            match w {
                "ssl" => l.ssl = true,
                "http2" => l.http2 = true,
                "reuseport" => l.reuseport = true,
                "proxy_protocol" => l.proxy_protocol = true,
                // nginx's separate bind() per address: what Gantry always does.
                "bind" => {}
                "deferred" => {
                    return Err(bad(
                        "'deferred' (TCP_DEFER_ACCEPT) is not supported: remove it".into(),
                    ))
                }
                w if w.starts_with("backlog=") => {
                    l.backlog = Some(
                        w["backlog=".len()..]
                            .parse::<u32>()
                            .ok()
                            .filter(|n| *n > 0)
                            .ok_or_else(|| {
                                bad(format!("'{w}': backlog must be a positive number"))
                            })?,
                    )
                }
                w if w.starts_with("ipv6only=") => {
                    l.ipv6only = Some(match &w["ipv6only=".len()..] {
                        "on" => true,
                        "off" => false,
                        _ => return Err(bad(format!("'{w}': ipv6only is on or off"))),
                    })
                }
                w if w.starts_with("so_keepalive=") => {
                    l.so_keepalive =
                        Some(keepalive(&w["so_keepalive=".len()..]).ok_or_else(|| {
                            bad(format!(
                                "'{w}': so_keepalive is on, off or [idle]:[interval]:[count]"
                            ))
                        })?)
                }
                other => return Err(bad(format!("unknown flag '{other}'"))),
            }
        }
        if l.ipv6only.is_some() && !l.addr.starts_with('[') {
            return Err(bad("'ipv6only' applies to IPv6 addresses only".into()));
        }
        Ok(l)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_read_or_refused() {
        let l =
            Listen::parse_list("127.0.0.1:8000 reuseport backlog=16384 so_keepalive=30m::10 bind")
                .unwrap();
        assert_eq!(l[0].backlog, Some(16384));
        assert_eq!(
            l[0].so_keepalive,
            Some(Keepalive::On {
                idle: Some(1800),
                interval: None,
                count: Some(10)
            })
        );
        let v6 = Listen::parse_list("[::1]:8000 ipv6only=on").unwrap();
        assert_eq!(v6[0].ipv6only, Some(true));
        for (bad, says) in [
            ("127.0.0.1:8000 deferred", "deferred"),
            ("127.0.0.1:8000 backlog=0", "backlog"),
            ("127.0.0.1:8000 so_keepalive=sometimes", "so_keepalive"),
            ("127.0.0.1:8000 ipv6only=on", "IPv6"),
            ("127.0.0.1:8000 fast", "unknown flag 'fast'"),
        ] {
            let e = Listen::parse_list(bad).unwrap_err().0;
            assert!(e.contains(says), "{bad}: {e}");
        }
        assert_eq!(
            Listen::parse_list("127.0.0.1:8000 so_keepalive=off").unwrap()[0].so_keepalive,
            Some(Keepalive::Off)
        );
    }
}
