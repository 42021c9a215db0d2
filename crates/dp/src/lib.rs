//! The data plane side: keep a connection to a control plane, apply what it sends, keep the
//! last good configuration on disk, and serve from it while no control plane answers.
//!
//! - [`DataPlane`]: the connection with backoff, delta application, the hash check, and the
//!   sink the configuration goes to (the proxy).
//! - [`cache`]: the configuration cache, a snapshot and a log of deltas.
//! - [`certs`]: the cluster certificate watched for rotation (SIGHUP or new files).
//! - [`DpState`]: what runs and whether it is connected, and the metrics and status it gives.

pub mod cache;
pub mod certs;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use gantry_conf::ClusterSettings;
use gantry_model::delta::Update;
use gantry_model::hash::Digests;
use gantry_model::Config;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use crate::cache::CacheError;
use gantry_protocol::{self as proto, FromDp, LinkError, ToDp, PATH, PROTOCOL};

pub use gantry_model::delta::{ConfigSink, SinkError};

/// Why a configuration from the control plane was not applied (reported to it, and logged).
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("delta from version {from} does not apply to version {held} (asking for a snapshot)")]
    Gap { from: i64, held: i64 },
    #[error(transparent)]
    Delta(#[from] gantry_model::delta::DeltaError),
    #[error("the configuration hashes to {actual}, the control plane announced {announced}")]
    Hash { actual: String, announced: String },
    #[error("{0}")]
    Refused(SinkError),
}

/// Who this data plane is and where it keeps its cache.
#[derive(Clone)]
pub struct DpOptions {
    pub settings: ClusterSettings,
    pub node_id: String,
    pub hostname: String,
    /// The version announced to the control plane (this build's, except in tests).
    pub version: String,
    /// The plugins this data plane can run.
    pub plugins: Vec<String>,
    /// The configuration cache file (its delta log beside it); `None` keeps none.
    pub cache: Option<PathBuf>,
}

/// What a data plane runs and whether it is connected, for status and metrics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DpState {
    /// A configuration runs (from the cache or the control plane).
    pub loaded: bool,
    pub connected: bool,
    pub version: i64,
    pub hash: String,
    pub control_plane: Option<String>,
    /// Bytes of configuration messages received, as sent (compressed or not).
    pub bytes_received: u64,
    /// How long the last configuration took to apply: delta, hash check and the sink.
    pub last_apply: Duration,
}

impl DpState {
    /// Its Prometheus metrics: the link to the control plane, the bytes received, the last
    /// apply's duration.
    pub fn write_metrics(&self, m: &mut String) {
        let gauges = [
            (
                "gantry_control_plane_connected",
                "gauge",
                "Whether this data plane is connected to a control plane.",
                f64::from(u8::from(self.connected)),
            ),
            (
                "gantry_cluster_bytes_received_total",
                "counter",
                "Configuration bytes received from control planes.",
                self.bytes_received as f64,
            ),
            (
                "gantry_config_last_apply_seconds",
                "gauge",
                "How long the last configuration took to apply: delta, hash check and proxy snapshot.",
                self.last_apply.as_secs_f64(),
            ),
        ];
        for (name, kind, help, v) in gauges {
            gantry_model::prometheus(m, name, kind, help, &[("", v)]);
        }
    }

    /// Its `cluster` object on the status API.
    pub fn status(&self) -> serde_json::Value {
        serde_json::json!({
            "connected": self.connected,
            "control_plane": self.control_plane,
            "config_version": self.version,
            "config_hash": self.hash,
            "bytes_received": self.bytes_received,
            "last_apply_ms": self.last_apply.as_secs_f64() * 1000.0,
        })
    }
}

/// Read the cached configuration, checked against its hashes: (configuration, version, hash).
pub fn load_cache(path: &Path) -> Result<Option<(Config, i64, String)>, CacheError> {
    Ok(cache::read(path)?.map(|l| (l.config, l.version, l.hash)))
}

/// The configuration this data plane holds.
struct Local {
    config: Config,
    digests: Digests,
    version: i64,
    hash: String,
    /// False once `config` may differ from what runs (after a refused change): the next
    /// configuration must be a snapshot.
    known: bool,
}

/// A running data plane client.
pub struct DataPlane {
    opts: DpOptions,
    sink: Arc<dyn ConfigSink>,
    state: watch::Sender<DpState>,
    /// Started with what the cache holds (by `load_cached`), or on the first write.
    cache_writer: std::sync::OnceLock<cache::Writer>,
    /// The cached configuration `load_cached` put in service, for `run` to start from.
    cached: std::sync::Mutex<Option<Local>>,
    /// Plugins' writes waiting to go to the control plane ([`DataPlane::writer`]); the
    /// session that is up takes them.
    writes_tx: tokio::sync::mpsc::Sender<PendingWrite>,
    writes_rx: tokio::sync::Mutex<tokio::sync::mpsc::Receiver<PendingWrite>>,
}

/// A plugin's write on its way to the control plane, and where its answer goes.
struct PendingWrite {
    ops: Vec<gantry_model::writes::WriteOp>,
    reply: tokio::sync::oneshot::Sender<Result<i64, WriteError>>,
}

use gantry_model::writes::WriteError;

/// How long a plugin's write may wait for the control plane.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a data plane's plugins write (oauth2's tokens and codes): its control plane, over the
/// cluster connection. Without one up, a write fails at once.
pub struct DpWriter {
    tx: tokio::sync::mpsc::Sender<PendingWrite>,
    state: watch::Receiver<DpState>,
}

impl gantry_model::writes::EntityWriter for DpWriter {
    fn write(
        &self,
        ops: Vec<gantry_model::writes::WriteOp>,
    ) -> gantry_model::writes::WriteFuture<'_> {
        Box::pin(async move {
            let unavailable = |why: &str| WriteError::Unavailable(why.to_string());
            if !self.state.borrow().connected {
                return Err(unavailable("not connected to the control plane"));
            }
            let (reply, answer) = tokio::sync::oneshot::channel();
            self.tx
                .send(PendingWrite { ops, reply })
                .await
                .map_err(|_| unavailable("the data plane is stopping"))?;
            match tokio::time::timeout(WRITE_TIMEOUT, answer).await {
                Ok(Ok(r)) => r,
                Ok(Err(_)) => Err(unavailable("the connection to the control plane was lost")),
                Err(_) => Err(unavailable("the control plane did not answer in time")),
            }
        })
    }
}

impl DataPlane {
    pub fn new(opts: DpOptions, sink: Arc<dyn ConfigSink>) -> Arc<DataPlane> {
        let (writes_tx, writes_rx) = tokio::sync::mpsc::channel(1024);
        Arc::new(DataPlane {
            opts,
            sink,
            state: watch::channel(DpState::default()).0,
            cache_writer: std::sync::OnceLock::new(),
            cached: std::sync::Mutex::new(None),
            writes_tx,
            writes_rx: tokio::sync::Mutex::new(writes_rx),
        })
    }

    /// Where this data plane's plugins write.
    pub fn writer(&self) -> DpWriter {
        DpWriter {
            tx: self.writes_tx.clone(),
            state: self.state.subscribe(),
        }
    }

    pub fn state(&self) -> watch::Receiver<DpState> {
        self.state.subscribe()
    }

    /// Load the cached configuration into the sink, if there is a good one. Returns its version.
    pub fn load_cached(&self) -> Option<i64> {
        let path = self.opts.cache.as_ref()?;
        let started = std::time::Instant::now();
        let loaded = match cache::read(path) {
            Ok(Some(l)) => l,
            Ok(None) => return None,
            Err(e) => {
                tracing::error!("ignoring the configuration cache: {e}");
                return None;
            }
        };
        if let Some(why) = &loaded.stopped {
            tracing::warn!(
                "the configuration cache's delta log ends early ({why}): serving version {}",
                loaded.version
            );
        }
        let update = Update {
            config: &loaded.config,
            digests: &loaded.digests,
            version: loaded.version,
            changes: None,
        };
        let read = started.elapsed();
        if let Err(e) = self.sink.apply(&update) {
            tracing::error!("the cached configuration does not load: {e}");
            return None;
        }
        let applied = started.elapsed() - read;
        let _ = self
            .cache_writer
            .set(cache::Writer::start(path.clone(), Some(&loaded)));
        let cache::Loaded {
            config,
            digests,
            version,
            hash,
            ..
        } = loaded;
        tracing::info!(
            version,
            hash = %hash,
            read_ms = read.as_secs_f64() * 1e3,
            apply_ms = applied.as_secs_f64() * 1e3,
            "serving the cached configuration until the control plane answers"
        );
        self.state.send_modify(|s| {
            s.loaded = true;
            s.version = version;
            s.hash = hash.clone();
        });
        if let Ok(mut c) = self.cached.lock() {
            *c = Some(Local {
                config,
                digests,
                version,
                hash,
                known: true,
            });
        }
        Some(version)
    }

    /// Write whatever the cache writer has queued; call before the process exits.
    pub fn finish(&self) {
        if let Some(w) = self.cache_writer.get() {
            w.finish();
        }
    }

    /// Connect and stay connected until shutdown. `reconnect` ticks when the certificate
    /// changed (SIGHUP or new files): the session ends and a new one starts with it.
    pub async fn run(
        self: Arc<Self>,
        mut reconnect: watch::Receiver<u64>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        // The cached configuration counts only if it runs (`load_cached` applied it).
        let cached = self.cached.lock().ok().and_then(|mut c| c.take());
        // Nothing yet: an empty hash (not the empty configuration's) makes the control plane
        // send a snapshot even of an empty configuration, so the proxy port opens.
        let mut local = cached.unwrap_or_else(|| Local {
            config: Config::default(),
            digests: Digests::default(),
            version: 0,
            hash: String::new(),
            known: true,
        });
        let cps = self.opts.settings.control_planes.clone();
        let mut attempt: u32 = 0;
        let mut next = 0usize;
        loop {
            let cp = &cps[next % cps.len()];
            next += 1;
            let started = tokio::time::Instant::now();
            let r = tokio::select! {
                r = self.session(cp, &mut local) => r,
                _ = reconnect.changed() => Err(Ended::Rotated),
                _ = proto::stopped(&mut shutdown) => return,
            };
            self.state.send_modify(|s| {
                s.connected = false;
                s.control_plane = None;
            });
            let delay = match r {
                Err(Ended::Rotated) => {
                    tracing::info!("cluster certificate changed: reconnecting with the new one");
                    attempt = 0;
                    Duration::ZERO
                }
                Err(Ended::Connect(e)) => {
                    tracing::error!("failed to connect to the control plane {cp}: {e}");
                    attempt += 1;
                    proto::backoff(attempt)
                }
                Err(Ended::Lost(e)) => {
                    tracing::error!("connection to the control plane {cp} lost: {e}");
                    if started.elapsed() > Duration::from_secs(10) {
                        attempt = 0;
                    }
                    attempt += 1;
                    proto::backoff(attempt)
                }
                Ok(()) => {
                    tracing::warn!("the control plane {cp} closed the connection");
                    attempt += 1;
                    proto::backoff(attempt)
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = reconnect.changed() => {}
                _ = proto::stopped(&mut shutdown) => return,
            }
        }
    }

    async fn session(&self, cp: &str, local: &mut Local) -> Result<(), Ended> {
        let s = &self.opts.settings;
        let tls = proto::tls::client_config(s).map_err(|e| Ended::Connect(e.into()))?;
        if let Some(not_after) = proto::tls::expired(s) {
            tracing::error!("the cluster certificate expired at {not_after} (Unix time): the control plane will refuse it; proxying continues with the configuration held");
        }
        if let Some(not_before) = proto::tls::not_yet_valid(s) {
            tracing::error!("the cluster certificate is not valid before {not_before} (Unix time; is this machine's clock right?): the control plane will refuse it (TLS calls this CertificateExpired); proxying continues with the configuration held");
        }
        let name = proto::tls::server_name(s).map_err(|e| Ended::Connect(e.into()))?;
        let io = proto::dial::dial(cp, s.proxy.as_ref(), Duration::from_secs(10))
            .await
            .map_err(Ended::Connect)?;
        let stream = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_rustls::TlsConnector::from(tls).connect(name, io),
        )
        .await
        .map_err(|_| Ended::Connect("TLS handshake timed out".into()))?
        .map_err(|e| Ended::Connect(LinkError::Failed(format!("TLS handshake failed: {e}"))))?;
        let ws_cfg = WebSocketConfig::default()
            .max_message_size(Some(s.max_payload))
            .max_frame_size(Some(s.max_payload));
        let url = format!("wss://{cp}{PATH}");
        let (mut ws, _) = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::client_async_with_config(url, stream, Some(ws_cfg)),
        )
        .await
        .map_err(|_| Ended::Connect("WebSocket handshake timed out".into()))?
        .map_err(|e| {
            Ended::Connect(LinkError::Failed(format!(
                "WebSocket handshake failed: {e}"
            )))
        })?;
        let hello = FromDp::Hello {
            protocol: PROTOCOL,
            node_id: self.opts.node_id.clone(),
            hostname: self.opts.hostname.clone(),
            version: self.opts.version.clone(),
            labels: s.labels.iter().cloned().collect(),
            plugins: self.opts.plugins.clone(),
            config_version: if local.known { local.version } else { 0 },
            config_hash: if local.known {
                local.hash.clone()
            } else {
                String::new()
            },
        };
        send(&mut ws, &hello).await.map_err(Ended::Connect)?;
        let max = s.max_payload;
        let mut ping = tokio::time::interval(s.ping_interval);
        ping.tick().await;
        let mut awaiting_pong = false;
        let mut welcomed = false;
        let mut writes = self.writes_rx.lock().await;
        let mut waiting: std::collections::HashMap<
            u64,
            tokio::sync::oneshot::Sender<Result<i64, WriteError>>,
        > = Default::default();
        let mut seq = 0u64;
        let timer = gantry_model::timers::register("clustering:ping");
        loop {
            tokio::select! {
                Some(w) = writes.recv() => {
                    seq += 1;
                    let m = FromDp::Write { seq, ops: w.ops };
                    send(&mut ws, &m).await.map_err(|e| Ended::Lost(LinkError::Failed(format!("failed to send a write to the control plane: {e}"))))?;
                    waiting.insert(seq, w.reply);
                }
                _ = ping.tick() => {
                    let _run = timer.run();
                    if awaiting_pong {
                        return Err(Ended::Lost("failed to receive a ping response from the control plane".into()));
                    }
                    let m = FromDp::Ping { version: local.version, hash: local.hash.clone() };
                    send(&mut ws, &m).await.map_err(|e| Ended::Lost(LinkError::Failed(format!("failed to ping the control plane: {e}"))))?;
                    awaiting_pong = true;
                }
                m = ws.next() => {
                    let m = match m {
                        None => return Ok(()),
                        Some(Err(e)) => return Err(Ended::Lost(e.into())),
                        Some(Ok(m)) => m,
                    };
                    if matches!(m, Message::Binary(_) | Message::Text(_)) {
                        let n = m.len() as u64;
                        self.state.send_modify(|st| st.bytes_received += n);
                    }
                    let msg: ToDp = match proto::from_ws(m, max).map_err(|e| Ended::Lost(e.into()))? {
                        proto::Received::Msg(m) => m,
                        proto::Received::Closed(why) => return Err(Ended::Lost(LinkError::Failed(format!("closed by the control plane{}", why.map(|w| format!(": {w}")).unwrap_or_default())))),
                        proto::Received::Nothing => continue,
                    };
                    match msg {
                        ToDp::Welcome { control_plane, version, .. } => {
                            welcomed = true;
                            tracing::info!(control_plane = %control_plane, version = %version, "connected to the control plane {cp}");
                            self.state.send_modify(|st| {
                                st.connected = true;
                                st.control_plane = Some(cp.to_string());
                            });
                        }
                        ToDp::Pong { .. } => awaiting_pong = false,
                        ToDp::Written { seq, version, error } => {
                            if let Some(reply) = waiting.remove(&seq) {
                                let _ = reply.send(error.map_or(Ok(version), Err));
                            }
                        }
                        ToDp::Incompatible { reason } => {
                            tracing::error!("the control plane sends no configuration to this data plane: {reason}");
                        }
                        ToDp::Snapshot { version, hash, entities } => {
                            let t = std::time::Instant::now();
                            let mut config = Config { entities };
                            config.sort();
                            local.digests = Digests::of(&config);
                            local.config = config;
                            let r = self.install(local, version, &hash, None);
                            self.state.send_modify(|st| st.last_apply = t.elapsed());
                            if r.is_ok() {
                                self.save(cache::Save::Snapshot { config: local.config.clone(), version, hash: hash.clone() });
                            }
                            self.report(&mut ws, version, &hash, r).await?;
                        }
                        ToDp::Delta { from, version, hash, changes } => {
                            let t = std::time::Instant::now();
                            let r = if !local.known || from != local.version {
                                Err(ApplyError::Gap { from, held: local.version })
                            } else {
                                // All or none: on error nothing changed.
                                match local.config.apply_tracked(&changes, &mut local.digests) {
                                    Ok(()) => self.install(local, version, &hash, Some((from, &changes))),
                                    Err(e) => Err(e.into()),
                                }
                            };
                            self.state.send_modify(|st| st.last_apply = t.elapsed());
                            if r.is_ok() {
                                self.save(cache::Save::Delta { from, version, hash: hash.clone(), changes: Arc::new(changes) });
                            }
                            self.report(&mut ws, version, &hash, r).await?;
                        }
                    }
                    let _ = welcomed;
                }
            }
        }
    }

    /// Check the local configuration (just changed) against `hash` and run it. On success it
    /// is the running one; on failure the running one stays and the local one is marked
    /// unknown (the next configuration must be a snapshot).
    fn install(
        &self,
        local: &mut Local,
        version: i64,
        hash: &str,
        changes: Option<(i64, &[gantry_model::delta::Change])>,
    ) -> Result<(), ApplyError> {
        let actual = local.digests.hashes().config;
        let r = if actual != hash {
            Err(ApplyError::Hash {
                actual,
                announced: hash.to_string(),
            })
        } else {
            self.sink
                .apply(&Update {
                    config: &local.config,
                    digests: &local.digests,
                    version,
                    changes,
                })
                .map_err(ApplyError::Refused)
        };
        match r {
            Ok(()) => {
                local.version = version;
                local.hash = hash.to_string();
                local.known = true;
                Ok(())
            }
            Err(e) => {
                local.known = false;
                Err(e)
            }
        }
    }

    /// Queue a cache write (off this task: the acknowledgement does not wait for the disk).
    fn save(&self, s: cache::Save) {
        let Some(path) = &self.opts.cache else {
            return;
        };
        self.cache_writer
            .get_or_init(|| cache::Writer::start(path.clone(), None))
            .send(s);
    }

    async fn report<S>(
        &self,
        ws: &mut S,
        version: i64,
        hash: &str,
        r: Result<(), ApplyError>,
    ) -> Result<(), Ended>
    where
        S: futures_util::Sink<Message, Error = tokio_tungstenite::tungstenite::Error> + Unpin,
    {
        let running = self.state.borrow().version;
        let msg = match r {
            Ok(()) => {
                tracing::info!(version, hash = %hash, "configuration from the control plane applied");
                self.state.send_modify(|s| {
                    s.loaded = true;
                    s.version = version;
                    s.hash = hash.to_string();
                });
                FromDp::Ack {
                    version,
                    hash: hash.to_string(),
                }
            }
            Err(error) => {
                tracing::error!(
                    version,
                    "configuration from the control plane refused, the running one stays: {error}"
                );
                FromDp::Error {
                    version,
                    error: error.to_string(),
                    running_version: running,
                }
            }
        };
        send(ws, &msg).await.map_err(Ended::Lost)
    }
}

enum Ended {
    Connect(LinkError),
    Lost(LinkError),
    Rotated,
}

async fn send<S>(ws: &mut S, msg: &FromDp) -> Result<(), proto::LinkError>
where
    S: futures_util::Sink<Message, Error = tokio_tungstenite::tungstenite::Error> + Unpin,
{
    Ok(ws.send(proto::to_ws(msg)).await?)
}
