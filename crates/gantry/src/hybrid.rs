//! Hybrid mode in the binary: a control plane's cluster listener, a data plane's run, and
//! `gantry hybrid gen_cert`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use gantry_cluster::{ConfigSink, ControlPlane, DataPlane, DpOptions};
use gantry_conf::Settings;
use gantry_store::Store;
use tokio::sync::watch;

use crate::node::{listen, serve_proxy_listeners, serve_status, write_pid};

/// Start the cluster service of a control plane: check its certificates, follow the store,
/// accept data planes on `cluster_listen`.
pub async fn start_control_plane(
    settings: &Settings,
    store: Arc<Store>,
    node_id: String,
    versions: watch::Receiver<i64>,
    shutdown: watch::Receiver<bool>,
    plugins: gantry_model::plugins::Catalog,
) -> anyhow::Result<Arc<ControlPlane>> {
    let cp = ControlPlane::start(
        store.clone(),
        settings.cluster.clone(),
        node_id,
        versions,
        shutdown.clone(),
        plugins,
    )
    .await
    .context("cannot start the cluster service")?;
    for l in &settings.cluster_listen {
        let tcp = listen(l, "cluster_listen", "cluster", None).await?;
        tokio::spawn(cp.clone().serve(tcp, shutdown.clone()));
    }
    let tls = cp.tls_acceptor();
    for l in &settings.cluster_telemetry_listen {
        let tcp = listen(l, "cluster_telemetry_listen", "telemetry", None).await?;
        tokio::spawn(gantry_telemetry::receive::serve(
            store.clone(),
            tls.clone(),
            tcp,
            settings.cluster.max_payload,
            shutdown.clone(),
        ));
    }
    // Analytics older than analytics_retention go, checked every ten minutes.
    let retention = settings.cluster.analytics_retention;
    let mut stop = shutdown.clone();
    tokio::spawn(async move {
        loop {
            let before = gantry_model::unix_now() - retention.as_secs() as i64;
            match store.purge_analytics(before).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(rows = n, "analytics older than analytics_retention removed")
                }
                Err(e) => tracing::warn!(error = %e, "cannot purge analytics"),
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(600)) => {}
                _ = gantry_cluster::stopped(&mut stop) => return,
            }
        }
    });
    Ok(cp)
}

/// The proxy as a data plane's configuration sink.
struct ProxySink(Arc<gantry_proxy::Proxy>);

impl ConfigSink for ProxySink {
    fn apply(
        &self,
        update: &gantry_model::delta::Update<'_>,
    ) -> Result<(), gantry_cluster::SinkError> {
        Ok(self.0.apply_update(update)?)
    }
}

/// Run a data plane until `shutdown`: the cached configuration first, then whatever the
/// control plane sends. No Admin API.
pub async fn run_data_plane<F>(
    settings: Arc<Settings>,
    node_id: String,
    shutdown: F,
) -> anyhow::Result<()>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    // Bad certificate settings stop the node now, naming the setting.
    gantry_cluster::tls::client_config(&settings.cluster)?;
    let pid_file = write_pid(&settings)?;
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = tx.send(true);
    });
    let proxy = crate::node::new_proxy(&settings)?;
    let dp = DataPlane::new(
        DpOptions {
            settings: settings.cluster.clone(),
            node_id: node_id.clone(),
            hostname: crate::node::hostname(),
            version: gantry_model::GANTRY_VERSION.into(),
            plugins: proxy.registry().names(),
            cache: Some(settings.prefixed("config.cache.json.gz")),
        },
        Arc::new(ProxySink(proxy.clone())),
    );
    dp.load_cached();
    let mut sinks = crate::node::access_log(&settings)?;
    if settings.cluster.telemetry_endpoint.is_some() && !settings.cluster.analytics {
        tracing::warn!("cluster_telemetry_endpoint is set but neither vitals nor konnect_mode is on: no analytics are collected");
    }
    let endpoint = settings
        .cluster
        .telemetry_endpoint
        .clone()
        .filter(|_| settings.cluster.analytics);
    let collector = endpoint.map(|endpoint| {
        let c = Arc::new(gantry_telemetry::Collector::new(
            settings.cluster.analytics_buffer,
        ));
        sinks.push(c.clone());
        tokio::spawn(gantry_telemetry::send::run(
            c.clone(),
            settings.cluster.clone(),
            endpoint,
            node_id.clone(),
            rx.clone(),
        ));
        c
    });
    proxy.set_log_sinks(sinks);
    proxy.add_metrics(Arc::new(DpMetrics {
        collector,
        state: dp.state(),
    }));
    let mut tasks = serve_status(&settings, &proxy, &rx).await?;
    tracing::info!(
        node_id = %node_id,
        version = gantry_model::GANTRY_VERSION,
        control_plane = %settings.cluster.control_planes.join(","),
        "gantry data plane started"
    );
    let (rot_tx, rot_rx) = watch::channel(0u64);
    tokio::spawn(watch_certificates(settings.clone(), rot_tx, rx.clone()));
    let mut state = dp.state();
    let client = tokio::spawn(dp.clone().run(rot_rx, rx.clone()));
    // The proxy port opens once a configuration runs: a data plane that joins a SO_REUSEPORT
    // group takes no request it would answer 404.
    if !state.borrow().loaded {
        tracing::info!(
            "the proxy listeners open once a configuration is loaded from the control plane"
        );
        let mut stop = rx.clone();
        tokio::select! {
            _ = state.wait_for(|s| s.loaded) => {}
            _ = gantry_cluster::stopped(&mut stop) => {}
        }
    }
    if !*rx.borrow() {
        tasks.extend(serve_proxy_listeners(&settings, &proxy, &rx).await?);
    }
    for t in tasks {
        let _ = t.await;
    }
    client.abort();
    // What the cache writer has queued reaches the disk before the process ends.
    let finish = dp.clone();
    let _ = tokio::task::spawn_blocking(move || finish.finish()).await;
    let _ = std::fs::remove_file(&pid_file);
    tracing::info!("gantry stopped");
    Ok(())
}

/// A data plane's own metrics: its link to the control plane and its analytics buffer.
struct DpMetrics {
    collector: Option<Arc<gantry_telemetry::Collector>>,
    state: watch::Receiver<gantry_cluster::DpState>,
}

impl gantry_proxy::MetricsSource for DpMetrics {
    fn write(&self, m: &mut String) {
        let st = self.state.borrow().clone();
        let mut all = vec![
            (
                "gantry_control_plane_connected",
                "gauge",
                "Whether this data plane is connected to a control plane.",
                u64::from(st.connected),
            ),
            (
                "gantry_cluster_bytes_received_total",
                "counter",
                "Configuration bytes received from control planes.",
                st.bytes_received,
            ),
        ];
        if let Some(c) = &self.collector {
            all.push((
                "gantry_telemetry_dropped_total",
                "counter",
                "Requests left out of analytics because the buffer was full.",
                c.dropped(),
            ));
            all.push((
                "gantry_telemetry_buffered_requests",
                "gauge",
                "Requests held for analytics, not yet acknowledged.",
                c.buffered(),
            ));
        }
        for (name, kind, help, v) in all {
            gantry_model::prometheus(m, name, kind, help, &[("", v as f64)]);
        }
        gantry_model::prometheus(
            m,
            "gantry_config_last_apply_seconds",
            "gauge",
            "How long the last configuration took to apply: delta, hash check and proxy snapshot.",
            &[("", st.last_apply.as_secs_f64())],
        );
    }

    fn status(&self, out: &mut serde_json::Map<String, serde_json::Value>) {
        let st = self.state.borrow().clone();
        out.insert(
            "cluster".into(),
            serde_json::json!({
                "connected": st.connected,
                "control_plane": st.control_plane,
                "config_version": st.version,
                "config_hash": st.hash,
                "bytes_received": st.bytes_received,
                "last_apply_ms": st.last_apply.as_secs_f64() * 1000.0,
            }),
        );
        if let Some(c) = &self.collector {
            out.insert(
                "analytics".into(),
                serde_json::json!({"buffered_requests": c.buffered(), "dropped_requests": c.dropped()}),
            );
        }
    }
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// Tick `rotated` on SIGHUP and when the certificate or key file changes, once the new pair
/// loads: the data plane reconnects with it.
async fn watch_certificates(
    settings: Arc<Settings>,
    rotated: watch::Sender<u64>,
    mut stop: watch::Receiver<bool>,
) {
    let files: Vec<PathBuf> = [&settings.cluster.cert, &settings.cluster.cert_key]
        .into_iter()
        .filter_map(|v| gantry_cluster::tls::setting_path(v))
        .collect();
    let mut seen: Vec<Option<SystemTime>> = files.iter().map(|f| mtime(f)).collect();
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        let by_signal = tokio::select! {
            _ = async { match hup.as_mut() { Some(h) => { h.recv().await; } None => std::future::pending::<()>().await } } => true,
            _ = tokio::time::sleep(Duration::from_secs(2)) => false,
            _ = gantry_cluster::stopped(&mut stop) => return,
        };
        let now: Vec<Option<SystemTime>> = files.iter().map(|f| mtime(f)).collect();
        if !by_signal && now == seen {
            continue;
        }
        match gantry_cluster::tls::client_config(&settings.cluster) {
            Ok(_) => {
                seen = now;
                tracing::info!(signal = by_signal, "cluster certificate reloaded");
                rotated.send_modify(|n| *n += 1);
            }
            // Half-written files: try again on the next change or tick.
            Err(e) => tracing::warn!("the new cluster certificate does not load yet: {e}"),
        }
    }
}

/// `gantry hybrid gen_cert [CERT KEY] [--days N]`
pub fn gen_cert(cert: Option<PathBuf>, key: Option<PathBuf>, days: u32) -> anyhow::Result<()> {
    let cert = cert.unwrap_or_else(|| PathBuf::from("cluster.crt"));
    let key = key.unwrap_or_else(|| PathBuf::from("cluster.key"));
    if days == 0 {
        anyhow::bail!("--days must be at least 1");
    }
    gantry_cluster::tls::gen_cert(&cert, &key, days)?;
    println!(
        "wrote {} and {} (P-384, valid {days} days, key mode 0600)",
        cert.display(),
        key.display()
    );
    Ok(())
}
