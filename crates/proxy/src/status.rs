//! The status listener (`status_listen`): `/status`, `/status/ready`, `/status/dns` (the
//! resolver's statistics, as Kong's new DNS client reports them) and Prometheus `/metrics`.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::plugins::{error, raw};
use crate::server::ProxyBody;
use crate::Proxy;

/// Resident memory of this process, from /proc (0 where unavailable).
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u64>().ok())
        })
        .map(|pages| pages * 4096)
        .unwrap_or(0)
}

fn answer(proxy: &Proxy, path: &str) -> Response<ProxyBody> {
    let snap = proxy.current();
    let ready = proxy.stats.ready.load(Ordering::Relaxed);
    match path {
        "/status" => {
            let mut body = json!({
                "configuration_hash": snap.hashes.config,
                "config_version": snap.version,
                "ready": ready,
                "server": { "total_requests": proxy.stats.total() },
                "memory": { "rss_bytes": rss_bytes() },
            });
            if let (Some(o), Ok(sources)) = (body.as_object_mut(), proxy.metrics.lock()) {
                for s in sources.iter() {
                    s.status(o);
                }
            }
            raw(
                200,
                "application/json; charset=utf-8",
                Bytes::from(body.to_string()),
            )
        }
        "/status/dns" => raw(
            200,
            "application/json; charset=utf-8",
            Bytes::from(proxy.dns_status().to_string()),
        ),
        "/status/ready" => {
            if ready {
                raw(
                    200,
                    "application/json; charset=utf-8",
                    Bytes::from(r#"{"message":"ready"}"#),
                )
            } else {
                error(503, "no configuration loaded yet")
            }
        }
        "/metrics" => {
            let mut m = String::new();
            m.push_str(
                "# HELP gantry_http_requests_total Proxied requests by response status class.\n",
            );
            m.push_str("# TYPE gantry_http_requests_total counter\n");
            for (i, c) in proxy.stats.by_class.iter().enumerate() {
                m.push_str(&format!(
                    "gantry_http_requests_total{{class=\"{}xx\"}} {}\n",
                    i + 1,
                    c.load(Ordering::Relaxed)
                ));
            }
            m.push_str("# HELP gantry_http_request_duration_ms Request head to response head, milliseconds.\n");
            m.push_str("# TYPE gantry_http_request_duration_ms histogram\n");
            let mut cumulative = 0;
            for (i, c) in proxy.stats.latency.iter().enumerate() {
                cumulative += c.load(Ordering::Relaxed);
                let le = gantry_model::analytics::BOUNDS_MS
                    .get(i)
                    .map(|b| b.to_string())
                    .unwrap_or_else(|| "+Inf".into());
                m.push_str(&format!(
                    "gantry_http_request_duration_ms_bucket{{le=\"{le}\"}} {cumulative}\n"
                ));
            }
            m.push_str(&format!(
                "gantry_http_request_duration_ms_sum {}\ngantry_http_request_duration_ms_count {cumulative}\n",
                proxy.stats.latency_sum_us.load(Ordering::Relaxed) as f64 / 1000.0
            ));
            m.push_str(&proxy.target_health_metrics());
            m.push_str("# HELP gantry_config_version The configuration version this node runs.\n");
            m.push_str("# TYPE gantry_config_version gauge\n");
            m.push_str(&format!("gantry_config_version {}\n", snap.version));
            m.push_str("# HELP gantry_config_hash_info The configuration hash this node runs.\n");
            m.push_str("# TYPE gantry_config_hash_info gauge\n");
            m.push_str(&format!(
                "gantry_config_hash_info{{hash=\"{}\"}} 1\n",
                snap.hashes.config
            ));
            m.push_str("# HELP gantry_ready Whether a configuration is loaded.\n");
            m.push_str("# TYPE gantry_ready gauge\n");
            m.push_str(&format!("gantry_ready {}\n", u8::from(ready)));
            m.push_str("# HELP gantry_memory_rss_bytes Resident memory of the process.\n");
            m.push_str("# TYPE gantry_memory_rss_bytes gauge\n");
            m.push_str(&format!("gantry_memory_rss_bytes {}\n", rss_bytes()));
            if let Ok(sources) = proxy.metrics.lock() {
                for s in sources.iter() {
                    s.write(&mut m);
                }
            }
            proxy.kong_metrics(&mut m);
            raw(200, "text/plain; version=0.0.4", Bytes::from(m))
        }
        _ => error(404, "Not found"),
    }
}

/// Serve the status endpoints until `shutdown` turns true.
pub async fn serve(proxy: Arc<Proxy>, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let p = proxy.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let res = answer(&p, req.uri().path());
                        async move { Ok::<_, Infallible>(res) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
            _ = async { let _ = shutdown.wait_for(|v| *v).await; } => break,
        }
    }
}
