//! Every way the proxy itself can end a request, and Kong's answer to each, in one place.

use hyper::{Response, StatusCode};

use crate::server::ProxyBody;

/// Why the proxy answered a request itself instead of the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// Framing or a head the proxy refuses (the reason is Kong's message).
    #[error("{0}")]
    BadRequest(&'static str),
    #[error("no Route matched with those values")]
    NoRoute,
    #[error("Non-gRPC request matched gRPC route")]
    NotGrpc,
    #[error("Please use HTTP2 protocol")]
    Http2Required,
    #[error("no Service found with those values")]
    NoService,
    #[error("Service unavailable")]
    ServiceDisabled,
    /// A service protocol the proxy does not forward to (tcp, tls, udp, ...).
    #[error("An invalid response was received from the upstream server")]
    UnsupportedProtocol,
    #[error("failure to get a peer from the ring-balancer")]
    NoPeer,
    #[error("invalid upstream address")]
    InvalidUpstreamAddress,
    #[error("name resolution failed")]
    NameResolution,
    /// Connect, write or read timeout.
    #[error("The upstream server is timing out")]
    UpstreamTimeout,
    /// The upstream refused the connection, closed it or answered with something that is not
    /// HTTP.
    #[error("An invalid response was received from the upstream server")]
    BadUpstream,
    /// A plugin reads the request body, and it is larger than the proxy buffers
    /// ([`crate::plugins::BODY_LIMIT`]): refused rather than passed unread.
    #[error("Request size limit exceeded")]
    BodyTooLarge,
    /// The client's body ended early or was malformed while a plugin waited to read it.
    #[error("Bad request: the request body could not be read")]
    BodyUnreadable,
    /// A transfer coding other than `chunked` (RFC 9112 section 6.1: a server that does not
    /// understand a coding answers 501), never dropped silently.
    #[error("Not implemented: the only transfer coding accepted is chunked")]
    UnknownCoding,
    /// A request head over the size limit (64 KiB), however many lines it has.
    #[error("Request Header Fields Too Large")]
    HeadTooLarge,
}

/// Why the proxy cannot be set up as its settings say: the setting and the value are named.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("{setting}: unknown value '{value}' (expected {expected})")]
    UnknownValue {
        setting: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("{setting}: 'off' cannot be combined with other values")]
    OffCombined { setting: &'static str },
    #[error("trusted_ips: '{0}' is not an IP address or a CIDR block")]
    TrustedIp(String),
    #[error("real_ip_header: '{0}' is not a header name")]
    RealIpHeader(String),
    #[error("cannot read the system's DNS configuration: {0}")]
    SystemDns(String),
    #[error("DNS resolver: {0}")]
    Dns(String),
    #[error("the DNS resolver is already in use")]
    DnsInUse,
    #[error(transparent)]
    Cert(#[from] crate::tls::CertError),
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::NotGrpc => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ProxyError::Http2Required => StatusCode::UPGRADE_REQUIRED,
            ProxyError::NoService
            | ProxyError::ServiceDisabled
            | ProxyError::NoPeer
            | ProxyError::NameResolution => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::UnsupportedProtocol
            | ProxyError::InvalidUpstreamAddress
            | ProxyError::BadUpstream => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::BodyUnreadable => StatusCode::BAD_REQUEST,
            ProxyError::UnknownCoding => StatusCode::NOT_IMPLEMENTED,
            ProxyError::HeadTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        }
    }

    /// Kong's response: the status and `{"message": ...}`.
    pub fn response(&self) -> Response<ProxyBody> {
        let mut res = crate::plugins::error(self.status().as_u16(), &self.to_string());
        if matches!(self, ProxyError::BodyUnreadable) {
            res.extensions_mut().insert(crate::server::ClientFailed);
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kong_statuses_and_messages() {
        for (e, status, message) in [
            (
                ProxyError::NoRoute,
                404,
                "no Route matched with those values",
            ),
            (
                ProxyError::NoPeer,
                503,
                "failure to get a peer from the ring-balancer",
            ),
            (
                ProxyError::UpstreamTimeout,
                504,
                "The upstream server is timing out",
            ),
            (
                ProxyError::BadUpstream,
                502,
                "An invalid response was received from the upstream server",
            ),
            (
                ProxyError::BadRequest("Bad request: missing Host header"),
                400,
                "Bad request: missing Host header",
            ),
            (
                ProxyError::UnknownCoding,
                501,
                "Not implemented: the only transfer coding accepted is chunked",
            ),
        ] {
            assert_eq!(e.status().as_u16(), status);
            assert_eq!(e.to_string(), message);
        }
    }
}
