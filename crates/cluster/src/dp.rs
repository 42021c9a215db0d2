//! The data plane side: keep a connection to a control plane, apply what it sends, keep the
//! last good configuration on disk, and serve from it while no control plane answers.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use gantry_conf::ClusterSettings;
use gantry_model::hash::{hash_config, ConfigHashes};
use gantry_model::Config;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use crate::proto::{self, FromDp, ToDp, PATH, PROTOCOL};

/// Where a data plane's configuration goes: the proxy, or a test's recorder.
pub trait ConfigSink: Send + Sync + 'static {
    /// Run `config`; an error leaves the running configuration in place.
    fn apply(&self, config: &Config, version: i64, hashes: &ConfigHashes) -> Result<(), String>;
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
    /// The configuration cache file; `None` keeps none.
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

/// The cache file's content.
#[derive(Serialize, Deserialize)]
struct Cached {
    version: i64,
    hash: String,
    entities: std::collections::BTreeMap<String, Vec<gantry_model::Doc>>,
}

/// Read the cached configuration, checking it against its hash.
pub fn load_cache(path: &Path) -> Result<Option<(Config, i64, String)>, String> {
    Ok(read_cache(path)?.map(|(c, v, h)| (c, v, h.config)))
}

/// [`load_cache`], with every group's hash (what the proxy reuses its parts by).
fn read_cache(path: &Path) -> Result<Option<(Config, i64, ConfigHashes)>, String> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let c: Cached = proto::decode(true, &bytes, usize::MAX / 2)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut config = Config {
        entities: c.entities,
    };
    config.sort();
    let actual = hash_config(&config);
    if actual.config != c.hash {
        return Err(format!(
            "{}: content hash {} does not match the recorded {}; the file is damaged",
            path.display(),
            actual.config,
            c.hash
        ));
    }
    Ok(Some((config, c.version, actual)))
}

/// Write the cache atomically: a temporary file, synced, renamed over the old one.
pub fn write_cache(path: &Path, config: &Config, version: i64, hash: &str) -> Result<(), String> {
    use std::io::Write;
    let c = Cached {
        version,
        hash: hash.to_string(),
        entities: config.entities.clone(),
    };
    let json = serde_json::to_vec(&c).map_err(|e| e.to_string())?;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&json).map_err(|e| e.to_string())?;
    let bytes = gz.finish().map_err(|e| e.to_string())?;
    let tmp = path.with_extension("tmp");
    let err = |e: std::io::Error| format!("cannot write {}: {e}", tmp.display());
    let mut f = std::fs::File::create(&tmp).map_err(err)?;
    f.write_all(&bytes).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(|e| format!("cannot rename to {}: {e}", path.display()))?;
    Ok(())
}

/// The configuration this data plane holds.
struct Local {
    config: Config,
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
    cache_writer: tokio::sync::Mutex<()>,
    /// The cached configuration `load_cached` put in service, for `run` to start from.
    cached: std::sync::Mutex<Option<Local>>,
}

impl DataPlane {
    pub fn new(opts: DpOptions, sink: Arc<dyn ConfigSink>) -> Arc<DataPlane> {
        Arc::new(DataPlane {
            opts,
            sink,
            state: watch::channel(DpState::default()).0,
            cache_writer: tokio::sync::Mutex::new(()),
            cached: std::sync::Mutex::new(None),
        })
    }

    pub fn state(&self) -> watch::Receiver<DpState> {
        self.state.subscribe()
    }

    /// Load the cached configuration into the sink, if there is a good one. Returns its version.
    pub fn load_cached(&self) -> Option<i64> {
        let path = self.opts.cache.as_ref()?;
        match read_cache(path) {
            Ok(Some((config, version, hashes))) => {
                match self.sink.apply(&config, version, &hashes) {
                    Ok(()) => {
                        let hash = hashes.config;
                        tracing::info!(version, hash = %hash, "serving the cached configuration until the control plane answers");
                        self.state.send_modify(|s| {
                            s.loaded = true;
                            s.version = version;
                            s.hash = hash.clone();
                        });
                        if let Ok(mut c) = self.cached.lock() {
                            *c = Some(Local {
                                config,
                                version,
                                hash,
                                known: true,
                            });
                        }
                        Some(version)
                    }
                    Err(e) => {
                        tracing::error!("the cached configuration does not load: {e}");
                        None
                    }
                }
            }
            Ok(None) => None,
            Err(e) => {
                tracing::error!("ignoring the configuration cache: {e}");
                None
            }
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
                _ = crate::stopped(&mut shutdown) => return,
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
                    backoff(attempt)
                }
                Err(Ended::Lost(e)) => {
                    tracing::error!("connection to the control plane {cp} lost: {e}");
                    if started.elapsed() > Duration::from_secs(10) {
                        attempt = 0;
                    }
                    attempt += 1;
                    backoff(attempt)
                }
                Ok(()) => {
                    tracing::warn!("the control plane {cp} closed the connection");
                    attempt += 1;
                    backoff(attempt)
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = reconnect.changed() => {}
                _ = crate::stopped(&mut shutdown) => return,
            }
        }
    }

    async fn session(&self, cp: &str, local: &mut Local) -> Result<(), Ended> {
        let s = &self.opts.settings;
        let tls = crate::tls::client_config(s).map_err(|e| Ended::Connect(e.to_string()))?;
        if let Some(not_after) = crate::tls::expired(s) {
            tracing::error!("the cluster certificate expired at {not_after} (Unix time): the control plane will refuse it; proxying continues with the configuration held");
        }
        let name = crate::tls::server_name(s).map_err(|e| Ended::Connect(e.to_string()))?;
        let io = crate::dial::dial(cp, s.proxy.as_ref(), Duration::from_secs(10))
            .await
            .map_err(Ended::Connect)?;
        let stream = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_rustls::TlsConnector::from(tls).connect(name, io),
        )
        .await
        .map_err(|_| Ended::Connect("TLS handshake timed out".into()))?
        .map_err(|e| Ended::Connect(format!("TLS handshake failed: {e}")))?;
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
        .map_err(|e| Ended::Connect(format!("WebSocket handshake failed: {e}")))?;
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
        loop {
            tokio::select! {
                _ = ping.tick() => {
                    if awaiting_pong {
                        return Err(Ended::Lost("failed to receive a ping response from the control plane".into()));
                    }
                    let m = FromDp::Ping { version: local.version, hash: local.hash.clone() };
                    send(&mut ws, &m).await.map_err(|e| Ended::Lost(format!("failed to ping the control plane: {e}")))?;
                    awaiting_pong = true;
                }
                m = ws.next() => {
                    let m = match m {
                        None => return Ok(()),
                        Some(Err(e)) => return Err(Ended::Lost(e.to_string())),
                        Some(Ok(m)) => m,
                    };
                    if matches!(m, Message::Binary(_) | Message::Text(_)) {
                        let n = m.len() as u64;
                        self.state.send_modify(|st| st.bytes_received += n);
                    }
                    let msg: ToDp = match proto::from_ws(m, max).map_err(|e| Ended::Lost(e.to_string()))? {
                        proto::Received::Msg(m) => m,
                        proto::Received::Closed(why) => return Err(Ended::Lost(format!("closed by the control plane{}", why.map(|w| format!(": {w}")).unwrap_or_default()))),
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
                        ToDp::Incompatible { reason } => {
                            tracing::error!("the control plane sends no configuration to this data plane: {reason}");
                        }
                        ToDp::Snapshot { version, hash, entities } => {
                            let t = std::time::Instant::now();
                            let mut config = Config { entities };
                            config.sort();
                            let r = self.install(local, config, version, &hash);
                            self.state.send_modify(|st| st.last_apply = t.elapsed());
                            self.report(&mut ws, local, version, &hash, r).await?;
                        }
                        ToDp::Delta { from, version, hash, changes } => {
                            let t = std::time::Instant::now();
                            let r = if !local.known || from != local.version {
                                Err(format!("delta from version {from} does not apply to version {} (asking for a snapshot)", local.version))
                            } else {
                                let mut config = std::mem::take(&mut local.config);
                                match config.apply(&changes) {
                                    Ok(()) => self.install(local, config, version, &hash),
                                    Err(e) => {
                                        local.config = config;
                                        Err(e.to_string())
                                    }
                                }
                            };
                            self.state.send_modify(|st| st.last_apply = t.elapsed());
                            self.report(&mut ws, local, version, &hash, r).await?;
                        }
                    }
                    let _ = welcomed;
                }
            }
        }
    }

    /// Check `config` against `hash` and run it. On success it becomes the local
    /// configuration; on failure the running one stays and the local one is marked unknown.
    fn install(
        &self,
        local: &mut Local,
        config: Config,
        version: i64,
        hash: &str,
    ) -> Result<(), String> {
        let hashes = hash_config(&config);
        let r = if hashes.config != hash {
            Err(format!(
                "the configuration hashes to {}, the control plane announced {hash}",
                hashes.config
            ))
        } else {
            self.sink.apply(&config, version, &hashes)
        };
        local.config = config;
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

    async fn report<S>(
        &self,
        ws: &mut S,
        local: &Local,
        version: i64,
        hash: &str,
        r: Result<(), String>,
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
                self.save_cache(local).await;
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
                    error,
                    running_version: running,
                }
            }
        };
        send(ws, &msg).await.map_err(Ended::Lost)
    }

    async fn save_cache(&self, local: &Local) {
        let Some(path) = self.opts.cache.clone() else {
            return;
        };
        // One writer at a time; the write itself runs off the runtime's threads.
        let _g = self.cache_writer.lock().await;
        let (config, version, hash) = (local.config.clone(), local.version, local.hash.clone());
        let r =
            tokio::task::spawn_blocking(move || write_cache(&path, &config, version, &hash)).await;
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!("cannot write the configuration cache: {e}"),
            Err(e) => tracing::error!("cannot write the configuration cache: {e}"),
        }
    }
}

enum Ended {
    Connect(String),
    Lost(String),
    Rotated,
}

async fn send<S>(ws: &mut S, msg: &FromDp) -> Result<(), String>
where
    S: futures_util::Sink<Message, Error = tokio_tungstenite::tungstenite::Error> + Unpin,
{
    ws.send(proto::to_ws(msg)).await.map_err(|e| e.to_string())
}

/// Exponential backoff with jitter: 250 ms doubling to 10 s, each delay between half and all
/// of its step, so data planes cut off together do not come back together.
pub fn backoff(attempt: u32) -> Duration {
    let step = (250u64 << attempt.min(6).saturating_sub(1)).min(10_000);
    let ms = step / 2 + rand::random::<u64>() % (step / 2 + 1);
    Duration::from_millis(ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn backoff_grows_to_a_ceiling_with_jitter() {
        for a in 1..20 {
            let d = backoff(a).as_millis() as u64;
            let step = (250u64 << (a.min(6) - 1)).min(10_000);
            assert!(d >= step / 2 && d <= step, "{a}: {d}");
        }
        assert!(backoff(30) <= Duration::from_secs(10));
    }

    #[test]
    fn the_cache_round_trips_and_a_damaged_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.cache");
        assert!(load_cache(&path).unwrap().is_none());
        let mut config = Config::default();
        config.entities.insert(
            "services".into(),
            vec![json!({"id": "s", "host": "a"})
                .as_object()
                .cloned()
                .unwrap()],
        );
        let hash = hash_config(&config).config;
        write_cache(&path, &config, 7, &hash).unwrap();
        let (c, v, h) = load_cache(&path).unwrap().unwrap();
        assert_eq!((c, v, h), (config.clone(), 7, hash));
        write_cache(&path, &config, 7, "0123").unwrap();
        assert!(load_cache(&path).unwrap_err().contains("does not match"));
        std::fs::write(&path, b"junk").unwrap();
        assert!(load_cache(&path).is_err());
    }
}
