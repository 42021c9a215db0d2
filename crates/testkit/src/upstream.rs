//! Upstreams for tests, on loopback ports of their own.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An echo upstream (it answers with what it received, as JSON); returns its `host:port`.
pub async fn echo() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(gantry_proxy::echo::serve(l));
    addr.to_string()
}

/// An upstream that reads a request head, then writes `head`, waits `pause` and writes `tail`
/// (nothing when it is empty): for answers no HTTP library would send.
pub async fn raw(head: &'static [u8], pause: Duration, tail: &'static [u8]) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s.write_all(head).await;
                if !tail.is_empty() {
                    tokio::time::sleep(pause).await;
                    let _ = s.write_all(tail).await;
                }
            });
        }
    });
    addr
}

/// An upstream that only counts the connections it is offered (and answers none): for requests
/// that must never reach an upstream. Its address and the count.
pub async fn counting() -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let hits = std::sync::Arc::new(AtomicUsize::new(0));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let h = hits.clone();
    tokio::spawn(async move {
        while let Ok((_s, _)) = l.accept().await {
            h.fetch_add(1, Ordering::SeqCst);
        }
    });
    (addr, hits)
}
