//! `*_listen` values: `host:port [ssl] [http2] [reuseport] ...`, comma separated, or `off`.

/// One listening address with its flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    /// `host:port`, as given (IPv6 in brackets).
    pub addr: String,
    pub ssl: bool,
    pub http2: bool,
    pub reuseport: bool,
    pub proxy_protocol: bool,
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
            ssl: false,
            http2: false,
            reuseport: false,
            proxy_protocol: false,
        };
        for w in words {
            match w {
                "ssl" => l.ssl = true,
                "http2" => l.http2 = true,
                "reuseport" => l.reuseport = true,
                "proxy_protocol" => l.proxy_protocol = true,
                // nginx flags Kong accepts that have no meaning here.
                "deferred" | "bind" => {}
                w if w.starts_with("backlog=")
                    || w.starts_with("ipv6only=")
                    || w.starts_with("so_keepalive=") => {}
                other => {
                    return Err(crate::InvalidValue(format!(
                        "unknown flag '{other}' in '{entry}'"
                    )))
                }
            }
        }
        Ok(l)
    }
}
