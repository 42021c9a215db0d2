//! Active health checks: each target of an upstream is probed with `GET http_path` at the
//! healthy or unhealthy interval, and its health follows the active thresholds.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::health::{Health, Outcome, Probe};

async fn probe_once(target: &str, p: &Probe) -> Outcome {
    let work = async {
        let Ok(stream) = TcpStream::connect(target).await else {
            return Outcome::TcpFailure;
        };
        let Ok((mut sender, conn)) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
        else {
            return Outcome::TcpFailure;
        };
        tokio::spawn(conn);
        let Ok(req) = Request::get(p.http_path.as_str())
            .header(hyper::header::HOST, target)
            .body(Empty::<Bytes>::new())
        else {
            return Outcome::TcpFailure;
        };
        match sender.send_request(req).await {
            Ok(r) => Outcome::Status(r.status().as_u16()),
            Err(_) => Outcome::TcpFailure,
        }
    };
    tokio::time::timeout(p.timeout, work)
        .await
        .unwrap_or(Outcome::Timeout)
}

/// Probe the targets of `upstream` until the task is aborted.
pub async fn run(upstream: String, targets: Vec<String>, p: Probe, health: Arc<Health>) {
    let pause = |d: Duration| if d.is_zero() { None } else { Some(d) };
    let timer = gantry_model::timers::register(format!("healthcheck:{upstream}"));
    loop {
        let mut any_down = false;
        let run = timer.run();
        for t in &targets {
            let outcome = probe_once(t, &p).await;
            if let Some(up) = health.report(&upstream, t, outcome, &p.thresholds) {
                tracing::warn!(upstream = %upstream, target = %t, healthy = up, "target health changed (active check)");
            }
            any_down |= !health.is_up(&upstream, t);
        }
        // Probe again at the unhealthy interval while a target is down, else the healthy one;
        // an interval of 0 means that side is not probed, so the other one paces the loop.
        let wait = if any_down {
            pause(p.unhealthy_interval).or(pause(p.healthy_interval))
        } else {
            pause(p.healthy_interval).or(pause(p.unhealthy_interval))
        };
        drop(run);
        tokio::time::sleep(wait.unwrap_or(Duration::from_secs(1))).await;
    }
}
