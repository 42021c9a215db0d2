//! HAProxy's PROXY protocol (v1 text and v2 binary, parsed by the `ppp` crate) on listeners
//! with Kong's `proxy_protocol` flag: every connection must start with a header naming the
//! client the load balancer in front accepted; a connection without a valid one is closed, as
//! nginx does. The address is the connection's `proxy_protocol` address, which becomes the
//! client's when `real_ip_header = proxy_protocol` and the load balancer is in `trusted_ips`
//! (nginx's `$proxy_protocol_addr` with its realip module). A v2 `LOCAL` header (a load
//! balancer's own health check) and v1 `UNKNOWN` carry no address: the peer stays the client.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use ppp::{v1, v2, HeaderResult, PartialResult};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// The longest header read: v1's is at most 107 bytes, v2's 16 plus what its TLVs take.
const MAX_HEADER: usize = 4096;

/// Why a connection's PROXY protocol header was not read.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("no PROXY protocol header within {0:?}")]
    Timeout(Duration),
    #[error("the connection ended before a PROXY protocol header")]
    Closed,
    #[error("invalid PROXY protocol header")]
    Invalid,
    #[error("PROXY protocol header longer than {MAX_HEADER} bytes")]
    TooLong,
    #[error("reading the PROXY protocol header: {0}")]
    Io(#[from] std::io::Error),
}

/// A stream whose first bytes were read already: they come first.
pub struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// What a complete header says: its length and the client's address, if it names one.
fn parsed(buf: &[u8]) -> Result<Option<(usize, Option<SocketAddr>)>, HeaderError> {
    let header = HeaderResult::parse(buf);
    if header.is_incomplete() {
        return Ok(None);
    }
    let sock = |ip: IpAddr, port: u16| Some(SocketAddr::new(ip, port));
    Ok(Some(match header {
        HeaderResult::V1(Ok(h)) => {
            let addr = match h.addresses {
                v1::Addresses::Tcp4(a) => sock(a.source_address.into(), a.source_port),
                v1::Addresses::Tcp6(a) => sock(a.source_address.into(), a.source_port),
                v1::Addresses::Unknown => None,
            };
            (h.header.len(), addr)
        }
        HeaderResult::V2(Ok(h)) => {
            let addr = match (h.command, h.addresses) {
                (v2::Command::Proxy, v2::Addresses::IPv4(a)) => {
                    sock(a.source_address.into(), a.source_port)
                }
                (v2::Command::Proxy, v2::Addresses::IPv6(a)) => {
                    sock(a.source_address.into(), a.source_port)
                }
                _ => None,
            };
            (h.len(), addr)
        }
        HeaderResult::V1(Err(_)) | HeaderResult::V2(Err(_)) => return Err(HeaderError::Invalid),
    }))
}

/// Read a connection's PROXY protocol header: the stream with what followed it, and the
/// client's address when the header names one.
pub async fn accept<S: AsyncRead + Unpin>(
    mut stream: S,
    within: Duration,
) -> Result<(Prefixed<S>, Option<SocketAddr>), HeaderError> {
    let mut buf: Vec<u8> = Vec::with_capacity(256);
    let read = async {
        loop {
            let mut chunk = [0u8; 512];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(HeaderError::Closed);
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(found) = parsed(&buf)? {
                return Ok(found);
            }
            if buf.len() > MAX_HEADER {
                return Err(HeaderError::TooLong);
            }
        }
    };
    let (len, addr) = tokio::time::timeout(within, read)
        .await
        .map_err(|_| HeaderError::Timeout(within))??;
    let prefix = Bytes::from(buf).slice(len..);
    Ok((
        Prefixed {
            prefix,
            inner: stream,
        },
        addr,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn v1_and_v2_headers_and_what_follows() {
        let v1 = b"PROXY TCP4 192.0.2.7 10.0.0.1 56324 443\r\nGET / HTTP/1.1\r\n";
        let (mut s, addr) = accept(&v1[..], Duration::from_secs(1)).await.unwrap();
        assert_eq!(addr, Some("192.0.2.7:56324".parse().unwrap()));
        let mut rest = String::new();
        s.read_to_string(&mut rest).await.unwrap();
        assert_eq!(rest, "GET / HTTP/1.1\r\n");
        let unknown = b"PROXY UNKNOWN\r\nX";
        let (_, addr) = accept(&unknown[..], Duration::from_secs(1)).await.unwrap();
        assert_eq!(addr, None);
        // v2, PROXY, TCP over IPv6.
        let mut v2 = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        v2.extend_from_slice(&[0x21, 0x21, 0, 36]);
        let src: std::net::Ipv6Addr = "2001:db8::5".parse().unwrap();
        v2.extend_from_slice(&src.octets());
        v2.extend_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
        v2.extend_from_slice(&4000u16.to_be_bytes());
        v2.extend_from_slice(&443u16.to_be_bytes());
        v2.extend_from_slice(b"HTTP");
        let (mut s, addr) = accept(&v2[..], Duration::from_secs(1)).await.unwrap();
        assert_eq!(addr, Some("[2001:db8::5]:4000".parse().unwrap()));
        let mut rest = String::new();
        s.read_to_string(&mut rest).await.unwrap();
        assert_eq!(rest, "HTTP");
        assert!(matches!(
            accept(&b"GET / HTTP/1.1\r\n\r\n"[..], Duration::from_secs(1)).await,
            Err(HeaderError::Invalid)
        ));
        assert!(matches!(
            accept(&b"PROXY TCP4 1.2.3.4"[..], Duration::from_secs(1)).await,
            Err(HeaderError::Closed)
        ));
    }
}
