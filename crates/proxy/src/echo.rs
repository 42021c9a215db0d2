//! A small echo upstream: it answers every request with a JSON description of it. `gantry
//! quickstart` puts it behind its example route, and tests proxy to it. `/delay/{ms}` waits
//! before answering, `/status/{code}` answers with that status.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;

async fn answer(
    req: Request<Incoming>,
    peer: SocketAddr,
    local: SocketAddr,
) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut headers = Map::new();
    for (k, v) in &parts.headers {
        headers.insert(
            k.as_str().to_string(),
            Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()),
        );
    }
    let path = parts.uri.path().to_string();
    let mut status = 200;
    for (i, seg) in path.split('/').enumerate().skip(1) {
        let next = path
            .split('/')
            .nth(i + 1)
            .and_then(|s| s.parse::<u64>().ok());
        match (seg, next) {
            ("delay", Some(ms)) => tokio::time::sleep(Duration::from_millis(ms.min(60_000))).await,
            ("status", Some(code)) => status = code as u16,
            _ => {}
        }
    }
    let out = json!({
        "method": parts.method.as_str(),
        "path": path,
        "uri": parts.uri.to_string(),
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
        "client": peer.to_string(),
        "server": local.to_string(),
    });
    let mut r = Response::new(Full::new(Bytes::from(out.to_string())));
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::OK);
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

/// Serve the echo upstream on `listener` until the task is dropped or aborted.
pub async fn serve(listener: TcpListener) {
    let Ok(local) = listener.local_addr() else {
        return;
    };
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(serve_conn(stream, peer, local));
    }
}

/// The same over TLS, with a self-signed certificate for `localhost` and `127.0.0.1`.
pub async fn serve_tls(listener: TcpListener) {
    let Ok(local) = listener.local_addr() else {
        return;
    };
    let Ok(ck) =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
    else {
        return;
    };
    let Ok(key) = crate::tls::certified_key(&ck.cert.pem(), &ck.signing_key.serialize_pem()) else {
        return;
    };
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let Ok(builder) =
        rustls::ServerConfig::builder_with_provider(provider).with_safe_default_protocol_versions()
    else {
        return;
    };
    let resolver = rustls::sign::SingleCertAndKey::from(key);
    let cfg = builder
        .with_no_client_auth()
        .with_cert_resolver(std::sync::Arc::new(resolver));
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(cfg));
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            if let Ok(tls) = acceptor.accept(stream).await {
                serve_conn(tls, peer, local).await;
            }
        });
    }
}

async fn serve_conn<S>(stream: S, peer: SocketAddr, local: SocketAddr)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| async move {
        Ok::<_, Infallible>(answer(req, peer, local).await)
    });
    // Heads as large as the proxy forwards (hyper's default is 100 header lines).
    let _ = hyper::server::conn::http1::Builder::new()
        .max_headers(crate::server::MAX_HEADER_LINES)
        .serve_connection(TokioIo::new(stream), svc)
        .await;
}
