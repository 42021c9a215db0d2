//! Managed data plane groups: Konnect's cloud-gateways configurations, run on the user's own
//! infrastructure.
//!
//! `PUT /v2/cloud-gateways/configurations` stores a control plane's configuration (its
//! version and its data plane groups: provider, region, autoscale). A reconciler runs each
//! group as one task that makes what runs match what is configured, one step at a time:
//! - nodes that exited are replaced;
//! - a node of another version than the configured one is replaced by a rolling upgrade: a new
//!   node starts, connects, loads its configuration and serves, and only then the old one
//!   drains (SIGQUIT) and stops; a new node that fails stops the rollout, keeps the old nodes,
//!   and is reported in the group's `state_metadata`;
//! - the count follows `requested_instances` (static) or the measured load (autopilot, see
//!   [`scale`]); scale-in drains a node before it stops.
//!
//! Providers ([`provider`]) run the nodes: [`local`] processes on this host, [`docker`]
//! containers through the Docker Engine API.

pub mod api;
pub mod docker;
pub mod local;
pub mod provider;
pub mod scale;
pub mod spec;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gantry_konnect::Konnect;
use gantry_store::{ManagedRow, Store};
use serde_json::{json, Map, Value};
use tokio::sync::{watch, Notify};

use crate::provider::{Node, NodeSpec, Provider, Providers};
use crate::spec::{Autoscale, GroupSpec, Sizing};

/// What the reconciler needs to know of this control plane.
#[derive(Debug, Clone)]
pub struct FleetSettings {
    pub sizing: Sizing,
    /// The cluster and telemetry listeners' ports.
    pub cluster_port: u16,
    pub telemetry_port: u16,
    /// How the nodes check the control plane's certificate: `KONG_CLUSTER_CA_CERT` (pki) or
    /// `KONG_LUA_SSL_TRUSTED_CERTIFICATE` (the control plane's own, shared), as PEM.
    pub trust: (&'static str, String),
    /// The name the control plane's certificate answers to, when no endpoint domain is set.
    pub server_name: String,
    pub endpoint_domain: Option<String>,
    /// How long a draining node may take before it is killed.
    pub drain_grace: Duration,
    /// How long a new node may take to serve.
    pub start_timeout: Duration,
}

/// The managed groups of every control plane of this Gantry.
pub struct Fleet {
    konnect: Arc<Konnect>,
    providers: Providers,
    settings: FleetSettings,
    wake: Notify,
    groups: Mutex<HashMap<String, watch::Sender<Target>>>,
}

/// What a group task is asked to make true.
#[derive(Debug, Clone, PartialEq)]
struct Target {
    config: String,
    cp: i64,
    cp_id: String,
    version: String,
    /// The configuration's `entity_version`: a failed rollout is not retried until it changes.
    generation: u64,
    spec: GroupSpec,
    /// The group was removed (or its control plane deleted): drain and stop every node.
    terminate: bool,
    /// The managed nodes' client certificate and key.
    cert: String,
    key: String,
}

/// A node this group runs.
struct Managed {
    node: Box<dyn Node>,
    version: String,
    node_id: String,
}

impl Fleet {
    pub fn new(konnect: Arc<Konnect>, providers: Providers, settings: FleetSettings) -> Arc<Fleet> {
        Arc::new(Fleet {
            konnect,
            providers,
            settings,
            wake: Notify::new(),
            groups: Mutex::new(HashMap::new()),
        })
    }

    pub fn providers(&self) -> &Providers {
        &self.providers
    }

    pub(crate) fn konnect(&self) -> &Arc<Konnect> {
        &self.konnect
    }

    fn store(&self) -> &Store {
        self.konnect.store()
    }

    /// Something changed: reconcile now.
    pub fn poke(&self) {
        self.wake.notify_one();
    }

    /// Run until `stop`; then drain and stop every node this control plane runs.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            match self.store().managed_configurations().await {
                Ok(rows) => self.dispatch(&rows, &mut tasks, &stop),
                Err(e) => tracing::warn!(error = %e, "cannot read the managed configurations"),
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                _ = stop.changed() => break,
            }
            if *stop.borrow() {
                break;
            }
        }
        // Every group task sees the stop and drains its nodes.
        while tasks.join_next().await.is_some() {}
    }

    /// Hand each group its target; start a task for a group that has none.
    fn dispatch(
        self: &Arc<Self>,
        rows: &[ManagedRow],
        tasks: &mut tokio::task::JoinSet<()>,
        stop: &watch::Receiver<bool>,
    ) {
        let mut seen = HashSet::new();
        let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        for row in rows {
            let d = &row.doc;
            let version = d.get("version").and_then(Value::as_str).unwrap_or_default();
            let generation = d.get("entity_version").and_then(Value::as_u64).unwrap_or(0);
            let cp_id = d
                .get("control_plane_id")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let (cert, key) = api::credentials(&row.secret);
            for g in d
                .get("dataplane_groups")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let Some(g) = g.as_object() else { continue };
                let (Some(id), Some(spec)) =
                    (g.get("id").and_then(Value::as_str), spec::group_of(g))
                else {
                    continue;
                };
                let state = g.get("state").and_then(Value::as_str).unwrap_or("created");
                if state == "terminated" {
                    continue;
                }
                seen.insert(id.to_string());
                let target = Target {
                    config: row.id.clone(),
                    cp: row.cp,
                    cp_id: cp_id.to_string(),
                    version: version.to_string(),
                    generation,
                    terminate: state == "terminating",
                    spec,
                    cert: cert.clone(),
                    key: key.clone(),
                };
                match groups.get(id) {
                    Some(tx) if !tx.is_closed() => {
                        tx.send_if_modified(|t| {
                            let changed = *t != target;
                            *t = target.clone();
                            changed
                        });
                    }
                    _ => {
                        let Some(provider) = self.providers.get(&target.spec.provider).cloned()
                        else {
                            continue;
                        };
                        let (tx, rx) = watch::channel(target);
                        groups.insert(id.to_string(), tx);
                        let group = Group::new(self.clone(), id.to_string(), provider);
                        tasks.spawn(group.run(rx, stop.clone()));
                    }
                }
            }
        }
        // Groups whose configuration is gone (its control plane was deleted): stop them.
        for (id, tx) in groups.iter() {
            if !seen.contains(id) {
                tx.send_if_modified(|t| !std::mem::replace(&mut t.terminate, true));
            }
        }
        groups.retain(|_, tx| !tx.is_closed());
    }

    /// The `KONG_*` settings of a node of this group.
    fn node_env(&self, t: &Target, group: &str) -> Vec<(String, String)> {
        let mut labels = format!("managed-group:{group}");
        let mut env: Vec<(String, String)> = Vec::new();
        for (k, v) in &t.spec.environment {
            if k == "KONG_CLUSTER_DP_LABELS" {
                labels = format!("{v},{labels}");
            } else {
                env.push((k.clone(), v.clone()));
            }
        }
        env.extend(
            self.settings
                .data_plane_env(&t.cp_id, &t.cert, &t.key, &labels),
        );
        env
    }

    /// Write a group's state into its configuration's document (unless a PUT replaced the
    /// document meanwhile, in which case the next round writes it).
    async fn report(&self, config: &str, group: &str, report: &Report) {
        for _ in 0..3 {
            let rows = match self.store().managed_configurations().await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the managed configurations");
                    return;
                }
            };
            let Some(row) = rows.into_iter().find(|r| r.id == config) else {
                return;
            };
            let mut doc = row.doc.clone();
            let Some(groups) = doc
                .get_mut("dataplane_groups")
                .and_then(Value::as_array_mut)
            else {
                return;
            };
            let Some(g) = groups
                .iter_mut()
                .filter_map(Value::as_object_mut)
                .find(|g| g.get("id").and_then(Value::as_str) == Some(group))
            else {
                return;
            };
            if g.get("state").and_then(Value::as_str) == Some("terminating")
                && report.state != "terminated"
            {
                return;
            }
            let mut meta = Map::new();
            if let Some((status, reason)) = &report.problem {
                meta.insert("reported_status".into(), json!(status));
                meta.insert("reason".into(), json!(reason));
            }
            let new = [
                ("state", json!(report.state)),
                ("state_metadata", Value::Object(meta)),
                ("private_ip_addresses", json!(report.addresses)),
            ];
            if new.iter().all(|(k, v)| g.get(*k) == Some(v)) {
                return;
            }
            for (k, v) in new {
                g.insert(k.into(), v);
            }
            g.insert(
                "updated_at".into(),
                json!(gantry_konnect::api::iso(gantry_store::now_ms())),
            );
            match self
                .store()
                .update_managed_doc(&row.id, &row.doc, &doc)
                .await
            {
                Ok(true) => return,
                Ok(false) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot write a managed group's state");
                    return;
                }
            }
        }
    }
}

/// A group's state as the API shows it.
#[derive(Debug, Clone, PartialEq)]
struct Report {
    state: &'static str,
    /// `(reported_status, reason)`.
    problem: Option<(String, String)>,
    addresses: Vec<String>,
}

/// One group's task.
struct Group {
    fleet: Arc<Fleet>,
    id: String,
    provider: Arc<dyn Provider>,
    nodes: Vec<Managed>,
    /// The rollout to the version of this generation failed.
    failed: Option<(u64, String)>,
    /// When a node last failed to start, and how long to wait before the next try: a group
    /// whose every start fails retries with backoff (2 s doubling to 60 s), not every second.
    backoff: Option<(Instant, Duration)>,
    meter: scale::Meter,
    /// The analytics window the meter counts from, and the node ids it counts.
    window_start: i64,
    counted: HashSet<String>,
    low_since: Option<Instant>,
    serial: u64,
}

impl Group {
    fn new(fleet: Arc<Fleet>, id: String, provider: Arc<dyn Provider>) -> Group {
        Group {
            fleet,
            id,
            provider,
            nodes: Vec::new(),
            failed: None,
            backoff: None,
            meter: scale::Meter::new(Duration::from_secs(10)),
            window_start: 0,
            counted: HashSet::new(),
            low_since: None,
            serial: 0,
        }
    }

    async fn run(mut self, mut rx: watch::Receiver<Target>, mut stop: watch::Receiver<bool>) {
        // What an earlier run of this control plane left behind is stopped first.
        for mut n in self.provider.leftovers(&self.id).await {
            n.drain(self.fleet.settings.drain_grace).await;
        }
        loop {
            let target = rx.borrow_and_update().clone();
            if *stop.borrow() {
                self.drain_all().await;
                return;
            }
            if target.terminate {
                self.fleet
                    .report(&target.config, &self.id, &self.report("terminating", None))
                    .await;
                self.drain_all().await;
                self.fleet
                    .report(&target.config, &self.id, &self.report("terminated", None))
                    .await;
                return;
            }
            let report = self.step(&target).await;
            self.fleet.report(&target.config, &self.id, &report).await;
            tokio::select! {
                _ = rx.changed() => {}
                _ = stop.changed() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    fn report(&self, state: &'static str, problem: Option<(String, String)>) -> Report {
        let mut addresses: Vec<String> = Vec::new();
        for n in &self.nodes {
            let a = n.node.address();
            if !a.is_empty() && !addresses.contains(&a) {
                addresses.push(a);
            }
        }
        Report {
            state,
            problem,
            addresses,
        }
    }

    async fn drain_all(&mut self) {
        let grace = self.fleet.settings.drain_grace;
        futures_util::future::join_all(self.nodes.iter_mut().map(|n| n.node.drain(grace))).await;
        self.nodes.clear();
    }

    /// One reconciliation step; returns the group's state.
    async fn step(&mut self, t: &Target) -> Report {
        // Nodes that exited are forgotten (and replaced below).
        let mut i = 0;
        while i < self.nodes.len() {
            if let Some(why) = self.nodes[i].node.exited().await {
                tracing::warn!(group = %self.id, node = %self.nodes[i].node_id, reason = %why, "a managed data plane exited");
                self.nodes[i].node.reap().await;
                self.nodes.remove(i);
            } else {
                i += 1;
            }
        }
        if self
            .failed
            .as_ref()
            .is_some_and(|(g, _)| *g != t.generation)
        {
            self.failed = None;
            self.backoff = None;
        }
        let want = self.wanted(t).await;
        // The version new nodes run: the configured one, unless its rollout failed.
        let version = match &self.failed {
            Some(_) => self
                .nodes
                .first()
                .map(|n| n.version.clone())
                .unwrap_or_else(|| t.version.clone()),
            None => t.version.clone(),
        };
        if self.failed.is_none() {
            if let Some(old) = self.nodes.iter().position(|n| n.version != t.version) {
                // Rolling upgrade: the new node serves before the old one drains.
                self.busy(t).await;
                match self.start(t, &t.version).await {
                    Ok(()) => {
                        let mut n = self.nodes.remove(old);
                        tracing::info!(group = %self.id, node = %n.node_id, from = %n.version, to = %t.version, "rolling upgrade: draining a replaced node");
                        n.node.drain(self.fleet.settings.drain_grace).await;
                    }
                    Err(why) => {
                        tracing::warn!(group = %self.id, version = %t.version, reason = %why, "rolling upgrade stopped; the old nodes keep serving");
                        self.failed = Some((t.generation, why));
                    }
                }
                return self.state(t, want);
            }
        }
        if self.nodes.len() != want {
            self.busy(t).await;
        }
        let waiting = self.backoff.is_some_and(|(at, wait)| at.elapsed() < wait);
        if self.nodes.len() < want && !waiting {
            let missing = want - self.nodes.len();
            for _ in 0..missing {
                if let Err(why) = self.start(t, &version).await {
                    tracing::warn!(group = %self.id, version = %version, reason = %why, "a managed data plane did not start");
                    if version == t.version {
                        self.failed = Some((t.generation, why));
                    }
                    let wait = self.backoff.map_or(Duration::from_secs(2), |(_, w)| {
                        (w * 2).min(Duration::from_secs(60))
                    });
                    self.backoff = Some((Instant::now(), wait));
                    break;
                }
                self.backoff = None;
            }
        } else if self.nodes.len() > want {
            // Scale in: the oldest nodes go first, each drained.
            let extra = self.nodes.len() - want;
            let grace = self.fleet.settings.drain_grace;
            let gone: Vec<Managed> = self.nodes.drain(..extra).collect();
            for mut n in gone {
                tracing::info!(group = %self.id, node = %n.node_id, "scale-in: draining a node");
                n.node.drain(grace).await;
            }
        }
        self.state(t, want)
    }

    /// Say the group is changing (`initializing`) before a step that takes a while.
    async fn busy(&self, t: &Target) {
        let problem = self
            .failed
            .as_ref()
            .map(|(_, why)| ("ERROR".to_string(), why.clone()));
        self.fleet
            .report(&t.config, &self.id, &self.report("initializing", problem))
            .await;
    }

    fn state(&self, t: &Target, want: usize) -> Report {
        if let Some((_, why)) = &self.failed {
            return self.report(
                if self.nodes.len() >= want {
                    "ready"
                } else {
                    "initializing"
                },
                Some(("ERROR".into(), why.clone())),
            );
        }
        let done = self.nodes.len() == want && self.nodes.iter().all(|n| n.version == t.version);
        self.report(if done { "ready" } else { "initializing" }, None)
    }

    /// The count this group should run now.
    async fn wanted(&mut self, t: &Target) -> usize {
        match &t.spec.autoscale {
            Autoscale::Static { requested, .. } => *requested,
            Autoscale::Autopilot { base_rps, max_rps } => {
                let pilot = scale::Autopilot {
                    base_rps: *base_rps,
                    max_rps: *max_rps,
                    capacity: self.fleet.settings.sizing.instance_rps,
                    scale_in_delay: self.fleet.settings.sizing.scale_in_delay,
                };
                self.measure(t).await;
                pilot.decide(
                    self.nodes.len(),
                    self.meter.rps(),
                    Instant::now(),
                    &mut self.low_since,
                )
            }
        }
    }

    /// Sample the requests this group's nodes served, from the telemetry the control plane
    /// stores (per-minute rows, merged as data planes flush them, every second by default).
    async fn measure(&mut self, t: &Target) {
        let now = gantry_model::unix_now();
        // A fresh window every ten minutes keeps the query small.
        if now - self.window_start > 600 {
            self.window_start = now - now % 60;
            self.meter.reset();
        }
        for n in &self.nodes {
            self.counted.insert(n.node_id.clone());
        }
        let q = gantry_store::AnalyticsQuery {
            start: self.window_start,
            end: now + 120,
            ..Default::default()
        };
        match self.fleet.store().scoped(t.cp).analytics(&q).await {
            Ok(rows) => {
                let total: u64 = rows
                    .iter()
                    .filter(|(node, _)| self.counted.contains(node))
                    .map(|(_, r)| r.count)
                    .sum();
                self.meter.sample(Instant::now(), total);
            }
            Err(e) => tracing::warn!(error = %e, "cannot read analytics for autopilot"),
        }
    }

    /// Start one node of `version` and wait until it serves; on failure it is stopped and the
    /// reason returned.
    async fn start(&mut self, t: &Target, version: &str) -> Result<(), String> {
        self.serial += 1;
        let node_id = uuid::Uuid::new_v4().to_string();
        let instance_type = match &t.spec.autoscale {
            Autoscale::Static { instance_type, .. } => instance_type.clone(),
            Autoscale::Autopilot { .. } => "small".to_string(),
        };
        let spec = NodeSpec {
            name: format!("{}-{}", version, &node_id[..8]),
            node_id: node_id.clone(),
            version: version.to_string(),
            instance_type,
            env: self.fleet.node_env(t, &self.id),
            cluster_port: self.fleet.settings.cluster_port,
            telemetry_port: self.fleet.settings.telemetry_port,
        };
        let mut node = self
            .provider
            .start(&self.id, &t.spec.region, spec)
            .await
            .map_err(|e| format!("gantry {version} could not be started: {e}"))?;
        match self.until_serving(t, &mut node, &node_id).await {
            Ok(()) => {
                tracing::info!(group = %self.id, node = %node_id, version, "managed data plane serving");
                self.counted.insert(node_id.clone());
                self.nodes.push(Managed {
                    node,
                    version: version.to_string(),
                    node_id,
                });
                Ok(())
            }
            Err(why) => {
                let words = node.last_words().await;
                node.drain(Duration::from_secs(2)).await;
                Err(if words.is_empty() {
                    format!("gantry {version}: {why}")
                } else {
                    format!("gantry {version}: {why}: {words}")
                })
            }
        }
    }

    /// Wait until a new node is connected (in the control plane's registry), has its
    /// configuration and serves (`/status/ready` answers 200).
    async fn until_serving(
        &self,
        t: &Target,
        node: &mut Box<dyn Node>,
        node_id: &str,
    ) -> Result<(), String> {
        let deadline = Instant::now() + self.fleet.settings.start_timeout;
        let store = self.fleet.store().scoped(t.cp);
        loop {
            if let Some(why) = node.exited().await {
                return Err(why);
            }
            if ready(&node.status_addr()).await {
                let registered = store
                    .data_planes()
                    .await
                    .map(|d| {
                        d.iter()
                            .any(|d| d.get("id").and_then(Value::as_str) == Some(node_id))
                    })
                    .unwrap_or(false);
                if registered {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "did not serve within {} s",
                    self.fleet.settings.start_timeout.as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Whether `/status/ready` at `addr` answers 200.
async fn ready(addr: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(Ok(mut s)) =
        tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr)).await
    else {
        return false;
    };
    let req = format!("GET /status/ready HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    matches!(
        tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut head)).await,
        Ok(Ok(_))
    ) && head.starts_with(b"HTTP/1.1 200")
}

/// Why the managed groups cannot run on this control plane.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("{0}: {1}")]
    Setting(&'static str, String),
}

/// The host nodes on this machine dial a listener at `addr` by: loopback for an any-address
/// listener.
fn dial_host(addr: std::net::SocketAddr) -> String {
    match addr.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".into(),
        ip if ip.is_unspecified() => "[::1]".into(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    }
}

/// The first DNS name a PEM certificate carries.
fn dns_name(pem: &[u8]) -> Option<String> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem).ok()?;
    let cert = p.parse_x509().ok()?;
    let san = cert.subject_alternative_name().ok().flatten()?;
    san.value.general_names.iter().find_map(|n| match n {
        x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
        _ => None,
    })
}

impl FleetSettings {
    /// The `KONG_*` settings a data plane of control plane `cp_id` needs to connect with the
    /// client certificate `cert` / `key` (pinned on that control plane) and carry `labels`
    /// (`key:value,...`, may be empty): role, database, `cluster_mtls = pki`, the certificate,
    /// what it trusts the control plane's certificate by, the server names and vitals. Where it
    /// dials (`cluster_control_plane`, `cluster_telemetry_endpoint`) is the caller's.
    pub fn data_plane_env(
        &self,
        cp_id: &str,
        cert: &str,
        key: &str,
        labels: &str,
    ) -> Vec<(String, String)> {
        let (cp_name, tp_name) = self.server_names(cp_id);
        let mut env: Vec<(String, String)> = vec![
            ("KONG_ROLE".into(), "data_plane".into()),
            ("KONG_DATABASE".into(), "off".into()),
            ("KONG_VITALS".into(), "on".into()),
            ("KONG_CLUSTER_MTLS".into(), "pki".into()),
            ("KONG_CLUSTER_CERT".into(), cert.to_string()),
            ("KONG_CLUSTER_CERT_KEY".into(), key.to_string()),
            (self.trust.0.to_string(), self.trust.1.clone()),
            ("KONG_CLUSTER_SERVER_NAME".into(), cp_name),
            ("KONG_CLUSTER_TELEMETRY_SERVER_NAME".into(), tp_name),
        ];
        if !labels.is_empty() {
            env.push(("KONG_CLUSTER_DP_LABELS".into(), labels.to_string()));
        }
        env
    }

    /// The names control plane `cp_id`'s cluster and telemetry certificates answer to.
    pub fn server_names(&self, cp_id: &str) -> (String, String) {
        match &self.endpoint_domain {
            Some(domain) => {
                let p = gantry_konnect::endpoint_prefix(cp_id);
                (format!("{p}.cp.{domain}"), format!("{p}.tp.{domain}"))
            }
            None => (self.server_name.clone(), self.server_name.clone()),
        }
    }

    /// From a control plane's settings.
    /// From a control plane's settings and the addresses its cluster and telemetry listeners
    /// got.
    pub fn from_settings(
        s: &gantry_conf::Settings,
        cluster: std::net::SocketAddr,
        telemetry: std::net::SocketAddr,
    ) -> Result<FleetSettings, FleetError> {
        let (cluster_port, telemetry_port) = (cluster.port(), telemetry.port());
        let c = &s.cluster;
        let pem = |key: &'static str, v: &str| {
            gantry_protocol::tls::read_pem(key, v)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .map_err(|e| FleetError::Setting(key, e.to_string()))
        };
        let own = pem("cluster_cert", &c.cert)?;
        let trust = match c.mtls {
            gantry_conf::Mtls::Pki if !c.ca_cert.is_empty() => {
                ("KONG_CLUSTER_CA_CERT", pem("cluster_ca_cert", &c.ca_cert)?)
            }
            _ => ("KONG_LUA_SSL_TRUSTED_CERTIFICATE", own.clone()),
        };
        let number = |key: &'static str, default: u64| -> Result<u64, FleetError> {
            match s.get(key).filter(|v| !v.is_empty()) {
                None => Ok(default),
                Some(v) => v
                    .parse()
                    .map_err(|_| FleetError::Setting(key, format!("'{v}' is not a number"))),
            }
        };
        let delay = match s.get("managed_scale_in_delay").filter(|v| !v.is_empty()) {
            None => Duration::from_secs(60),
            Some(v) => gantry_conf::parse_duration(v).ok_or_else(|| {
                FleetError::Setting("managed_scale_in_delay", format!("'{v}' is not a duration"))
            })?,
        };
        Ok(FleetSettings {
            sizing: Sizing {
                instance_rps: number("managed_instance_rps", 2000)?.max(1),
                scale_in_delay: delay,
            },
            cluster_port,
            telemetry_port,
            server_name: dns_name(own.as_bytes()).unwrap_or_else(|| "kong_clustering".into()),
            trust,
            endpoint_domain: s.cluster_endpoint_domain.clone(),
            drain_grace: Duration::from_secs(30),
            start_timeout: Duration::from_secs(60),
        })
    }
}

/// The providers this control plane offers: `local` and `docker` (which refuses
/// configurations, saying why, while no Docker daemon answers). `versions_dir` holds installed
/// versions; `home` the nodes' prefixes.
pub fn providers(
    versions_dir: std::path::PathBuf,
    cluster: std::net::SocketAddr,
    home: &std::path::Path,
) -> Result<Providers, FleetError> {
    let mut p = Providers::default();
    p.register(
        "local",
        Arc::new(local::Local {
            versions_dir,
            home: home.to_path_buf(),
            own_exe: std::env::current_exe().map_err(|e| {
                FleetError::Setting("prefix", format!("cannot find this binary: {e}"))
            })?,
            own_version: gantry_model::GANTRY_VERSION.to_string(),
            cluster_host: dial_host(cluster),
        }),
    );
    p.register("docker", Arc::new(docker::Docker::new(dial_host(cluster))));
    Ok(p)
}
