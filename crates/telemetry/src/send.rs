//! The data plane's sender: numbered batches, in order, each kept until acknowledged.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use gantry_conf::ClusterSettings;
use gantry_model::analytics::Row;
use gantry_protocol as proto;
use gantry_protocol::LinkError;
use gantry_protocol::Received;
use tokio::sync::watch;

use crate::{Collector, Msg, PATH};

struct Batch {
    seq: i64,
    rows: Vec<Row>,
    requests: u64,
}

/// Move collected rows into the queue of batches.
fn cut(collector: &Collector, queue: &mut VecDeque<Batch>, seq: &mut i64) {
    let (rows, requests) = collector.take();
    if requests > 0 {
        *seq += 1;
        queue.push_back(Batch {
            seq: *seq,
            rows,
            requests,
        });
    }
}

/// Send analytics to `endpoint` until shutdown.
pub async fn run(
    collector: Arc<Collector>,
    settings: ClusterSettings,
    endpoint: String,
    node_id: String,
    mut shutdown: watch::Receiver<bool>,
) {
    // Batch numbers grow across restarts: they start from the clock.
    let mut seq: i64 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64 * 1000)
        .unwrap_or(0);
    let mut queue: VecDeque<Batch> = VecDeque::new();
    let mut attempt = 0u32;
    let mut told_expired = false;
    loop {
        if let Some(at) = gantry_protocol::tls::expired(&settings) {
            if !told_expired {
                tracing::error!("analytics are not sent: the cluster certificate expired at {at} (Unix time); requests are buffered up to analytics_buffer_size_limit, then dropped and counted");
                told_expired = true;
            }
        } else {
            told_expired = false;
            match session(
                &collector,
                &settings,
                &endpoint,
                &node_id,
                &mut queue,
                &mut seq,
                &mut shutdown,
            )
            .await
            {
                Ok(()) => return,
                Err(e) => {
                    attempt += 1;
                    tracing::warn!(
                        buffered = collector.buffered(),
                        dropped = collector.dropped(),
                        "failed to send analytics to {endpoint}: {e}"
                    );
                }
            }
        }
        // Meanwhile rows keep moving into batches, so the buffer limit holds.
        let wait = gantry_protocol::backoff(attempt.max(1)).max(settings.analytics_flush);
        tokio::select! {
            _ = tokio::time::sleep(wait) => cut(&collector, &mut queue, &mut seq),
            _ = proto::stopped(&mut shutdown) => return,
        }
    }
}

async fn session(
    collector: &Collector,
    s: &ClusterSettings,
    endpoint: &str,
    node_id: &str,
    queue: &mut VecDeque<Batch>,
    seq: &mut i64,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), gantry_protocol::LinkError> {
    let tls = gantry_protocol::tls::client_config(s)?;
    let name =
        tokio_rustls::rustls::pki_types::ServerName::try_from(s.telemetry_server_name.clone())
            .map_err(|e| format!("cluster_telemetry_server_name: {e}"))?;
    let io =
        gantry_protocol::dial::dial(endpoint, s.proxy.as_ref(), Duration::from_secs(10)).await?;
    let stream = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_rustls::TlsConnector::from(tls).connect(name, io),
    )
    .await
    .map_err(|_| "TLS handshake timed out".to_string())?
    .map_err(|e| format!("TLS handshake failed: {e}"))?;
    let (mut ws, _) = tokio_tungstenite::client_async(format!("wss://{endpoint}{PATH}"), stream)
        .await
        .map_err(|e| format!("WebSocket handshake failed: {e}"))?;
    send(
        &mut ws,
        &Msg::Hello {
            node_id: node_id.to_string(),
        },
    )
    .await?;
    tracing::info!("sending analytics to {endpoint}");
    let mut tick = tokio::time::interval(s.analytics_flush);
    let timer = gantry_model::timers::register("analytics:flush");
    loop {
        let run = timer.run();
        // A certificate that expired (or was rotated to an expired one) stops sending even on
        // a connection made before.
        if gantry_protocol::tls::expired(s).is_some() {
            return Err("the cluster certificate has expired".into());
        }
        // Everything queued goes first, one batch at a time, each acknowledged.
        while let Some(b) = queue.front() {
            send(
                &mut ws,
                &Msg::Batch {
                    seq: b.seq,
                    rows: b.rows.clone(),
                },
            )
            .await?;
            let want = b.seq;
            let ack = tokio::time::timeout(Duration::from_secs(10), recv(&mut ws, s.max_payload))
                .await
                .map_err(|_| "no acknowledgement within 10s".to_string())??;
            match ack {
                Msg::Ack { seq } if seq == want => {
                    if let Some(b) = queue.pop_front() {
                        collector.acknowledged(b.requests);
                    }
                }
                other => return Err(LinkError::Failed(format!("unexpected answer {other:?}"))),
            }
        }
        drop(run);
        tokio::select! {
            _ = tick.tick() => cut(collector, queue, seq),
            _ = proto::stopped(shutdown) => return Ok(()),
        }
    }
}

type Ws = tokio_tungstenite::WebSocketStream<
    tokio_rustls::client::TlsStream<gantry_protocol::dial::BoxIo>,
>;

async fn send(ws: &mut Ws, m: &Msg) -> Result<(), gantry_protocol::LinkError> {
    Ok(ws.send(proto::to_ws(m)).await?)
}

async fn recv(ws: &mut Ws, max: usize) -> Result<Msg, gantry_protocol::LinkError> {
    loop {
        let m = ws.next().await.ok_or("connection closed")??;
        match proto::from_ws(m, max)? {
            Received::Msg(m) => return Ok(m),
            Received::Closed(_) => return Err("closed by the control plane".into()),
            Received::Nothing => continue,
        }
    }
}
