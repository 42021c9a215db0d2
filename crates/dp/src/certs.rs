//! The data plane's cluster certificate, watched for rotation.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use gantry_conf::ClusterSettings;
use tokio::sync::watch;

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// Tick `rotated` on SIGHUP and when the certificate or key file changes, once the new pair
/// loads: [`crate::DataPlane::run`] reconnects with it. Half-written files are tried again on
/// the next change or tick.
pub async fn watch(
    settings: ClusterSettings,
    rotated: watch::Sender<u64>,
    mut stop: watch::Receiver<bool>,
) {
    let files: Vec<PathBuf> = [&settings.cert, &settings.cert_key]
        .into_iter()
        .filter_map(|v| gantry_protocol::tls::setting_path(v))
        .collect();
    let mut seen: Vec<Option<SystemTime>> = files.iter().map(|f| mtime(f)).collect();
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        let by_signal = tokio::select! {
            _ = async { match hup.as_mut() { Some(h) => { h.recv().await; } None => std::future::pending::<()>().await } } => true,
            _ = tokio::time::sleep(Duration::from_secs(2)) => false,
            _ = gantry_protocol::stopped(&mut stop) => return,
        };
        let now: Vec<Option<SystemTime>> = files.iter().map(|f| mtime(f)).collect();
        if !by_signal && now == seen {
            continue;
        }
        match gantry_protocol::tls::client_config(&settings) {
            Ok(_) => {
                seen = now;
                tracing::info!(signal = by_signal, "cluster certificate reloaded");
                rotated.send_modify(|n| *n += 1);
            }
            Err(e) => tracing::warn!("the new cluster certificate does not load yet: {e}"),
        }
    }
}
