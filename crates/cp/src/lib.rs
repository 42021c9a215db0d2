//! The control plane side: one tracker that follows the store's change feed and publishes each
//! new configuration version with the delta that led to it, and one session per connected data
//! plane that sends it what it lacks and keeps its registry entry.
//!
//! - [`ControlPlane`]: the tracker, the sessions, the registry, the cluster listener.
//! - [`telemetry`]: `cluster_telemetry_listen`, analytics merged into the store, and their
//!   retention.

pub mod group;
pub mod telemetry;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use gantry_conf::ClusterSettings;
use gantry_model::compat::{self, Version};
use gantry_model::delta::{collapse, Change};
use gantry_model::hash::{hash_config, Digests};
use gantry_model::plugins::Catalog;
use gantry_model::{unix_now, Config, Doc};
use gantry_store::feed::{Feed, Step as FeedStep};
use gantry_store::{RegistryWrite, Store};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use gantry_protocol::status::{Incompatible, NodeStatus, SyncStatus};
use gantry_protocol::{self as proto, FromDp, LinkError, ToDp, PATH, PROTOCOL};

/// Why the control plane's cluster service cannot start or go on.
#[derive(Debug, thiserror::Error)]
pub enum CpError {
    #[error(transparent)]
    Tls(#[from] proto::tls::TlsError),
    #[error(transparent)]
    Store(#[from] gantry_store::StoreError),
}

/// How many single-version steps a control plane keeps to bring a data plane up to date with
/// deltas; a data plane further behind gets a snapshot.
const RING: usize = 512;

/// One version step: the changes from `from` to `to`.
struct Step {
    from: i64,
    from_hash: String,
    to: i64,
    changes: Arc<Vec<Change>>,
    /// Encoded once for every data plane of this control plane's version.
    frame: OnceLock<Arc<proto::Frame>>,
}

/// A configuration version as published to the sessions.
pub struct Published {
    pub version: i64,
    pub hash: String,
    config: Arc<Config>,
    plugins: BTreeSet<String>,
    steps: Arc<VecDeque<Arc<Step>>>,
    snapshot: OnceLock<Arc<proto::Frame>>,
    /// The snapshot for each older data plane version, without the fields it does not know,
    /// with its hash: built once per version, whatever the number of such data planes.
    stripped: std::sync::Mutex<std::collections::HashMap<Version, (Arc<proto::Frame>, String)>>,
}

impl Published {
    /// A version read whole from the store: no steps lead to it.
    fn whole(feed: &Feed) -> Published {
        Published::at(feed, Arc::new(VecDeque::new()))
    }

    /// The feed's version, reached by `steps`.
    fn at(feed: &Feed, steps: Arc<VecDeque<Arc<Step>>>) -> Published {
        Published::new(feed.config().clone(), feed.digests(), feed.version(), steps)
    }

    fn new(
        config: Arc<Config>,
        digests: &Digests,
        version: i64,
        steps: Arc<VecDeque<Arc<Step>>>,
    ) -> Published {
        Published {
            version,
            hash: digests.hashes().config,
            plugins: configured_plugins(&config),
            config,
            steps,
            snapshot: OnceLock::new(),
            stripped: Default::default(),
        }
    }

    /// The whole configuration; for an older data plane, without the fields it does not
    /// know, and with the hash of what it is actually sent.
    fn snapshot_msg(&self, dp: Option<Version>, plugins: &Catalog) -> ToDp {
        let Some(v) = dp else {
            return ToDp::Snapshot {
                version: self.version,
                hash: self.hash.clone(),
                entities: self.config.entities.clone(),
            };
        };
        // The documents are shared with the published version; the ones stripped are copied.
        let mut config = (*self.config).clone();
        for (name, docs) in config.entities.iter_mut() {
            for d in docs.iter_mut() {
                compat::strip(name, d, v, plugins);
            }
        }
        ToDp::Snapshot {
            version: self.version,
            hash: hash_config(&config).config,
            entities: config.entities,
        }
    }

    /// The encoded snapshot for a data plane of version `dp`, and the hash of what it holds.
    fn stripped_frame(&self, dp: Version, plugins: &Catalog) -> (Arc<proto::Frame>, String) {
        let mut cache = self.stripped.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .entry(dp)
            .or_insert_with(|| {
                let msg = self.snapshot_msg(Some(dp), plugins);
                let hash = match &msg {
                    ToDp::Snapshot { hash, .. } => hash.clone(),
                    _ => String::new(),
                };
                (Arc::new(proto::encode(&msg)), hash)
            })
            .clone()
    }

    /// What brings a data plane at (`version`, `hash`) here, if deltas can: the steps after it.
    fn steps_after(&self, version: i64, hash: &str) -> Option<Vec<Arc<Step>>> {
        let i = self.steps.iter().position(|s| s.from == version)?;
        (self.steps[i].from_hash == hash).then(|| self.steps.iter().skip(i).cloned().collect())
    }
}

/// Registry writes, coalesced: sessions queue entries and one task writes whatever is queued
/// in one transaction, the latest entry per data plane winning. A thousand data planes
/// connecting at once cost a few transactions, and no session waits for the database.
struct Registry {
    tx: tokio::sync::mpsc::UnboundedSender<RegistryWrite>,
}

impl Registry {
    fn start(store: Arc<Store>) -> Registry {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<RegistryWrite>();
        tokio::spawn(async move {
            let mut batch: Vec<RegistryWrite> = Vec::new();
            loop {
                if batch.is_empty() {
                    match rx.recv().await {
                        Some(first) => batch.push(first),
                        None => return,
                    }
                }
                while let Ok(w) = rx.try_recv() {
                    batch.push(w);
                }
                // The latest entry per connection (an insert stays an insert), connections in
                // the order they were first queued: a new connection's insert is never merged
                // with an old one's last update.
                let mut latest: Vec<RegistryWrite> = Vec::with_capacity(batch.len());
                for w in batch.drain(..) {
                    match latest
                        .iter_mut()
                        .find(|l| l.id == w.id && l.session == w.session)
                    {
                        Some(l) => {
                            let insert = l.insert || w.insert;
                            *l = RegistryWrite { insert, ..w };
                        }
                        None => latest.push(w),
                    }
                }
                if let Err(e) = store.write_data_planes(&latest).await {
                    tracing::warn!(error = %e, entries = latest.len(), "cannot write the data plane registry; trying again");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    // Kept for the next round, ahead of anything newer.
                    batch = latest;
                    continue;
                }
            }
        });
        Registry { tx }
    }

    fn put(&self, dp: &DpInfo, doc: Doc, insert: bool) {
        let _ = self.tx.send(RegistryWrite {
            id: dp.id.clone(),
            session: dp.session.clone(),
            doc,
            last_seen: unix_now(),
            insert,
        });
    }
}

/// The control plane's cluster service.
pub struct ControlPlane {
    store: Arc<Store>,
    settings: ClusterSettings,
    id: String,
    /// The default control plane's configuration and data planes.
    default: Arc<Tenant>,
    /// Every control plane hosted, the default included, by key.
    tenants: std::sync::Mutex<std::collections::HashMap<i64, Arc<Tenant>>>,
    /// The ids of the control planes, by key: SNIs name them by their prefix.
    ids: std::sync::Mutex<std::collections::HashMap<i64, String>>,
    /// The data plane certificates the other control planes accept.
    pins: proto::tls::Pins,
    shutdown: watch::Receiver<bool>,
    tls: tokio_rustls::TlsAcceptor,
    /// The plugins this control plane enables: their schemas say which fields an older data
    /// plane does not know.
    plugins: Catalog,
    /// Counters for `/metrics`.
    pub stats: Stats,
}

#[derive(Default)]
pub struct Stats {
    pub connected: std::sync::atomic::AtomicI64,
    pub snapshots_sent: std::sync::atomic::AtomicU64,
    pub deltas_sent: std::sync::atomic::AtomicU64,
    pub bytes_sent: std::sync::atomic::AtomicU64,
}

fn configured_plugins(c: &Config) -> BTreeSet<String> {
    c.entities
        .get("plugins")
        .into_iter()
        .flatten()
        .map(|p| p.doc())
        .filter(|p| p.get("enabled").and_then(Value::as_bool) != Some(false))
        .filter_map(|p| p.get("name").and_then(Value::as_str).map(str::to_string))
        .collect()
}

/// One control plane hosted by this cluster service: its configuration as published to its
/// data planes, its registry, and what stops it.
pub struct Tenant {
    key: i64,
    store: Arc<Store>,
    published: watch::Sender<Arc<Published>>,
    registry: Registry,
    /// Turns true when the control plane is deleted: its sessions end.
    gone: watch::Sender<bool>,
    /// Bumped when the pinned certificates change: sessions check theirs is still accepted.
    certs: watch::Sender<u64>,
    /// The version the store holds, as the cluster service's one poller last read it.
    polled: watch::Sender<i64>,
    /// For a control plane group: its members and its status.
    group: Option<Group>,
}

struct Group {
    members: watch::Sender<Vec<i64>>,
    status: std::sync::Mutex<GroupStatus>,
}

/// A control plane group's state: `OK` (its union published), `CONFLICT` (members conflict:
/// nothing new is published until they do not), `UNKNOWN` (not computed yet).
#[derive(Debug, Clone, PartialEq)]
pub struct GroupStatus {
    pub state: &'static str,
    /// Each conflict, with the id of the member holding it.
    pub conflicts: Vec<(String, group::Conflict)>,
    /// Unix seconds.
    pub updated_at: i64,
}

impl Tenant {
    fn current(&self) -> Arc<Published> {
        self.published.borrow().clone()
    }
}

impl ControlPlane {
    /// Load the default control plane's configuration and start following the store:
    /// `versions` announces local writes; the store is also polled, for writes made through
    /// another control plane process. Other control planes are added with [`ControlPlane::host`].
    pub async fn start(
        store: Arc<Store>,
        settings: ClusterSettings,
        id: String,
        versions: watch::Receiver<i64>,
        shutdown: watch::Receiver<bool>,
        plugins: Catalog,
    ) -> Result<Arc<ControlPlane>, CpError> {
        let pins: proto::tls::Pins = Default::default();
        let tls = tokio_rustls::TlsAcceptor::from(proto::tls::hosted_server_config(
            &settings,
            pins.clone(),
        )?);
        let (default, feed) = Tenant::load(store.clone()).await?;
        let cp = Arc::new(ControlPlane {
            store,
            settings,
            id,
            default: default.clone(),
            tenants: std::sync::Mutex::new([(gantry_store::DEFAULT_CP, default.clone())].into()),
            ids: Default::default(),
            pins,
            shutdown: shutdown.clone(),
            tls,
            plugins,
            stats: Stats::default(),
        });
        cp.clone().run_tenant(default, feed, versions);
        tokio::spawn(cp.clone().purge(shutdown.clone()));
        tokio::spawn(cp.clone().poll(shutdown));
        Ok(cp)
    }

    /// Host the control plane `key` (no-op when hosted already): follow its configuration and
    /// accept its data planes. `versions` announces writes made through this process.
    pub async fn host(
        self: &Arc<Self>,
        key: i64,
        versions: watch::Receiver<i64>,
    ) -> Result<(), CpError> {
        if self.tenant(key).is_some() {
            return Ok(());
        }
        let (t, feed) = Tenant::load(Arc::new(self.store.scoped(key))).await?;
        {
            let mut all = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
            if all.contains_key(&key) {
                return Ok(());
            }
            all.insert(key, t.clone());
        }
        self.clone().run_tenant(t, feed, versions);
        Ok(())
    }

    /// Host the control plane group `key` with these members (keys), or set its members when
    /// hosted already.
    pub async fn host_group(self: &Arc<Self>, key: i64, members: Vec<i64>) -> Result<(), CpError> {
        if let Some(t) = self.tenant(key) {
            if let Some(g) = &t.group {
                g.members.send_if_modified(|m| {
                    let changed = *m != members;
                    *m = members;
                    changed
                });
            }
            return Ok(());
        }
        let t = Tenant::load_group(Arc::new(self.store.scoped(key)), members).await?;
        {
            let mut all = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
            if all.contains_key(&key) {
                return Ok(());
            }
            all.insert(key, t.clone());
        }
        tokio::spawn(self.clone().group_track(t));
        Ok(())
    }

    /// A hosted group's status.
    pub fn group_status(&self, key: i64) -> Option<GroupStatus> {
        let t = self.tenant(key)?;
        let g = t.group.as_ref()?;
        let s = g.status.lock().unwrap_or_else(|e| e.into_inner()).clone();
        Some(s)
    }

    /// Keep a group's published configuration the union of its members': recomputed when a
    /// member publishes or the members change.
    async fn group_track(self: Arc<Self>, t: Arc<Tenant>) {
        let Some(g) = &t.group else { return };
        let mut members = g.members.subscribe();
        let mut stop = self.shutdown.clone();
        let mut gone = t.gone.subscribe();
        let mut seen: Option<Vec<(i64, i64)>> = None;
        loop {
            let keys = members.borrow_and_update().clone();
            let tenants: Vec<Arc<Tenant>> = keys.iter().filter_map(|k| self.tenant(*k)).collect();
            let mut rxs: Vec<watch::Receiver<Arc<Published>>> =
                tenants.iter().map(|m| m.published.subscribe()).collect();
            let now: Vec<(i64, i64)> = tenants
                .iter()
                .map(|m| (m.key, m.current().version))
                .collect();
            if seen.as_ref() != Some(&now) || tenants.len() != keys.len() {
                let configs: Vec<(i64, Arc<Config>)> = tenants
                    .iter()
                    .map(|m| (m.key, m.current().config.clone()))
                    .collect();
                match self.publish_union(&t, g, &configs).await {
                    Ok(()) => seen = Some(now),
                    Err(e) => {
                        tracing::error!(control_plane = t.key, error = %e, "cannot publish the group's configuration")
                    }
                }
            }
            let any_member = async {
                if rxs.is_empty() {
                    std::future::pending::<()>().await;
                } else {
                    let _ = futures_util::future::select_all(
                        rxs.iter_mut().map(|r| Box::pin(r.changed())),
                    )
                    .await;
                }
            };
            tokio::select! {
                _ = any_member => {}
                _ = members.changed() => {}
                // A member created after the group is hosted shortly after.
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                _ = proto::stopped(&mut stop) => return,
                _ = proto::stopped(&mut gone) => return,
            }
        }
    }

    async fn publish_union(
        &self,
        t: &Tenant,
        g: &Group,
        configs: &[(i64, Arc<Config>)],
    ) -> Result<(), CpError> {
        let status = match group::union(configs) {
            Ok(config) => {
                let digests = Digests::of(&config);
                if digests.hashes().config != t.current().hash {
                    // The group's own version row orders what its data planes are sent.
                    let version = t.store.write(Vec::new()).await?;
                    let next =
                        Published::new(Arc::new(config), &digests, version, Default::default());
                    tracing::info!(control_plane = t.key, version, hash = %next.hash, "group configuration published");
                    t.published.send_replace(Arc::new(next));
                }
                GroupStatus {
                    state: "OK",
                    conflicts: Vec::new(),
                    updated_at: unix_now(),
                }
            }
            Err(conflicts) => {
                let ids = self.ids.lock().unwrap_or_else(|e| e.into_inner()).clone();
                for c in &conflicts {
                    tracing::warn!(
                        control_plane = t.key,
                        member = c.member,
                        "group conflict, not published: {}",
                        c.description
                    );
                }
                GroupStatus {
                    state: "CONFLICT",
                    conflicts: conflicts
                        .into_iter()
                        .map(|c| (ids.get(&c.member).cloned().unwrap_or_default(), c))
                        .collect(),
                    updated_at: unix_now(),
                }
            }
        };
        let mut s = g.status.lock().unwrap_or_else(|e| e.into_inner());
        if s.state != status.state || s.conflicts != status.conflicts {
            *s = status;
        }
        Ok(())
    }

    /// Stop hosting a deleted control plane: its data planes are disconnected.
    pub fn unhost(&self, key: i64) {
        let t = self
            .tenants
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
        if let Some(t) = t {
            let _ = t.gone.send(true);
        }
    }

    /// Replace the set of pinned data plane certificates; data planes connected with one no
    /// longer accepted by their control plane are disconnected.
    pub fn set_pins(&self, pins: proto::tls::PinSet) {
        self.pins.store(Arc::new(pins));
        for t in self
            .tenants
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            t.certs.send_modify(|g| *g += 1);
        }
    }

    fn tenant(&self, key: i64) -> Option<Arc<Tenant>> {
        self.tenants
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned()
    }

    fn run_tenant(self: Arc<Self>, t: Arc<Tenant>, feed: Feed, versions: watch::Receiver<i64>) {
        let stop = self.shutdown.clone();
        let gone = t.gone.subscribe();
        tokio::spawn(async move { t.track(feed, versions, stop, gone).await });
    }

    /// Which hosted control plane a data plane belongs to, from what it proved in its TLS
    /// handshake: the control plane its SNI names (`<id prefix>.cp.<domain>`) must accept its
    /// certificate; without such an SNI, the one control plane that pins it (or holds its CA),
    /// else the default one if `cluster_mtls` accepts it.
    pub fn owner(&self, conn: &rustls::ServerConnection) -> Result<i64, String> {
        let Some(chain) = conn.peer_certificates().filter(|c| !c.is_empty()) else {
            return Err("no client certificate".into());
        };
        let (end, inter) = (&chain[0], &chain[1..]);
        let now = rustls_pki_types::UnixTime::now();
        let owners = self.pins.load().owners(end, inter, now);
        let default_ok = proto::tls::default_accepts(&self.settings, end, inter, now);
        let accepts = |k: i64| (k == gantry_store::DEFAULT_CP && default_ok) || owners.contains(&k);
        let sni = conn.server_name().unwrap_or("");
        if let Some((prefix, _)) = sni.split_once(".cp.") {
            let named = self.by_prefix(prefix);
            return match named {
                Some(k) if accepts(k) => Ok(k),
                Some(_) => Err(format!(
                    "its certificate is not accepted by the control plane it dialled ({sni})"
                )),
                None => Err(format!("no control plane answers to {sni}")),
            };
        }
        match owners.as_slice() {
            [k] => Ok(*k),
            [] if default_ok => Ok(gantry_store::DEFAULT_CP),
            [] => Err("its certificate is accepted by no control plane".into()),
            _ => Err("its certificate is pinned by several control planes: dial the endpoint of the one it belongs to (<id prefix>.cp.<domain>)".into()),
        }
    }

    fn by_prefix(&self, prefix: &str) -> Option<i64> {
        let ids = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        ids.iter()
            .find(|(_, id)| gantry_model::endpoint_prefix(id) == prefix)
            .map(|(k, _)| *k)
    }

    /// Tell the cluster service the id of control plane `key` (for endpoint names).
    pub fn name_tenant(&self, key: i64, id: &str) {
        self.ids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, id.to_string());
    }

    /// The keys of the control planes hosted.
    pub fn hosted(&self) -> Vec<i64> {
        self.tenants
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .copied()
            .collect()
    }

    /// The store handle of a hosted control plane.
    pub fn tenant_store(&self, key: i64) -> Option<Arc<Store>> {
        self.tenant(key).map(|t| t.store.clone())
    }

    /// The mTLS acceptor of the cluster listener, for the telemetry listener too.
    pub fn tls_acceptor(&self) -> tokio_rustls::TlsAcceptor {
        self.tls.clone()
    }

    /// The cluster service's counters in Prometheus text.
    pub fn write_metrics(&self, m: &mut String) {
        use std::sync::atomic::Ordering::Relaxed;
        let s = &self.stats;
        for (name, kind, help, v) in [
            (
                "gantry_cluster_connections",
                "gauge",
                "Data planes connected to this control plane.",
                s.connected.load(Relaxed) as f64,
            ),
            (
                "gantry_cluster_snapshots_sent_total",
                "counter",
                "Whole configurations pushed to data planes.",
                s.snapshots_sent.load(Relaxed) as f64,
            ),
            (
                "gantry_cluster_deltas_sent_total",
                "counter",
                "Configuration deltas pushed to data planes.",
                s.deltas_sent.load(Relaxed) as f64,
            ),
            (
                "gantry_cluster_bytes_sent_total",
                "counter",
                "Bytes sent to data planes.",
                s.bytes_sent.load(Relaxed) as f64,
            ),
            (
                "gantry_cluster_config_version",
                "gauge",
                "The configuration version published to data planes.",
                self.current().version as f64,
            ),
        ] {
            gantry_model::prometheus(m, name, kind, help, &[("", v)]);
        }
    }

    /// The version the default control plane publishes now.
    /// The version this control plane reports and checks data planes against: its build's,
    /// unless `reported_version` says otherwise.
    pub fn version(&self) -> &str {
        self.settings
            .reported_version
            .as_deref()
            .unwrap_or(gantry_model::GANTRY_VERSION)
    }

    pub fn current(&self) -> Arc<Published> {
        self.default.current()
    }
}

impl Tenant {
    async fn load(store: Arc<Store>) -> Result<(Arc<Tenant>, Feed), CpError> {
        let feed = Feed::start(&store).await?;
        let (published, _) = watch::channel(Arc::new(Published::whole(&feed)));
        let t = Arc::new(Tenant {
            key: store.cp(),
            registry: Registry::start(store.clone()),
            store,
            published,
            gone: watch::channel(false).0,
            certs: watch::channel(0).0,
            polled: watch::channel(0).0,
            group: None,
        });
        Ok((t, feed))
    }

    /// A group's tenant: what it publishes is its members' union, at its own version.
    async fn load_group(store: Arc<Store>, members: Vec<i64>) -> Result<Arc<Tenant>, CpError> {
        let version = store.version().await?;
        let empty = Arc::new(Config::default());
        let published = Published::new(
            empty.clone(),
            &Digests::of(&empty),
            version,
            Default::default(),
        );
        Ok(Arc::new(Tenant {
            key: store.cp(),
            registry: Registry::start(store.clone()),
            store,
            published: watch::channel(Arc::new(published)).0,
            gone: watch::channel(false).0,
            certs: watch::channel(0).0,
            polled: watch::channel(version).0,
            group: Some(Group {
                members: watch::channel(members).0,
                status: std::sync::Mutex::new(GroupStatus {
                    state: "UNKNOWN",
                    conflicts: Vec::new(),
                    updated_at: unix_now(),
                }),
            }),
        }))
    }

    async fn track(
        self: Arc<Self>,
        mut feed: Feed,
        mut versions: watch::Receiver<i64>,
        mut stop: watch::Receiver<bool>,
        mut gone: watch::Receiver<bool>,
    ) {
        let mut pruned = std::time::Instant::now();
        let mut polled = self.polled.subscribe();
        let mut admin_gone = false;
        loop {
            tokio::select! {
                r = versions.changed(), if !admin_gone => if r.is_err() {
                    // The Admin API is gone: the poller alone wakes this.
                    admin_gone = true;
                    continue;
                },
                // The store's version row moved (a write through another process).
                r = polled.changed() => if r.is_err() { return },
                _ = proto::stopped(&mut stop) => return,
                _ = proto::stopped(&mut gone) => return,
            }
            if let Err(e) = self.catch_up(&mut feed).await {
                tracing::error!(control_plane = self.key, error = %e, "cannot read configuration changes from the store");
            }
            // The change log needs to reach back only as far as a lagging reader; one further
            // behind reads the configuration whole.
            if pruned.elapsed() > Duration::from_secs(60) {
                pruned = std::time::Instant::now();
                if let Err(e) = Feed::prune(&self.store).await {
                    tracing::warn!(control_plane = self.key, error = %e, "cannot prune the change log");
                }
            }
        }
    }

    async fn catch_up(&self, feed: &mut Feed) -> Result<(), CpError> {
        let next = match feed.next(&self.store).await? {
            FeedStep::Unchanged => return Ok(()),
            FeedStep::Changes {
                from,
                from_hash,
                changes,
            } => {
                let mut steps = (*self.current().steps).clone();
                steps.push_back(Arc::new(Step {
                    from,
                    from_hash,
                    to: feed.version(),
                    changes,
                    frame: OnceLock::new(),
                }));
                while steps.len() > RING {
                    steps.pop_front();
                }
                Published::at(feed, Arc::new(steps))
            }
            FeedStep::Whole { .. } => Published::whole(feed),
        };
        tracing::debug!(version = next.version, hash = %next.hash, "configuration published to data planes");
        self.published.send_replace(Arc::new(next));
        Ok(())
    }
}

impl ControlPlane {
    /// One poller for every control plane hosted: each interval, one statement reads every
    /// control plane's version, and only the tenants whose version moved are woken (writes
    /// made through this process wake theirs at once, without it). Idle control planes cost
    /// nothing but their row in that statement.
    async fn poll(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let every = if self.store.is_postgres() {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(1)
        };
        let timer = gantry_model::timers::register("clustering:poll");
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = proto::stopped(&mut stop) => return,
            }
            let _run = timer.run();
            let versions = match self.store.all_versions().await {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the control planes' versions");
                    continue;
                }
            };
            let tenants: Vec<Arc<Tenant>> = self
                .tenants
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .filter(|t| t.group.is_none())
                .cloned()
                .collect();
            for t in tenants {
                if let Some((_, v)) = versions.iter().find(|(k, _)| *k == t.key) {
                    t.polled.send_if_modified(|p| {
                        let moved = *v > *p;
                        if moved {
                            *p = *v;
                        }
                        moved
                    });
                }
            }
        }
    }

    async fn purge(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let timer = gantry_model::timers::register("clustering:purge");
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(60)) => {}
                _ = proto::stopped(&mut stop) => return,
            }
            let _run = timer.run();
            let before = unix_now() - self.settings.purge_delay.as_secs() as i64;
            match self.store.purge_data_planes(before).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(purged = n, "data planes not seen for cluster_data_plane_purge_delay removed from the registry"),
                Err(e) => tracing::warn!(error = %e, "cannot purge the data plane registry"),
            }
        }
    }

    /// Accept data planes on `listener` until shutdown.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                r = listener.accept() => match r {
                    Ok((tcp, peer)) => {
                        let _ = tcp.set_nodelay(true);
                        let cp = self.clone();
                        let stop = shutdown.clone();
                        tokio::spawn(async move { cp.connection(tcp, peer, stop).await });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cluster listener accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                _ = proto::stopped(&mut shutdown) => return,
            }
        }
    }

    async fn connection(
        self: Arc<Self>,
        tcp: tokio::net::TcpStream,
        peer: SocketAddr,
        stop: watch::Receiver<bool>,
    ) {
        let tls = match tokio::time::timeout(Duration::from_secs(10), self.tls.accept(tcp)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::warn!(peer = %peer, "data plane refused: TLS handshake failed: {e}{}", explain(&e.to_string()));
                return;
            }
            Err(_) => {
                tracing::warn!(peer = %peer, "data plane refused: no TLS handshake within 10s");
                return;
            }
        };
        let tenant = match self.owner(tls.get_ref().1) {
            Ok(k) => match self.tenant(k) {
                Some(t) => t,
                None => {
                    tracing::warn!(peer = %peer, "data plane refused: its control plane is not hosted here");
                    return;
                }
            },
            Err(why) => {
                tracing::warn!(peer = %peer, "data plane refused: {why}");
                return;
            }
        };
        let peer_cert = tls
            .get_ref()
            .1
            .peer_certificates()
            .map(|c| c.iter().map(|c| c.clone().into_owned()).collect::<Vec<_>>())
            .unwrap_or_default();
        let expiry = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| proto::tls::validity(c))
            .map(|(_, not_after)| not_after);
        // Data planes send small messages: a small read buffer keeps a thousand idle
        // connections cheap (tungstenite reserves 128 KiB by default).
        let ws_cfg = WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0)
            .max_message_size(Some(self.settings.max_payload))
            .max_frame_size(Some(self.settings.max_payload));
        #[allow(clippy::result_large_err)]
        let check_path =
            |req: &tokio_tungstenite::tungstenite::handshake::server::Request,
             res: tokio_tungstenite::tungstenite::handshake::server::Response| {
                if req.uri().path() == PATH {
                    Ok(res)
                } else {
                    let mut e =
                        tokio_tungstenite::tungstenite::handshake::server::ErrorResponse::new(
                            Some(format!(
                                "no cluster endpoint at {}; use {PATH}",
                                req.uri().path()
                            )),
                        );
                    *e.status_mut() = tokio_tungstenite::tungstenite::http::StatusCode::NOT_FOUND;
                    Err(e)
                }
            };
        let ws = match tokio_tungstenite::accept_hdr_async_with_config(
            tls,
            check_path,
            Some(ws_cfg),
        )
        .await
        {
            Ok(ws) => ws,
            Err(e) => {
                tracing::warn!(peer = %peer, "data plane refused: WebSocket handshake failed: {e}");
                return;
            }
        };
        let mut session = Session {
            cp: self.clone(),
            tenant: tenant.clone(),
            peer_cert,
            ws,
            peer,
            expiry,
            max: self.settings.max_payload,
            dp: None,
        };
        let result = session.run(stop).await;
        if let Some(dp) = &mut session.dp {
            self.stats
                .connected
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            dp.status = NodeStatus::Disconnected;
            if let Err(e) = &result {
                dp.last_error.get_or_insert_with(|| e.to_string());
            }
            tenant
                .registry
                .put(dp, dp.doc(self.id.as_str(), expiry), false);
            tracing::info!(node_id = %dp.id, hostname = %dp.hostname, peer = %peer, reason = %result.err().unwrap_or_else(|| "closed".into()), "data plane disconnected");
        }
    }
}

/// What the control plane knows of one connected data plane.
struct DpInfo {
    id: String,
    session: String,
    hostname: String,
    ip: String,
    version: String,
    parsed: Option<Version>,
    labels: BTreeMap<String, String>,
    plugins: BTreeSet<String>,
    /// The version and hash the data plane acknowledged (what it runs).
    config_version: i64,
    config_hash: String,
    /// The version last sent and not yet acknowledged, if any.
    sent: Option<(i64, String)>,
    /// Whether the data plane's configuration is known (false after it refused one).
    known: bool,
    status: NodeStatus,
    /// Why it is sent no configuration, while it is not.
    reason: Option<Incompatible>,
    last_error: Option<String>,
    first_seen: i64,
}

impl DpInfo {
    fn doc(&self, cp: &str, expiry: Option<i64>) -> Doc {
        let v = json!({
            "id": self.id,
            "hostname": self.hostname,
            "ip": self.ip,
            "version": self.version,
            "labels": self.labels,
            "status": self.status.as_str(),
            "sync_status": SyncStatus::of(self.status, self.reason.as_ref()).as_str(),
            "config_version": self.config_version,
            "config_hash": self.config_hash,
            "last_seen": unix_now(),
            "cert_details": {"expiry_timestamp": expiry},
            "last_error": self.last_error,
            "reason": self.reason.as_ref().map(Incompatible::reason),
            "control_plane": cp,
            "created_at": self.first_seen,
            "updated_at": unix_now(),
        });
        v.as_object().cloned().unwrap_or_default()
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>;

struct Session {
    cp: Arc<ControlPlane>,
    tenant: Arc<Tenant>,
    /// The chain the data plane presented, checked again when pinned certificates change.
    peer_cert: Vec<rustls_pki_types::CertificateDer<'static>>,
    ws: Ws,
    peer: SocketAddr,
    expiry: Option<i64>,
    max: usize,
    dp: Option<DpInfo>,
}

impl Session {
    /// Whether this data plane's control plane still accepts the certificate it connected
    /// with (the default control plane accepts what `cluster_mtls` does).
    fn still_accepted(&self) -> bool {
        if self.tenant.key == gantry_store::DEFAULT_CP {
            return true;
        }
        let Some((end, inter)) = self.peer_cert.split_first() else {
            return false;
        };
        self.cp
            .pins
            .load()
            .owners(end, inter, rustls_pki_types::UnixTime::now())
            .contains(&self.tenant.key)
    }

    async fn send(&mut self, frame: &proto::Frame) -> Result<(), proto::LinkError> {
        let msg = frame.message();
        self.cp.stats.bytes_sent.fetch_add(
            frame.bytes.len() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        self.ws
            .send(msg)
            .await
            .map_err(|e| LinkError::Failed(format!("send failed: {e}")))
    }

    async fn recv(&mut self) -> Result<Option<FromDp>, proto::LinkError> {
        loop {
            let Some(m) = self.ws.next().await else {
                return Ok(None);
            };
            match proto::from_ws(m?, self.max)? {
                proto::Received::Msg(m) => return Ok(Some(m)),
                proto::Received::Closed(_) => return Ok(None),
                proto::Received::Nothing => continue,
            }
        }
    }

    async fn save(&self, dp: &DpInfo) {
        self.tenant
            .registry
            .put(dp, dp.doc(&self.cp.id, self.expiry), false);
    }

    async fn run(&mut self, mut stop: watch::Receiver<bool>) -> Result<(), proto::LinkError> {
        let hello = tokio::time::timeout(Duration::from_secs(10), self.recv())
            .await
            .map_err(|_| "no hello within 10s".to_string())??;
        let Some(FromDp::Hello {
            protocol,
            node_id,
            hostname,
            version,
            labels,
            plugins,
            config_version,
            config_hash,
        }) = hello
        else {
            return Err("the first message was not a hello".into());
        };
        if uuid_like(&node_id).is_none() {
            return Err(LinkError::Failed(format!("invalid node id '{node_id}'")));
        }
        let reason = if protocol < proto::MIN_PROTOCOL {
            Some(Incompatible::Version(format!(
                "protocol {protocol} is not supported (this control plane speaks {PROTOCOL}, and hashes configurations as protocol {} data planes do); upgrade the data plane",
                proto::MIN_PROTOCOL
            )))
        } else {
            compat::incompatibility(self.cp.version(), &version).map(Incompatible::Version)
        };
        let parsed = Version::parse(&version);
        let session = format!("{}:{}", self.cp.id, rand::random::<u64>());
        let dp = DpInfo {
            id: node_id,
            session,
            hostname,
            ip: self.peer.ip().to_string(),
            parsed,
            version,
            labels,
            plugins: plugins.into_iter().collect(),
            config_version,
            config_hash,
            sent: None,
            known: true,
            status: if reason.is_some() {
                NodeStatus::Incompatible
            } else {
                NodeStatus::Connected
            },
            reason: reason.clone(),
            last_error: None,
            first_seen: unix_now(),
        };
        self.tenant
            .registry
            .put(&dp, dp.doc(&self.cp.id, self.expiry), true);
        self.cp
            .stats
            .connected
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(node_id = %dp.id, hostname = %dp.hostname, version = %dp.version, peer = %self.peer, "data plane connected");
        self.dp = Some(dp);
        self.send(&proto::encode(&ToDp::Welcome {
            protocol: PROTOCOL,
            control_plane: self.cp.id.clone(),
            version: self.cp.version().into(),
        }))
        .await?;
        if let Some(r) = reason {
            tracing::warn!(peer = %self.peer, "data plane is incompatible: {}", r.reason());
            self.send(&proto::encode(&ToDp::Incompatible {
                reason: r.reason().to_string(),
            }))
            .await?;
        }
        let mut published = self.tenant.published.subscribe();
        published.mark_changed();
        let mut gone = self.tenant.gone.subscribe();
        let mut certs = self.tenant.certs.subscribe();
        loop {
            tokio::select! {
                _ = proto::stopped(&mut gone) => {
                    let _ = self.ws.close(None).await;
                    return Err("its control plane was deleted".into());
                }
                r = certs.changed() => {
                    if r.is_ok() && !self.still_accepted() {
                        let _ = self.ws.close(None).await;
                        return Err("its client certificate is no longer accepted by its control plane (unpinned)".into());
                    }
                }
                r = published.changed() => {
                    if r.is_err() { return Err("control plane shutting down".into()); }
                    let p = published.borrow_and_update().clone();
                    self.offer(&p).await?;
                }
                m = self.recv() => {
                    let Some(m) = m? else { return Ok(()) };
                    self.handle(m).await?;
                }
                _ = proto::stopped(&mut stop) => {
                    let _ = self.ws.close(None).await;
                    return Err("control plane shutting down".into());
                }
            }
        }
    }

    /// Send what the data plane lacks of `p`, if it can take it.
    async fn offer(&mut self, p: &Arc<Published>) -> Result<(), proto::LinkError> {
        let Some(mut dp) = self.dp.take() else {
            return Ok(());
        };
        let r = self.offer_to(&mut dp, p).await;
        self.dp = Some(dp);
        r
    }

    async fn offer_to(
        &mut self,
        dp: &mut DpInfo,
        p: &Arc<Published>,
    ) -> Result<(), proto::LinkError> {
        if dp.status == NodeStatus::Incompatible
            && matches!(dp.reason, Some(Incompatible::Version(_)))
        {
            return Ok(());
        }
        if let Some(exp) = self.expiry {
            if unix_now() > exp {
                return Err(
                    "the data plane's certificate has expired: no more configuration is sent"
                        .into(),
                );
            }
        }
        let missing: Vec<&str> = p
            .plugins
            .iter()
            .filter(|n| !dp.plugins.contains(*n))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            let why = Incompatible::plugins(&missing);
            if dp.reason.as_ref() != Some(&why) {
                let reason = why.reason().to_string();
                dp.status = NodeStatus::Incompatible;
                dp.reason = Some(why);
                tracing::warn!(node_id = %dp.id, "data plane is incompatible: {reason}");
                self.send(&proto::encode(&ToDp::Incompatible { reason }))
                    .await?;
                self.save(dp).await;
            }
            return Ok(());
        }
        if dp.status == NodeStatus::Incompatible {
            dp.status = NodeStatus::Connected;
            dp.reason = None;
        }
        let (have_v, have_h) = match &dp.sent {
            Some((v, h)) => (*v, h.clone()),
            None => (dp.config_version, dp.config_hash.clone()),
        };
        let strip = dp
            .parsed
            .filter(|v| compat::needs_stripping(*v, &self.cp.plugins));
        // A data plane sent stripped configuration runs another hash than this one's.
        if dp.known
            && have_v == p.version
            && !have_h.is_empty()
            && (strip.is_some() || have_h == p.hash)
        {
            self.save(dp).await;
            return Ok(());
        }
        if dp.known && have_v > p.version {
            // The data plane came from a control plane further ahead: this one will catch up.
            return Ok(());
        }
        // An older data plane runs a stripped configuration whose hash only a whole stripped
        // copy gives: it gets snapshots (during an upgrade, until it is upgraded too).
        let steps = if dp.known && strip.is_none() {
            p.steps_after(have_v, &have_h)
        } else {
            None
        };
        let mut announced = p.hash.clone();
        let (frame, kind) = match steps {
            Some(steps) if steps.len() == 1 && strip.is_none() => {
                let s = &steps[0];
                let f = s
                    .frame
                    .get_or_init(|| {
                        Arc::new(proto::encode(&ToDp::Delta {
                            from: s.from,
                            version: s.to,
                            hash: p.hash.clone(),
                            changes: (*s.changes).clone(),
                        }))
                    })
                    .clone();
                (f, "delta")
            }
            Some(steps) => {
                let changes: Vec<Change> = collapse(
                    steps
                        .iter()
                        .flat_map(|s| s.changes.iter().cloned())
                        .collect(),
                );
                (
                    Arc::new(proto::encode(&ToDp::Delta {
                        from: have_v,
                        version: p.version,
                        hash: p.hash.clone(),
                        changes,
                    })),
                    "delta",
                )
            }
            None => match strip {
                None => (
                    p.snapshot
                        .get_or_init(|| {
                            Arc::new(proto::encode(&p.snapshot_msg(None, &self.cp.plugins)))
                        })
                        .clone(),
                    "snapshot",
                ),
                Some(v) => {
                    let (frame, hash) = p.stripped_frame(v, &self.cp.plugins);
                    announced = hash;
                    (frame, "snapshot")
                }
            },
        };
        if frame.bytes.len() > self.max || frame.plain_len > proto::expanded_limit(self.max) {
            let e = format!(
                "the configuration {kind} for version {} is {} bytes ({} compressed), more than cluster_max_payload ({} bytes): not sent",
                p.version,
                frame.plain_len,
                frame.bytes.len(),
                self.max
            );
            tracing::error!(node_id = %dp.id, "{e}");
            dp.status = NodeStatus::OutOfSync;
            dp.last_error = Some(e);
            self.save(dp).await;
            return Ok(());
        }
        dp.sent = Some((p.version, announced));
        dp.known = true;
        let counter = if kind == "delta" {
            &self.cp.stats.deltas_sent
        } else {
            &self.cp.stats.snapshots_sent
        };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::debug!(
            version = p.version,
            bytes = frame.bytes.len(),
            kind,
            "configuration sent"
        );
        self.send(&frame).await
    }

    /// Store a data plane's plugin writes in its control plane, and publish them at once.
    async fn write(
        &self,
        ops: Vec<gantry_model::writes::WriteOp>,
    ) -> Result<i64, gantry_model::writes::WriteError> {
        if self.tenant.group.is_some() {
            // A group publishes its members' union: nothing written to it would reach its
            // data planes.
            return Err(gantry_model::writes::WriteError::Refused(
                "a control plane group stores no entities of its own".into(),
            ));
        }
        let version = self
            .tenant
            .store
            .write_entities(ops, &self.cp.plugins)
            .await?;
        self.tenant.polled.send_if_modified(|p| {
            let moved = version > *p;
            if moved {
                *p = version;
            }
            moved
        });
        Ok(version)
    }

    async fn handle(&mut self, m: FromDp) -> Result<(), proto::LinkError> {
        let Some(mut dp) = self.dp.take() else {
            return Ok(());
        };
        let r = self.handle_from(&mut dp, m).await;
        self.dp = Some(dp);
        r
    }

    async fn handle_from(&mut self, dp: &mut DpInfo, m: FromDp) -> Result<(), proto::LinkError> {
        match m {
            FromDp::Hello { .. } => return Err("a second hello".into()),
            FromDp::Ack { version, hash } => {
                let expected = match dp.sent.take() {
                    Some((v, h)) if v == version => Some(h),
                    other => {
                        dp.sent = other;
                        None
                    }
                };
                dp.config_version = version;
                dp.config_hash = hash.clone();
                if dp.status != NodeStatus::Incompatible {
                    if let Some(want) = expected.filter(|h| *h != hash) {
                        dp.status = NodeStatus::OutOfSync;
                        dp.last_error = Some(format!(
                            "the data plane runs hash {hash} for version {version}, the control plane sent {want}"
                        ));
                    } else {
                        dp.status = NodeStatus::Connected;
                        dp.last_error = None;
                    }
                }
                self.save(dp).await;
            }
            FromDp::Error {
                version,
                error,
                running_version,
            } => {
                tracing::warn!(node_id = %dp.id, version, "data plane refused the configuration: {error}");
                dp.status = NodeStatus::OutOfSync;
                dp.last_error = Some(format!("version {version}: {error}"));
                dp.config_version = running_version;
                dp.sent = None;
                // Its configuration is unknown now: the next version goes as a snapshot, and
                // one newer than the refused version goes now (a delta sent on top of the
                // refused one was refused with it).
                dp.known = false;
                self.save(dp).await;
                let current = self.tenant.current();
                if version < current.version {
                    self.offer_to(dp, &current).await?;
                }
            }
            FromDp::Write { seq, ops } => {
                let (version, error) = match self.write(ops).await {
                    Ok(v) => (v, None),
                    Err(e) => {
                        tracing::debug!(node_id = %dp.id, error = %e, "a data plane's write was not stored");
                        (0, Some(e))
                    }
                };
                self.send(&proto::encode(&ToDp::Written {
                    seq,
                    version,
                    error,
                }))
                .await?;
            }
            FromDp::Ping { version, hash } => {
                dp.config_version = version;
                dp.config_hash = hash;
                let v = self.tenant.current().version;
                self.save(dp).await;
                self.send(&proto::encode(&ToDp::Pong { version: v }))
                    .await?;
            }
        }
        Ok(())
    }
}

/// What a TLS handshake failure means for an operator.
fn explain(e: &str) -> &'static str {
    if e.contains("BadSignature") || e.contains("UnknownIssuer") {
        " (the data plane's certificate is not signed by cluster_ca_cert)"
    } else if e.contains("received fatal alert") {
        " (the data plane refused this control plane's certificate: check cluster_cert, cluster_ca_cert and cluster_server_name on both sides)"
    } else if e.contains("no certificates") {
        " (the data plane presented no certificate: set cluster_cert and cluster_cert_key)"
    } else {
        ""
    }
}

fn uuid_like(s: &str) -> Option<()> {
    (s.len() == 36 && s.chars().all(|c| c.is_ascii_hexdigit() || c == '-')).then_some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// An older data plane's snapshot is stripped and encoded once per version, shared by
    /// every data plane of that version.
    #[test]
    fn stripped_snapshots_are_built_once_per_version() {
        let mut config = Config::default();
        let key_auth = json!({"id": "p1", "name": "key-auth", "config": {"key_names": ["apikey"], "realm": "here"}});
        config.push("plugins", key_auth.as_object().cloned().unwrap());
        let digests = Digests::of(&config);
        let p = Published::new(Arc::new(config), &digests, 3, Default::default());
        let plugins = gantry_testkit::bundled_plugins();
        let (a, ha) = p.stripped_frame(Version(0, 1, 0), &plugins);
        let (b, hb) = p.stripped_frame(Version(0, 1, 0), &plugins);
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(ha, hb);
        assert_ne!(ha, p.hash, "the stripped configuration hashes otherwise");
        let (c, _) = p.stripped_frame(Version(0, 1, 5), &plugins);
        assert!(!Arc::ptr_eq(&a, &c));
        let ToDp::Snapshot { entities, .. } = p.snapshot_msg(Some(Version(0, 1, 0)), &plugins)
        else {
            panic!("a snapshot");
        };
        assert!(entities["plugins"][0].doc()["config"]
            .get("realm")
            .is_none());
    }
}
