//! HTTP as tests use it: calls that must succeed, and waiting for an answer.

use std::time::{Duration, Instant};

use serde_json::Value;

/// A call that must succeed (2xx); returns the body (`null` when it is not JSON).
pub async fn call_ok(http: &reqwest::Client, method: &str, url: &str, body: Value) -> Value {
    let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let r = http.request(m, url).json(&body).send().await.unwrap();
    let status = r.status();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    assert!(status.is_success(), "{method} {url}: {status} {v}");
    v
}

/// `GET url`: the status and the JSON body (`null` when it is not JSON).
pub async fn get_json(http: &reqwest::Client, url: &str) -> (u16, Value) {
    let r = http.get(url).send().await.unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

/// `GET url`: the body as text (a status listener's `/metrics`, say).
pub async fn get_text(http: &reqwest::Client, url: &str) -> String {
    let r = http.get(url).send().await.expect("an answer");
    r.text().await.expect("a text body")
}

/// `GET url` until it answers `want`; panics after `within`. Returns the answer.
pub async fn until(
    http: &reqwest::Client,
    url: &str,
    want: u16,
    within: Duration,
) -> reqwest::Response {
    let deadline = Instant::now() + within;
    loop {
        let got = http.get(url).send().await;
        match got {
            Ok(r) if r.status().as_u16() == want => return r,
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "GET {url}: {:?} after {within:?}, want {want}",
            got.map(|r| r.status())
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Kong's error for a plugin the node does not enable, as Kong 3.9 words it.
pub fn not_enabled(name: &str) -> String {
    format!("plugin '{name}' not enabled; add it to the 'plugins' configuration property")
}

/// Wait until `check` holds; panics with `what` after `within`.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Send `raw` on a new connection to `addr` (`host:port`) and read what comes back until the
/// server closes the connection, for at most 10 s.
pub async fn exchange(addr: &str, raw: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(raw).await.unwrap();
    let mut out = Vec::new();
    let read = s.read_to_end(&mut out);
    let _ = tokio::time::timeout(Duration::from_secs(10), read).await;
    String::from_utf8_lossy(&out).into_owned()
}
