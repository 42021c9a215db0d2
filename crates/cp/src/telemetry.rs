//! The control plane's telemetry endpoint: batches in, merged into the store once each; and
//! their retention.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use gantry_protocol as proto;
use gantry_store::Store;
use tokio::net::TcpListener;
use tokio::sync::watch;

use gantry_protocol::telemetry::{Msg, PATH};

/// Remove analytics older than `retention`, now and every ten minutes, until `stop`.
pub async fn purge(store: Arc<Store>, retention: Duration, mut stop: watch::Receiver<bool>) {
    let timer = gantry_model::timers::register("analytics:purge");
    loop {
        let run = timer.run();
        let before = gantry_model::unix_now() - retention.as_secs() as i64;
        match store.purge_analytics(before).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(rows = n, "analytics older than analytics_retention removed"),
            Err(e) => tracing::warn!(error = %e, "cannot purge analytics"),
        }
        drop(run);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(600)) => {}
            _ = proto::stopped(&mut stop) => return,
        }
    }
}

/// Accept data planes' analytics on `listener` (mTLS as the cluster listener) until shutdown.
pub async fn serve(
    cp: Arc<crate::ControlPlane>,
    listener: TcpListener,
    max_payload: usize,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            r = listener.accept() => {
                let (tcp, peer) = match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "telemetry listener accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let cp = cp.clone();
                tokio::spawn(async move {
                    if let Err(e) = connection(cp, tcp, max_payload).await {
                        tracing::warn!(peer = %peer, "telemetry connection ended: {e}");
                    }
                });
            }
            _ = proto::stopped(&mut shutdown) => return,
        }
    }
}

async fn connection(
    cp: Arc<crate::ControlPlane>,
    tcp: tokio::net::TcpStream,
    max: usize,
) -> Result<(), proto::LinkError> {
    let stream = tokio::time::timeout(Duration::from_secs(10), cp.tls_acceptor().accept(tcp))
        .await
        .map_err(|_| "no TLS handshake within 10s".to_string())?
        .map_err(|e| format!("TLS handshake failed: {e}"))?;
    // Analytics land in the control plane the data plane belongs to, whatever it claims.
    let key = cp.owner(stream.get_ref().1)?;
    let store = cp
        .tenant_store(key)
        .ok_or_else(|| "its control plane is not hosted here".to_string())?;
    #[allow(clippy::result_large_err)]
    let check = |req: &tokio_tungstenite::tungstenite::handshake::server::Request,
                 res: tokio_tungstenite::tungstenite::handshake::server::Response| {
        if req.uri().path() == PATH {
            Ok(res)
        } else {
            let mut e = tokio_tungstenite::tungstenite::handshake::server::ErrorResponse::new(
                Some(format!("no telemetry endpoint at {}", req.uri().path())),
            );
            *e.status_mut() = tokio_tungstenite::tungstenite::http::StatusCode::NOT_FOUND;
            Err(e)
        }
    };
    let cfg = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(4096)
        .max_message_size(Some(max))
        .max_frame_size(Some(max));
    let mut ws = tokio_tungstenite::accept_hdr_async_with_config(stream, check, Some(cfg))
        .await
        .map_err(|e| format!("WebSocket handshake failed: {e}"))?;
    let mut node: Option<String> = None;
    while let Some(m) = ws.next().await {
        let msg: Msg = match proto::from_ws(m?, max)? {
            proto::Received::Msg(m) => m,
            proto::Received::Closed(_) => return Ok(()),
            proto::Received::Nothing => continue,
        };
        match msg {
            Msg::Hello { node_id } => node = Some(node_id),
            Msg::Batch { seq, rows } => {
                let Some(n) = &node else {
                    return Err("a batch before hello".into());
                };
                store
                    .ingest_analytics(n, seq, &rows)
                    .await
                    .map_err(|e| format!("cannot store analytics: {e}"))?;
                ws.send(proto::to_ws(&Msg::Ack { seq })).await?;
            }
            Msg::Ack { .. } => return Err("unexpected ack from a data plane".into()),
        }
    }
    Ok(())
}
