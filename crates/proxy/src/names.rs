//! Header names the request path uses, made at compile time (a name made at run time is
//! parsed and validated on each use), and header values made on it without an allocation each.

use hyper::header::{HeaderName, HeaderValue};

pub const ACCESS_CONTROL_ALLOW_PRIVATE_NETWORK: HeaderName =
    HeaderName::from_static("access-control-allow-private-network");
pub const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
pub const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
pub const RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
pub const RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
pub const RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");
pub const X_ANONYMOUS_CONSUMER: HeaderName = HeaderName::from_static("x-anonymous-consumer");
pub const X_CONSUMER_GROUPS: HeaderName = HeaderName::from_static("x-consumer-groups");
pub const X_CONSUMER_CUSTOM_ID: HeaderName = HeaderName::from_static("x-consumer-custom-id");
pub const X_CONSUMER_ID: HeaderName = HeaderName::from_static("x-consumer-id");
pub const X_CONSUMER_USERNAME: HeaderName = HeaderName::from_static("x-consumer-username");
pub const X_CREDENTIAL_IDENTIFIER: HeaderName = HeaderName::from_static("x-credential-identifier");
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub const X_FORWARDED_PATH: HeaderName = HeaderName::from_static("x-forwarded-path");
pub const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
pub const X_FORWARDED_PREFIX: HeaderName = HeaderName::from_static("x-forwarded-prefix");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_KONG_PROXY_LATENCY: HeaderName = HeaderName::from_static("x-kong-proxy-latency");
pub const X_KONG_REQUEST_ID: HeaderName = HeaderName::from_static("x-kong-request-id");
pub const X_KONG_UPSTREAM_LATENCY: HeaderName = HeaderName::from_static("x-kong-upstream-latency");
pub const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
pub const X_KONG_RESPONSE_LATENCY: HeaderName = HeaderName::from_static("x-kong-response-latency");
pub const X_KONG_UPSTREAM_STATUS: HeaderName = HeaderName::from_static("x-kong-upstream-status");

/// `X-Kong-Request-Id`: this process's prefix and a counter, in 24 hex digits. Kept as bytes,
/// and made a header value only where a map takes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestId([u8; 24]);

impl RequestId {
    pub fn new(prefix: u32, n: u64) -> RequestId {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut b = [0u8; 24];
        // Two digits a byte, from the most significant: the prefix's four bytes, then the
        // counter's eight.
        let bytes = prefix.to_be_bytes().into_iter().chain(n.to_be_bytes());
        for (pair, byte) in b.chunks_exact_mut(2).zip(bytes) {
            pair[0] = HEX[usize::from(byte >> 4)];
            pair[1] = HEX[usize::from(byte & 0xf)];
        }
        RequestId(b)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// As a header value.
    pub fn value(&self) -> HeaderValue {
        value_of(&self.0).unwrap_or(HeaderValue::from_static("0"))
    }
}

/// The start of a header line (`name: `), kept in a fixed-size array: it is written with
/// one copy of a size the compiler knows (moves in registers) and a truncation, where a slice
/// of a run-time length is a call to `memcpy`.
#[derive(Clone, Copy)]
pub struct LineStart {
    bytes: [u8; 32],
    len: u8,
}

impl LineStart {
    /// `start`, at most 32 bytes (checked when the constant is made).
    pub const fn new(start: &[u8]) -> LineStart {
        assert!(start.len() <= 32);
        let mut bytes = [0u8; 32];
        let mut i = 0;
        while i < start.len() {
            bytes[i] = start[i];
            i += 1;
        }
        LineStart {
            bytes,
            len: start.len() as u8,
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// Append it to `out`.
    pub fn push(&self, out: &mut Vec<u8>) {
        let at = out.len();
        out.extend_from_slice(&self.bytes);
        out.truncate(at + usize::from(self.len));
    }
}

/// A header value made on the request path without an allocation of its own: the bytes go
/// into a buffer this thread shares among many values (one allocation per 4 KiB of values,
/// freed once the last value in it is dropped).
pub fn value_of(bytes: &[u8]) -> Result<HeaderValue, hyper::header::InvalidHeaderValue> {
    use std::cell::RefCell;
    thread_local! {
        static ARENA: RefCell<bytes::BytesMut> = RefCell::new(bytes::BytesMut::new());
    }
    ARENA.with(|a| {
        let mut a = a.borrow_mut();
        if a.capacity() < bytes.len() {
            *a = bytes::BytesMut::with_capacity(bytes.len().max(4096));
        }
        a.extend_from_slice(bytes);
        HeaderValue::from_maybe_shared(a.split().freeze())
    })
}

/// A number as a header value (latencies, statuses), without an allocation.
pub fn number(n: u64) -> HeaderValue {
    const SMALL: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
    match SMALL.get(n as usize) {
        Some(s) => HeaderValue::from_static(s),
        None => {
            let (digits, len) = itoa_buf(n);
            value_of(&digits[20 - len..]).unwrap_or_else(|_| HeaderValue::from(n))
        }
    }
}

/// `n` in decimal, right-aligned in 20 bytes, and how many of them it takes.
pub(crate) fn itoa_buf(mut n: u64) -> ([u8; 20], usize) {
    let mut b = [0u8; 20];
    let mut i = 20;
    loop {
        i -= 1;
        b[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    (b, 20 - i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_and_numbers() {
        for n in [0, 7, 10, 99, 12345, u64::MAX] {
            assert_eq!(number(n).to_str().unwrap(), n.to_string());
        }
        let a = value_of(b"abc").unwrap();
        let b = value_of(b"de").unwrap();
        assert_eq!((a.to_str().unwrap(), b.to_str().unwrap()), ("abc", "de"));
        assert!(value_of(b"bad\nvalue").is_err());
        let big = vec![b'x'; 10_000];
        assert_eq!(value_of(&big).unwrap().len(), 10_000);
    }
}
