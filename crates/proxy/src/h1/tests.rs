//! Exchanges with scripted upstreams: this hop's headers, the read timeout on a kept connection,
//! chunked bodies and trailers, close-delimited bodies, invalid responses, closed connections.

use super::*;
use crate::pool::{Conn, Dest};
use http_body_util::BodyExt;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An upstream that answers each request head it reads on one connection with the next
/// of `answers`, then closes; it returns what it read and how many connections it took.
async fn upstream(
    answers: Vec<&'static [u8]>,
) -> (Arc<Dest>, tokio::task::JoinHandle<(String, usize)>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let task = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut seen = Vec::new();
        for (heads, a) in answers.into_iter().enumerate() {
            loop {
                let text = String::from_utf8_lossy(&seen);
                if text.matches("\r\n\r\n").count() > heads {
                    break;
                }
                let mut b = [0u8; 4096];
                let n = s.read(&mut b).await.unwrap();
                assert!(n > 0, "the proxy closed the connection");
                seen.extend_from_slice(&b[..n]);
            }
            s.write_all(a).await.unwrap();
        }
        drop(s);
        let more = tokio::time::timeout(Duration::from_millis(200), l.accept()).await;
        (
            String::from_utf8(seen).unwrap(),
            1 + usize::from(more.is_ok()),
        )
    });
    let dest = Arc::new(Dest::new(addr, None, false, Duration::from_secs(5)));
    (dest, task)
}

fn get(method: Method) -> Request<UpBody> {
    let mut r = Request::new(http_body_util::Either::Right(
        http_body_util::Full::default(),
    ));
    *r.method_mut() = method;
    *r.uri_mut() = "/p?q=1".parse().unwrap();
    r.headers_mut()
        .insert(header::HOST, HeaderValue::from_static("up"));
    r
}

async fn send(
    pool: &Arc<Pool>,
    dest: &Arc<Dest>,
    req: Request<UpBody>,
) -> Result<Response<ProxyBody>, UpstreamError> {
    send_within(pool, dest, req, Duration::from_secs(5)).await
}

async fn send_within(
    pool: &Arc<Pool>,
    dest: &Arc<Dest>,
    req: Request<UpBody>,
    read_timeout: Duration,
) -> Result<Response<ProxyBody>, UpstreamError> {
    let conn = pool.checkout(dest, Duration::from_secs(5)).await?;
    assert!(matches!(conn, Conn::H1(..)));
    let added = crate::forward::Added::none();
    pool.send_on(
        dest,
        conn,
        req,
        &added,
        false,
        Duration::from_secs(5),
        read_timeout,
    )
    .await
    .map(|(res, _)| res)
}

/// `Connection` and `Keep-Alive` are read for this hop and not passed on, unless
/// `Connection` names other headers (the proxy removes those with it).
#[tokio::test]
async fn connection_headers_are_this_hops() {
    let (dest, up) = upstream(vec![
        b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nConnection: X-Hop\r\nX-Hop: 1\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nCONNECTION: Keep-Alive , Close\r\nContent-Length: 2\r\n\r\nok",
    ])
    .await;
    let pool = Arc::new(Pool::new());
    let res = send(&pool, &dest, get(Method::GET)).await.unwrap();
    let names: Vec<_> = res.headers().keys().map(HeaderName::as_str).collect();
    assert_eq!(names, ["content-length"]);
    res.into_body().collect().await.unwrap();
    let res = send(&pool, &dest, get(Method::GET)).await.unwrap();
    assert_eq!(res.headers()[header::CONNECTION], "X-Hop");
    assert_eq!(res.headers()["x-hop"], "1");
    res.into_body().collect().await.unwrap();
    let res = send(&pool, &dest, get(Method::GET)).await.unwrap();
    assert!(res.headers().get(header::CONNECTION).is_none());
    res.into_body().collect().await.unwrap();
    assert!(pool.take(&dest.key).is_none(), "close: not kept");
    let (_, conns) = up.await.unwrap();
    assert_eq!(conns, 1, "kept until the upstream said close");
}

/// A kept connection's timer, armed for its first request, neither cuts a later request
/// short nor lets one wait past its own deadline, nor outlives the deadline a shorter
/// timeout sets.
#[tokio::test]
async fn the_read_timeout_holds_on_a_kept_connection() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    // Answers the first request at once, the second after 150 ms, and no other.
    let up = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut seen = Vec::new();
        let mut heads = 0;
        loop {
            let mut b = [0u8; 4096];
            let n = s.read(&mut b).await.unwrap();
            if n == 0 {
                return heads;
            }
            seen.extend_from_slice(&b[..n]);
            while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                seen.drain(..end + 4);
                heads += 1;
                match heads {
                    1 => {}
                    2 => tokio::time::sleep(Duration::from_millis(150)).await,
                    _ => continue,
                }
                s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await
                    .unwrap();
            }
        }
    });
    let dest = Arc::new(Dest::new(addr, None, false, Duration::from_secs(5)));
    let pool = Arc::new(Pool::new());
    let timeout = Duration::from_millis(300);
    let res = send_within(&pool, &dest, get(Method::GET), timeout)
        .await
        .unwrap();
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "ok");
    // The first deadline passes while the connection is idle in the pool.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let res = send_within(&pool, &dest, get(Method::GET), Duration::from_secs(5))
        .await
        .expect("the second request has a deadline of its own");
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "ok");
    // A shorter timeout than the timer was last set for (5 s).
    let short = Duration::from_millis(100);
    let started = std::time::Instant::now();
    let e = send_within(&pool, &dest, get(Method::GET), short)
        .await
        .expect_err("never answered");
    assert!(crate::pool::is_read_timeout(&e), "{e}");
    let took = started.elapsed();
    assert!(
        took >= short && took < Duration::from_secs(2),
        "timed out after {took:?}"
    );
    drop(pool);
    assert_eq!(up.await.unwrap(), 3, "one connection carried the three");
}

#[tokio::test]
async fn chunks_trailers_and_reuse() {
    let (dest, up) = upstream(vec![
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 99, x\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-t: 1\r\n\r\n",
        b"HTTP/1.1 201 Made Here\r\nContent-Length: 2, 2\r\nX-A: a\r\nX-A: b\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
    ])
    .await;
    let pool = Arc::new(Pool::new());
    let res = send(&pool, &dest, get(Method::GET)).await.unwrap();
    assert_eq!(res.status(), 200);
    // Transfer-Encoding wins: the conflicting (and invalid) Content-Length is gone.
    assert!(res.headers().get(header::CONTENT_LENGTH).is_none());
    let collected = res.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().unwrap()["x-t"], "1");
    assert_eq!(collected.to_bytes(), "hello world");
    let res = send(&pool, &dest, get(Method::POST)).await.unwrap();
    assert_eq!(res.status(), 201);
    assert_eq!(
        res.extensions()
            .get::<hyper::ext::ReasonPhrase>()
            .unwrap()
            .as_bytes(),
        b"Made Here"
    );
    let values: Vec<_> = res.headers().get_all("x-a").iter().collect();
    assert_eq!(values, ["a", "b"]);
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "ok");
    // HEAD: a length and no body.
    let res = send(&pool, &dest, get(Method::HEAD)).await.unwrap();
    assert_eq!(res.headers()[header::CONTENT_LENGTH], "5");
    assert!(res
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .is_empty());
    let (seen, conns) = up.await.unwrap();
    assert_eq!(conns, 1, "one connection carried the three requests");
    assert!(
        seen.starts_with("GET /p?q=1 HTTP/1.1\r\nhost: up\r\n\r\nPOST /p?q=1 HTTP/1.1\r\n"),
        "{seen}"
    );
}

#[tokio::test]
async fn a_body_to_the_close_is_read_and_the_connection_not_kept() {
    let (dest, up) = upstream(vec![b"HTTP/1.0 200 OK\r\n\r\nall of it"]).await;
    let pool = Arc::new(Pool::new());
    let res = send(&pool, &dest, get(Method::GET)).await.unwrap();
    assert_eq!(
        res.into_body().collect().await.unwrap().to_bytes(),
        "all of it"
    );
    assert!(pool.take(dest.key()).is_none());
    up.await.unwrap();
}

#[tokio::test]
async fn invalid_responses_fail() {
    for bad in [
        &b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok"[..],
        b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2, 3\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: x\r\n\r\nok",
        b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
    ] {
        let (dest, up) = upstream(vec![bad]).await;
        let pool = Arc::new(Pool::new());
        assert!(
            send(&pool, &dest, get(Method::GET)).await.is_err(),
            "{}",
            String::from_utf8_lossy(bad)
        );
        up.abort();
    }
    // A body cut short is an error of the body, and the connection is not kept.
    let (dest, up) = upstream(vec![
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
    ])
    .await;
    let pool = Arc::new(Pool::new());
    let res = send(&pool, &dest, get(Method::GET)).await.unwrap();
    assert!(res.into_body().collect().await.is_err());
    assert!(pool.take(dest.key()).is_none());
    up.await.unwrap();
}

#[tokio::test]
async fn a_kept_connection_the_upstream_closed_is_not_used() {
    let (dest, up) = upstream(vec![b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"]).await;
    let pool = Arc::new(Pool::new());
    let res = send(&pool, &dest, get(Method::GET)).await.unwrap();
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "ok");
    up.await.unwrap();
    // The upstream has closed it: the pool does not hand it out.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(pool.take(dest.key()).is_none());
}
