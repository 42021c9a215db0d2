//! Which clients' forwarding headers to believe: Kong's `trusted_ips`, `real_ip_header` and
//! `real_ip_recursive` (nginx's realip module). From a trusted peer, the client address comes
//! from `real_ip_header`, and the `X-Forwarded-*` headers it sent are kept; from any other
//! peer, the peer is the client and those headers are replaced.

use std::net::IpAddr;

use hyper::header::{HeaderMap, HeaderName};
use ipnet::IpNet;

/// A set of addresses and blocks, matched with IPv4-mapped IPv6 addresses in either form:
/// `trusted_ips`, ip-restriction's `allow` and `deny`.
#[derive(Debug, Clone, Default)]
pub struct IpSet {
    nets: Vec<IpNet>,
}

impl IpSet {
    /// From addresses and blocks (`10.0.0.0/8`, `192.0.2.1`, `::/0`); an entry that is neither
    /// is returned as the error.
    pub fn parse<'a>(items: impl IntoIterator<Item = &'a str>) -> Result<IpSet, &'a str> {
        let mut nets = Vec::new();
        for t in items {
            nets.push(net(t).ok_or(t)?);
        }
        Ok(IpSet { nets })
    }

    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    /// Whether `ip` is in the set, an IPv4-mapped IPv6 address in either of its forms.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let mapped = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4),
            IpAddr::V4(v4) => Some(IpAddr::V6(v4.to_ipv6_mapped())),
        };
        self.nets
            .iter()
            .any(|n| n.contains(&ip) || mapped.is_some_and(|m| n.contains(&m)))
    }
}

#[derive(Debug, Clone)]
pub struct Trust {
    nets: IpSet,
    /// `real_ip_header`: a header, or (`None`) `proxy_protocol`, the address a connection's
    /// PROXY protocol header named.
    header: Option<HeaderName>,
    recursive: bool,
}

impl Default for Trust {
    /// Kong's defaults: no peer is trusted.
    fn default() -> Trust {
        Trust {
            nets: IpSet::default(),
            header: Some(crate::names::X_REAL_IP),
            recursive: false,
        }
    }
}

/// An address or a block: `10.0.0.0/8`, `192.0.2.1`, `::/0`.
fn net(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
}

impl Trust {
    /// From the settings' values; an entry that is neither an address nor a block is an error
    /// naming it. `unix:` (trusting Unix sockets) is accepted and has nothing to match here.
    pub fn parse(
        trusted_ips: &str,
        real_ip_header: &str,
        recursive: bool,
    ) -> Result<Trust, crate::error::SetupError> {
        let nets = IpSet::parse(
            trusted_ips
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty() && *t != "unix:"),
        )
        .map_err(|t| crate::error::SetupError::TrustedIp(t.to_string()))?;
        let name = real_ip_header.trim();
        let header = if name.eq_ignore_ascii_case("proxy_protocol") {
            None
        } else {
            Some(
                HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| crate::error::SetupError::RealIpHeader(name.to_string()))?,
            )
        };
        Ok(Trust {
            nets,
            header,
            recursive,
        })
    }

    /// Whether any peer is trusted at all (none by default: the request path skips the rest).
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    /// Whether `ip` is in `trusted_ips`, an IPv4-mapped IPv6 address in either of its forms.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.nets.contains(ip)
    }

    /// The client's address: the peer's, or, for a trusted peer, the one `real_ip_header`
    /// names, as nginx's realip module reads it. `X-Forwarded-For` (every line, joined) is
    /// read from the right: its last address, or with `real_ip_recursive` the first from the
    /// right that is not trusted itself. Reading stops at an entry that is not an address,
    /// keeping the last good one (the peer when it is the last entry), so a client cannot
    /// slip an address past a proxy's. Another header gives the address its first line holds.
    /// With `real_ip_header = proxy_protocol`, a trusted peer's client is the one its PROXY
    /// protocol header named (`proxied`), if any.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap, proxied: Option<IpAddr>) -> IpAddr {
        if self.nets.is_empty() || !self.trusts(peer) {
            return peer;
        }
        let Some(header) = &self.header else {
            return proxied.unwrap_or(peer);
        };
        if *header != crate::names::X_FORWARDED_FOR {
            return headers
                .get(header)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_addr(v.trim()))
                .unwrap_or(peer);
        }
        let joined: Vec<&str> = headers
            .get_all(header)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        let joined = joined.join(",");
        let mut client = peer;
        for entry in joined
            .rsplit([',', ' '])
            .map(str::trim)
            .filter(|e| !e.is_empty())
        {
            match parse_addr(entry) {
                Some(a) => client = a,
                None => break,
            }
            if !self.recursive || !self.trusts(client) {
                break;
            }
        }
        client
    }
}

/// An address as forwarding headers write it: `192.0.2.1`, `192.0.2.1:5000`, `[2001:db8::1]`,
/// `[2001:db8::1]:5000` or `2001:db8::1`.
fn parse_addr(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sa) = s.parse::<std::net::SocketAddr>() {
        return Some(sa.ip());
    }
    s.strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .and_then(|r| r.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(name: &str, values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn realip_as_nginx() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let lb = ip("10.0.0.5");
        let none = Trust::default();
        assert_eq!(
            none.client(lb, &headers("x-real-ip", &["1.2.3.4"]), None),
            lb
        );

        let t = Trust::parse("10.0.0.0/8, 192.0.2.1", "X-Real-IP", false).unwrap();
        let mapped = Trust::parse("::ffff:10.0.0.0/104", "X-Real-IP", false).unwrap();
        assert!(mapped.trusts(lb), "a mapped block covers the IPv4 peer");
        assert!(t.trusts(lb) && t.trusts(ip("192.0.2.1")) && !t.trusts(ip("192.0.2.2")));
        assert!(t.trusts(ip("::ffff:10.1.2.3")), "IPv4-mapped peers");
        assert_eq!(
            t.client(lb, &headers("x-real-ip", &["1.2.3.4"]), None),
            ip("1.2.3.4")
        );
        assert_eq!(t.client(lb, &headers("x-real-ip", &["garbage"]), None), lb);
        assert_eq!(t.client(lb, &HeaderMap::new(), None), lb);
        // Untrusted peers are their own client, whatever they send.
        let other = ip("203.0.113.9");
        assert_eq!(
            t.client(other, &headers("x-real-ip", &["1.2.3.4"]), None),
            other
        );

        let xff = |recursive| Trust::parse("10.0.0.0/8", "X-Forwarded-For", recursive).unwrap();
        let h = headers("x-forwarded-for", &["1.2.3.4, 10.0.0.7", "10.0.0.8"]);
        assert_eq!(
            xff(false).client(lb, &h, None),
            ip("10.0.0.8"),
            "the last address"
        );
        assert_eq!(
            xff(true).client(lb, &h, None),
            ip("1.2.3.4"),
            "the last untrusted one"
        );
        let all_trusted = headers("x-forwarded-for", &["10.0.0.1, 10.0.0.2"]);
        assert_eq!(xff(true).client(lb, &all_trusted, None), ip("10.0.0.1"));
        let v6 = headers("x-forwarded-for", &["[2001:db8::1]:443"]);
        assert_eq!(xff(false).client(lb, &v6, None), ip("2001:db8::1"));

        // An entry that is not an address stops the reading (nginx): no address past it.
        let bad_last = headers("x-forwarded-for", &["198.51.100.1, unknown"]);
        assert_eq!(xff(false).client(lb, &bad_last, None), lb);
        let bad_middle = headers("x-forwarded-for", &["198.51.100.1, garbage, 10.0.0.7"]);
        assert_eq!(xff(true).client(lb, &bad_middle, None), ip("10.0.0.7"));
        let e = Trust::parse("10.0.0.0/8, nonsense", "X-Real-IP", false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("trusted_ips") && e.contains("nonsense"), "{e}");
        // proxy_protocol: the address a trusted peer's PROXY protocol header named.
        let pp = Trust::parse("10.0.0.0/8", "proxy_protocol", false).unwrap();
        let none = HeaderMap::new();
        assert_eq!(pp.client(lb, &none, Some(ip("192.0.2.9"))), ip("192.0.2.9"));
        assert_eq!(pp.client(lb, &none, None), lb);
        assert_eq!(
            pp.client(ip("203.0.113.1"), &none, Some(ip("192.0.2.9"))),
            ip("203.0.113.1"),
            "an untrusted peer is the client"
        );
        assert!(Trust::parse("unix:, ::/0", "X-Real-IP", false)
            .unwrap()
            .trusts(ip("::1")));
    }
}
