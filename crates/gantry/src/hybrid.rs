//! Hybrid mode in the binary: a control plane's cluster listener, a data plane's run, and
//! `gantry hybrid gen_cert`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use gantry_conf::Settings;
use gantry_cp::ControlPlane;
use gantry_dp::{DataPlane, DpOptions};
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
) -> anyhow::Result<(Arc<ControlPlane>, Bound)> {
    if let Some(at) = gantry_protocol::tls::expired(&settings.cluster) {
        tracing::error!(
            expired_at = at,
            "the cluster certificate (cluster_cert) expired at {at} (Unix time): data planes will refuse this control plane until it is renewed"
        );
    }
    if let Some(at) = gantry_protocol::tls::not_yet_valid(&settings.cluster) {
        tracing::error!(
            not_before = at,
            "the cluster certificate (cluster_cert) is not valid before {at} (Unix time; is this machine's clock right?): data planes will refuse this control plane until then"
        );
    }
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
    let mut bound = Bound::default();
    for l in &settings.cluster_listen {
        let tcp = listen(l, "cluster_listen", "cluster", None).await?;
        bound.cluster.get_or_insert(tcp.local_addr()?);
        tokio::spawn(cp.clone().serve(tcp, shutdown.clone()));
    }
    for l in &settings.cluster_telemetry_listen {
        let tcp = listen(l, "cluster_telemetry_listen", "telemetry", None).await?;
        bound.telemetry.get_or_insert(tcp.local_addr()?);
        tokio::spawn(gantry_cp::telemetry::serve(
            cp.clone(),
            tcp,
            settings.cluster.max_payload,
            shutdown.clone(),
        ));
    }
    tokio::spawn(gantry_cp::telemetry::purge(
        store,
        settings.cluster.analytics_retention,
        shutdown,
    ));
    Ok((cp, bound))
}

/// The addresses a control plane's cluster and telemetry listeners got (the first of each).
#[derive(Debug, Default, Clone, Copy)]
pub struct Bound {
    pub cluster: Option<std::net::SocketAddr>,
    pub telemetry: Option<std::net::SocketAddr>,
}

/// Keep the cluster service hosting every control plane in the store, with the data plane
/// certificates each pins: at once on a change made through this process's v2 API, and every
/// few seconds for changes made through another control plane process on the same database.
pub async fn keep_hosting(
    cp: Arc<ControlPlane>,
    konnect: Arc<gantry_konnect::Konnect>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut events = konnect.subscribe();
    let mut pinned: Option<Vec<(i64, String, bool)>> = None;
    loop {
        if let Err(e) = host_all(&cp, &konnect, &mut pinned).await {
            tracing::warn!(error = %e, "cannot read the control planes from the store");
        }
        tokio::select! {
            _ = events.recv() => {}
            _ = tokio::time::sleep(std::time::Duration::from_secs(3)) => {}
            _ = gantry_protocol::stopped(&mut shutdown) => return,
        }
    }
}

async fn host_all(
    cp: &Arc<ControlPlane>,
    konnect: &gantry_konnect::Konnect,
    pinned: &mut Option<Vec<(i64, String, bool)>>,
) -> anyhow::Result<()> {
    let store = konnect.store();
    let rows = store.control_planes().await?;
    let mut pki = std::collections::HashSet::new();
    for row in &rows {
        cp.name_tenant(row.key, &row.id);
        if row.doc.get("auth_type").and_then(|v| v.as_str()) == Some("pki_client_certs") {
            pki.insert(row.key);
        }
        let group = row.doc.get("cluster_type").and_then(|v| v.as_str())
            == Some("CLUSTER_TYPE_CONTROL_PLANE_GROUP");
        if group {
            let members: Vec<i64> = row
                .doc
                .get("members")
                .and_then(|m| m.as_array())
                .into_iter()
                .flatten()
                .filter_map(|m| m.as_str())
                .filter_map(|id| rows.iter().find(|r| r.id == id).map(|r| r.key))
                .collect();
            cp.host_group(row.key, members).await?;
        } else if row.key != gantry_store::DEFAULT_CP {
            let versions = konnect.plane(row.key).state.version_tx.subscribe();
            cp.host(row.key, versions).await?;
        }
    }
    for key in cp.hosted() {
        if !rows.iter().any(|r| r.key == key) {
            tracing::info!(
                control_plane = key,
                "control plane deleted: its data planes are disconnected"
            );
            cp.unhost(key);
            konnect.forget(key);
        }
    }
    let mut certs: Vec<(i64, String, bool)> = store
        .all_dp_certs()
        .await?
        .into_iter()
        .filter_map(|c| {
            let pem = c.doc.get("cert")?.as_str()?.to_string();
            Some((c.cp, pem, pki.contains(&c.cp)))
        })
        .collect();
    certs.sort();
    if pinned.as_ref() != Some(&certs) {
        cp.set_pins(gantry_protocol::tls::PinSet::build(
            certs.iter().map(|(k, pem, ca)| (*k, pem.as_str(), *ca)),
        ));
        *pinned = Some(certs);
    }
    Ok(())
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
    gantry_protocol::tls::client_config(&settings.cluster)?;
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
            version: settings
                .cluster
                .reported_version
                .clone()
                .unwrap_or_else(|| gantry_model::GANTRY_VERSION.into()),
            plugins: proxy.registry().names(),
            cache: Some(settings.prefixed("config.cache.json.gz")),
        },
        proxy.clone(),
    );
    // Plugins' writes (oauth2's tokens) go to the control plane.
    proxy.writes().set(Arc::new(dp.writer()));
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
        cluster: proxy
            .registry()
            .get("prometheus")
            .is_some()
            .then(|| settings.cluster.clone()),
    }));
    let mut tasks = serve_status(&settings, &proxy, &rx).await?;
    tracing::info!(
        node_id = %node_id,
        version = gantry_model::GANTRY_VERSION,
        control_plane = %settings.cluster.control_planes.join(","),
        "gantry data plane started"
    );
    let (rot_tx, rot_rx) = watch::channel(0u64);
    tokio::spawn(gantry_dp::certs::watch(
        settings.cluster.clone(),
        rot_tx,
        rx.clone(),
    ));
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
            _ = gantry_protocol::stopped(&mut stop) => {}
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
    state: watch::Receiver<gantry_dp::DpState>,
    /// With Kong's prometheus plugin loaded: the cluster settings, for the certificate's expiry.
    cluster: Option<gantry_conf::ClusterSettings>,
}

impl gantry_proxy::MetricsSource for DpMetrics {
    fn write(&self, m: &mut String) {
        if let Some(not_after) = self
            .cluster
            .as_ref()
            .and_then(gantry_protocol::tls::own_not_after)
        {
            gantry_model::prometheus(
                m,
                "kong_data_plane_cluster_cert_expiry_timestamp",
                "gauge",
                "Unix timestamp of Data Plane's cluster_cert expiry time",
                &[("", not_after as f64)],
            );
        }
        self.state.borrow().write_metrics(m);
        if let Some(c) = &self.collector {
            c.write_metrics(m);
        }
    }

    fn status(&self, out: &mut serde_json::Map<String, serde_json::Value>) {
        out.insert("cluster".into(), self.state.borrow().status());
        if let Some(c) = &self.collector {
            out.insert("analytics".into(), c.status());
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
    gantry_protocol::tls::gen_cert(&cert, &key, days)?;
    println!(
        "wrote {} and {} (P-384, valid {days} days, key mode 0600)",
        cert.display(),
        key.display()
    );
    Ok(())
}
