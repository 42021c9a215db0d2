//! The plugin runtime.
//!
//! A plugin is one file holding its [`Descriptor`]: its schema (name, priority, version,
//! configuration fields, fields by version) and its `build` function, which turns a validated
//! configuration into a type implementing [`Plugin`] (hooks per phase, each with a default that
//! does nothing). [`BUNDLED`] lists the descriptors; Kong's `plugins` setting chooses a
//! [`Registry`] among them, and its [`Registry::catalog`] is what the Admin API and the
//! declarative loaders validate with, compiling each configuration with the same `build`, so
//! that what is stored is what runs. A plugin outside the registry is refused everywhere: a
//! node never proxies a route whose plugins it cannot run.
//!
//! Scoping follows Kong: for each plugin name, the most specific configuration applies —
//! route+service+consumer, route+consumer, service+consumer, route+service, consumer, route,
//! service, global. Plugins run by priority, highest first; a plugin's configuration is chosen
//! when its turn comes, so the consumer an authentication plugin identified (higher priority)
//! selects the configuration of the plugins after it.

mod acl;
pub(crate) mod args;
mod basic_auth;
mod correlation_id;
mod cors;
mod file_log;
mod hmac_auth;
mod http_log;
mod ip_restriction;
pub mod jwt;
mod key_auth;
pub mod oauth2;
mod opentelemetry;
pub mod prometheus;
mod proxy_cache;
mod queue;
mod rate_limiting;
mod request_size_limiting;
mod request_termination;
mod request_transformer;
mod response_ratelimiting;
mod response_transformer;
mod serialize;
mod sink;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, LazyLock};

use bytes::Bytes;
use gantry_model::delta::Change;
use gantry_model::plugins::{Catalog, CompileError, Enabled, PluginSchema};
use gantry_model::{Config, Entity};
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Response, StatusCode};
use serde_json::Value;

use crate::names;
use crate::server::ProxyBody;

pub use proxy_cache::{CacheStore, Cached};
pub use queue::Queues;
pub use rate_limiting::Counters;

/// State that outlives configurations (rate-limiting's windows; a connection pool or a queue
/// a plugin keeps), owned by the proxy and handed to every `build`: one value per type, made
/// on first use and shared by every instance and every later configuration.
#[derive(Clone, Default)]
pub struct Shared(
    Arc<std::sync::Mutex<HashMap<std::any::TypeId, Arc<dyn std::any::Any + Send + Sync>>>>,
);

impl Shared {
    /// The value of type `T`, made with `T::default()` the first time it is asked for.
    pub fn get<T: Default + Send + Sync + 'static>(&self) -> Arc<T> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let v = map
            .entry(std::any::TypeId::of::<T>())
            .or_insert_with(|| Arc::new(T::default()))
            .clone();
        drop(map);
        v.downcast::<T>()
            .expect("the entry under a type's id holds a value of that type")
    }
}

/// Where plugins write entities on the request path (oauth2's tokens and codes): the node's
/// store, or on a data plane its control plane; set by the node when it starts. A node
/// without a database says so ([`Writes::set_none`]), and plugins that need one are refused.
#[derive(Default)]
pub struct Writes {
    writer: std::sync::OnceLock<Arc<dyn gantry_model::writes::EntityWriter>>,
    none: std::sync::atomic::AtomicBool,
}

impl Writes {
    pub fn set(&self, w: Arc<dyn gantry_model::writes::EntityWriter>) {
        let _ = self.writer.set(w);
    }
    pub fn set_none(&self) {
        self.none.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    /// Whether this node has nowhere to write.
    pub fn none(&self) -> bool {
        self.none.load(std::sync::atomic::Ordering::Relaxed)
    }
    pub async fn write(
        &self,
        ops: Vec<gantry_model::writes::WriteOp>,
    ) -> Result<i64, gantry_model::writes::WriteError> {
        match self.writer.get() {
            Some(w) => w.write(ops).await,
            None => Err(gantry_model::writes::WriteError::Unavailable(
                "this node has nowhere to write entities".into(),
            )),
        }
    }
}

/// Kept in [`Ctx::state`] by a plugin, the path the upstream gets instead of the one routing
/// made (Kong's `kong.service.request.set_path`): the service's path and `strip_path` no
/// longer apply; the query string stays.
#[derive(Clone, Debug)]
pub struct UpstreamPath(pub String);

/// Kept in [`Ctx::state`] by a plugin, the `Host` the upstream gets (Kong's
/// `kong.service.request.set_header("host", ...)`), in place of the one `preserve_host` and the
/// service choose.
#[derive(Clone, Debug)]
pub struct UpstreamHost(pub HeaderValue);

/// A consumer, as plugins and upstream headers need it.
#[derive(Debug)]
pub struct Consumer {
    pub id: String,
    pub username: Option<String>,
    pub custom_id: Option<String>,
    /// `X-Consumer-Id`, `-Username` and `-Custom-Id`, made once with the snapshot.
    headers: [Option<HeaderValue>; 3],
}

impl Consumer {
    pub fn new(id: String, username: Option<String>, custom_id: Option<String>) -> Consumer {
        let h = |v: Option<&str>| v.and_then(|v| HeaderValue::from_str(v).ok());
        Consumer {
            headers: [
                h(Some(&id)),
                h(username.as_deref()),
                h(custom_id.as_deref()),
            ],
            id,
            username,
            custom_id,
        }
    }
}

/// A credential entity that an authentication plugin finds consumers through: its type and
/// the field that identifies a credential (key-auth's `key`, basic-auth's `username`, ...).
#[derive(Debug, Clone, Copy)]
pub struct CredentialKind {
    pub entity: &'static str,
    pub key: &'static str,
    /// The reference to what the credential belongs to: `consumer` for credentials, or
    /// `credential` for what hangs off one (oauth2's tokens and codes), which are found with
    /// [`Identities::entry`].
    pub owner: &'static str,
    /// What the plugin reads of a credential on each request (basic-auth's password hash,
    /// jwt's parsed key), made from its document once, when it is indexed, into
    /// [`Credential::prepared`]. A credential it makes nothing of is not indexed.
    pub prepare: Option<Prepare>,
}

/// Makes a credential's per-request form from its document.
pub type Prepare = fn(&gantry_model::Doc) -> Option<Arc<dyn std::any::Any + Send + Sync>>;

/// A credential as authentication plugins find it.
#[derive(Debug)]
pub struct Credential {
    pub id: String,
    /// The id of the consumer it belongs to (a credential is found only while its consumer
    /// is in the index); for a kind owned otherwise, the id of its owner.
    pub consumer_id: String,
    /// The whole stored entity, shared with the configuration.
    pub entity: Entity,
    /// What the kind's [`CredentialKind::prepare`] made of it.
    pub prepared: Option<Arc<dyn std::any::Any + Send + Sync>>,
    /// When its `ttl` runs out (Unix seconds): from then on it is not found.
    pub expires_at: Option<i64>,
}

impl Credential {
    /// The prepared form, as the type its kind makes.
    pub fn prepared<T: 'static>(&self) -> Option<&T> {
        self.prepared.as_deref()?.downcast_ref()
    }
}

/// A credential found, with its consumer.
pub struct Found<'a> {
    pub credential: &'a Arc<Credential>,
    pub consumer: &'a Arc<Consumer>,
}

use crate::PMap;

/// Consumers and their credentials, indexed for authentication plugins: every plugin of the
/// registry names the credential kinds it reads ([`Descriptor::credentials`]), and each is
/// indexed by its identifying field. A new configuration patches the index with the
/// consumers and credentials that changed ([`Identities::patch`]).
#[derive(Clone, Default)]
pub struct Identities {
    consumers: PMap<String, Arc<Consumer>>,
    by_username: PMap<String, Arc<Consumer>>,
    /// By credential entity and identifying field, then by identifying value.
    credentials: crate::FastMap<(&'static str, &'static str), PMap<String, Arc<Credential>>>,
    /// Credential id and identifying field to its identifying value, to remove or replace it.
    keys: PMap<(String, &'static str), String>,
    /// Consumer id to its ACL groups, when a plugin of the registry reads them
    /// ([`Descriptor::with_groups`]).
    groups: PMap<String, Arc<ConsumerGroups>>,
    /// ACL id to `(consumer id, group)`, to remove or replace it by id.
    acls: PMap<String, (String, String)>,
    /// Consumer group id to its name.
    group_names: PMap<String, Arc<str>>,
    /// Consumer group id to the ids of its consumers.
    members: PMap<String, imbl::OrdSet<String>>,
    /// Consumer id to the ids of its consumer groups.
    groups_of: PMap<String, imbl::OrdSet<String>>,
    /// Membership id to `(consumer id, consumer group id)`.
    memberships: PMap<String, (String, String)>,
    /// Consumer id to its consumer groups, by name.
    in_groups: PMap<String, Arc<[GroupRef]>>,
}

/// A consumer group a consumer is in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRef {
    pub id: String,
    pub name: Arc<str>,
}

/// The entity of consumer groups, and of their memberships.
pub const CONSUMER_GROUPS: &str = "consumer_groups";
pub const CONSUMER_GROUP_CONSUMERS: &str = "consumer_group_consumers";

/// The entity of ACL group memberships.
pub const ACLS: &str = "acls";

/// A consumer's ACL groups, in the order of their ACL ids, and the `X-Consumer-Groups` value
/// they make (`a, b`), made once per change of them.
#[derive(Debug, Default)]
pub struct ConsumerGroups {
    by_acl: imbl::OrdMap<String, String>,
    pub names: Vec<String>,
    pub header: Option<HeaderValue>,
}

impl ConsumerGroups {
    fn with(by_acl: imbl::OrdMap<String, String>) -> ConsumerGroups {
        let names: Vec<String> = by_acl.values().cloned().collect();
        let header = HeaderValue::from_str(&names.join(", ")).ok();
        ConsumerGroups {
            by_acl,
            names,
            header,
        }
    }
}

impl Identities {
    /// The index of a whole configuration.
    pub fn build(config: &Config, registry: &Registry) -> Identities {
        let mut ids = Identities::default();
        for d in config.docs("consumers") {
            ids.put_consumer(d);
        }
        if registry.reads_groups() {
            for d in config.docs(ACLS) {
                ids.put_acl(d);
            }
        }
        for d in config.docs(CONSUMER_GROUPS) {
            ids.put_group(d);
        }
        for d in config.docs(CONSUMER_GROUP_CONSUMERS) {
            ids.put_membership(d);
        }
        for kind in registry.credential_kinds() {
            ids.credentials.entry((kind.entity, kind.key)).or_default();
            for d in config.docs(kind.entity) {
                ids.put_credential(kind, d);
            }
        }
        ids
    }

    /// This index with `changes` applied: the cost of the changes, not of the index.
    pub fn patch(&self, changes: &[Change], registry: &Registry) -> Identities {
        let mut ids = self.clone();
        let kinds = registry.credential_kinds();
        for c in changes {
            let entity = c.entity();
            if entity == "consumers" {
                match c {
                    Change::Upsert { doc, .. } => ids.put_consumer(doc),
                    Change::Delete { id, .. } => ids.remove_consumer(id),
                }
            } else if kinds.iter().any(|k| k.entity == entity) {
                for kind in kinds.iter().filter(|k| k.entity == entity) {
                    match c {
                        Change::Upsert { doc, .. } => ids.put_credential(*kind, doc),
                        Change::Delete { id, .. } => ids.remove_credential(*kind, id),
                    }
                }
            } else if entity == CONSUMER_GROUPS {
                match c {
                    Change::Upsert { doc, .. } => ids.put_group(doc),
                    Change::Delete { id, .. } => ids.remove_group(id),
                }
            } else if entity == CONSUMER_GROUP_CONSUMERS {
                match c {
                    Change::Upsert { doc, .. } => ids.put_membership(doc),
                    Change::Delete { id, .. } => ids.remove_membership(id),
                }
            } else if entity == ACLS && registry.reads_groups() {
                match c {
                    Change::Upsert { doc, .. } => ids.put_acl(doc),
                    Change::Delete { id, .. } => ids.remove_acl(id),
                }
            }
        }
        ids
    }

    fn put_consumer(&mut self, e: &Entity) {
        // A consumer that is not one (the control plane validated it) is left out of the
        // index: no credential finds it.
        let Ok(d) = gantry_model::typed::Consumer::try_from(e) else {
            self.remove_consumer(e.id());
            return;
        };
        let id = d.id;
        self.remove_consumer(&id);
        let c = Arc::new(Consumer::new(id.clone(), d.username, d.custom_id));
        if let Some(u) = &c.username {
            self.by_username.insert(u.clone(), c.clone());
        }
        self.consumers.insert(id, c);
    }

    fn remove_consumer(&mut self, id: &str) {
        if let Some(old) = self.consumers.remove(id) {
            if let Some(u) = &old.username {
                if self.by_username.get(u).is_some_and(|c| c.id == old.id) {
                    self.by_username.remove(u);
                }
            }
        }
    }

    fn put_credential(&mut self, kind: CredentialKind, e: &Entity) {
        let d = e.doc();
        let s = |k: &str| d.get(k).and_then(Value::as_str).map(str::to_string);
        let id = e.id().to_string();
        self.remove_credential(kind, &id);
        let (Some(key), Some(owner)) = (
            s(kind.key),
            d.get(kind.owner)
                .and_then(|c| c.get("id"))
                .and_then(Value::as_str)
                .map(str::to_string),
        ) else {
            return;
        };
        let prepared = match kind.prepare {
            Some(f) => match f(&d) {
                Some(p) => Some(p),
                None => return,
            },
            None => None,
        };
        let c = Arc::new(Credential {
            id: id.clone(),
            consumer_id: owner,
            entity: e.clone(),
            prepared,
            expires_at: gantry_model::entities::expires_at(&d),
        });
        self.credentials
            .entry((kind.entity, kind.key))
            .or_default()
            .insert(key.clone(), c);
        self.keys.insert((id, kind.key), key);
    }

    fn remove_credential(&mut self, kind: CredentialKind, id: &str) {
        if let Some(key) = self.keys.remove(&(id.to_string(), kind.key)) {
            if let Some(index) = self.credentials.get_mut(&(kind.entity, kind.key)) {
                if index.get(&key).is_some_and(|c| c.id == id) {
                    index.remove(&key);
                }
            }
        }
    }

    /// An indexed entity of `kind` by its identifying value, whatever owns it; `None` once its
    /// `ttl` ran out.
    pub fn entry(&self, kind: &CredentialKind, key: &str) -> Option<&Arc<Credential>> {
        let found = self.credentials.get(&(kind.entity, kind.key))?.get(key)?;
        if found
            .expires_at
            .is_some_and(|at| at <= gantry_model::unix_now())
        {
            return None;
        }
        Some(found)
    }

    /// An indexed entity of `kind` by its id.
    pub fn entry_by_id(&self, kind: &CredentialKind, id: &str) -> Option<&Arc<Credential>> {
        let key = self.keys.get(&(id.to_string(), kind.key))?;
        self.entry(kind, key)
    }

    /// A consumer by id.
    pub fn consumer(&self, id: &str) -> Option<&Arc<Consumer>> {
        self.consumers.get(id)
    }

    /// The credential of `kind` whose identifying field is `key`, with its consumer.
    pub fn credential(&self, kind: &CredentialKind, key: &str) -> Option<Found<'_>> {
        let credential = self.entry(kind, key)?;
        let consumer = self.consumers.get(&credential.consumer_id)?;
        Some(Found {
            credential,
            consumer,
        })
    }

    /// A consumer by id or username (the `anonymous` setting accepts both).
    pub fn find(&self, key: &str) -> Option<Arc<Consumer>> {
        self.consumers
            .get(key)
            .or_else(|| self.by_username.get(key))
            .cloned()
    }

    /// The ACL groups of a consumer (none when it is in no group).
    pub fn groups(&self, consumer_id: &str) -> Option<&Arc<ConsumerGroups>> {
        self.groups.get(consumer_id)
    }

    fn put_acl(&mut self, e: &Entity) {
        self.remove_acl(e.id());
        let d = e.doc();
        let consumer = d
            .get("consumer")
            .and_then(|c| c.get("id"))
            .and_then(Value::as_str);
        let (Some(consumer), Some(group)) = (consumer, d.get("group").and_then(Value::as_str))
        else {
            return;
        };
        let mut by_acl = self
            .groups
            .get(consumer)
            .map(|g| g.by_acl.clone())
            .unwrap_or_default();
        by_acl.insert(e.id().to_string(), group.to_string());
        self.groups
            .insert(consumer.to_string(), Arc::new(ConsumerGroups::with(by_acl)));
        self.acls.insert(
            e.id().to_string(),
            (consumer.to_string(), group.to_string()),
        );
    }

    fn remove_acl(&mut self, id: &str) {
        let Some((consumer, _)) = self.acls.remove(id) else {
            return;
        };
        let Some(g) = self.groups.get(&consumer) else {
            return;
        };
        let mut by_acl = g.by_acl.clone();
        by_acl.remove(id);
        if by_acl.is_empty() {
            self.groups.remove(&consumer);
        } else {
            self.groups
                .insert(consumer, Arc::new(ConsumerGroups::with(by_acl)));
        }
    }

    /// The consumer groups of a consumer, by name (none when it is in no group).
    pub fn consumer_groups(&self, consumer_id: &str) -> &[GroupRef] {
        self.in_groups
            .get(consumer_id)
            .map(|g| &g[..])
            .unwrap_or_default()
    }

    fn put_group(&mut self, e: &Entity) {
        let Some(name) = e.get("name").and_then(|n| n.as_str().map(Arc::<str>::from)) else {
            self.remove_group(e.id());
            return;
        };
        let id = e.id().to_string();
        if self.group_names.get(&id) == Some(&name) {
            return;
        }
        self.group_names.insert(id.clone(), name);
        // A renamed group moves in its consumers' lists: the cost of its members.
        for consumer in self.members.get(&id).cloned().unwrap_or_default() {
            self.regroup(&consumer);
        }
    }

    fn remove_group(&mut self, id: &str) {
        self.group_names.remove(id);
        for consumer in self.members.remove(id).unwrap_or_default() {
            self.regroup(&consumer);
        }
    }

    fn put_membership(&mut self, e: &Entity) {
        self.remove_membership(e.id());
        let d = e.doc();
        let r = |k: &str| {
            d.get(k)
                .and_then(|c| c.get("id"))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        let (Some(consumer), Some(group)) = (r("consumer"), r("consumer_group")) else {
            return;
        };
        self.members
            .entry(group.clone())
            .or_default()
            .insert(consumer.clone());
        self.groups_of
            .entry(consumer.clone())
            .or_default()
            .insert(group.clone());
        self.memberships
            .insert(e.id().to_string(), (consumer.clone(), group));
        self.regroup(&consumer);
    }

    fn remove_membership(&mut self, id: &str) {
        let Some((consumer, group)) = self.memberships.remove(id) else {
            return;
        };
        if let Some(m) = self.members.get_mut(&group) {
            m.remove(&consumer);
            if m.is_empty() {
                self.members.remove(&group);
            }
        }
        if let Some(g) = self.groups_of.get_mut(&consumer) {
            g.remove(&group);
            if g.is_empty() {
                self.groups_of.remove(&consumer);
            }
        }
        self.regroup(&consumer);
    }

    /// Remake a consumer's list of groups from the memberships (a consumer is in few).
    fn regroup(&mut self, consumer: &str) {
        let mut groups: Vec<GroupRef> = self
            .groups_of
            .get(consumer)
            .into_iter()
            .flatten()
            .filter_map(|g| {
                Some(GroupRef {
                    id: g.clone(),
                    name: self.group_names.get(g)?.clone(),
                })
            })
            .collect();
        if groups.is_empty() {
            self.in_groups.remove(consumer);
            return;
        }
        groups.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        self.in_groups.insert(consumer.to_string(), groups.into());
    }

    /// The number of consumers indexed.
    pub fn consumers(&self) -> usize {
        self.consumers.len()
    }
}

/// The request body as the rewrite and access phases see it: streaming until a plugin reads
/// it ([`Ctx::body`]), then whole (at most [`BODY_LIMIT`] bytes), and sent upstream as read.
pub struct BodySlot(Slot);

enum Slot {
    Stream(crate::pool::UpBody),
    Read(Bytes),
    Failed(bool),
}

impl BodySlot {
    pub fn new(body: crate::pool::UpBody) -> BodySlot {
        BodySlot(Slot::Stream(body))
    }

    /// A request without a body.
    pub fn empty() -> BodySlot {
        BodySlot(Slot::Read(Bytes::new()))
    }

    async fn read(&mut self, headers: &hyper::HeaderMap) -> Option<&Bytes> {
        if let Slot::Stream(_) = &self.0 {
            let Slot::Stream(b) = std::mem::replace(&mut self.0, Slot::Failed(false)) else {
                unreachable!("matched above")
            };
            self.0 = match crate::server::read_body(b, headers).await {
                Ok(bytes) => Slot::Read(bytes),
                Err(e) => Slot::Failed(matches!(e, crate::error::ProxyError::BodyTooLarge)),
            };
        }
        match &self.0 {
            Slot::Read(b) => Some(b),
            _ => None,
        }
    }

    /// Change the body read (nothing happens to a body no plugin read).
    pub fn edit(&mut self, f: impl FnOnce(&Bytes) -> Bytes) {
        if let Slot::Read(b) = &self.0 {
            self.0 = Slot::Read(f(b));
        }
    }

    /// The body to send upstream: the stream, or what was read (its `Content-Length` set);
    /// a body that could not be read fails the request.
    pub(crate) fn take(
        &mut self,
        headers: &mut hyper::HeaderMap,
    ) -> Result<crate::pool::UpBody, crate::error::ProxyError> {
        match std::mem::replace(&mut self.0, Slot::Failed(false)) {
            Slot::Stream(b) => Ok(b),
            Slot::Read(bytes) => {
                if headers.contains_key(hyper::header::TRANSFER_ENCODING)
                    || headers.contains_key(hyper::header::CONTENT_LENGTH)
                {
                    headers.remove(hyper::header::TRANSFER_ENCODING);
                    headers.insert(
                        hyper::header::CONTENT_LENGTH,
                        HeaderValue::from(bytes.len()),
                    );
                }
                Ok(http_body_util::Either::Right(Full::new(bytes)))
            }
            Slot::Failed(true) => Err(crate::error::ProxyError::BodyTooLarge),
            Slot::Failed(false) => Err(crate::error::ProxyError::BodyUnreadable),
        }
    }
}

/// The connection a request came on, as nginx's variables tell it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Connection {
    /// Where it was accepted (`$server_addr`), when known.
    pub local_ip: Option<IpAddr>,
    /// The listener's port (`$server_port`).
    pub local_port: u16,
    /// This process's serial number of the connection (`$connection`).
    pub serial: u64,
    /// The requests received on it, this one included (`$connection_requests`).
    pub requests: u64,
}

/// What plugins see and change of a request.
pub struct Ctx<'a> {
    pub req: &'a mut hyper::http::request::Parts,
    /// The request body, read only when a plugin asks ([`Ctx::body`]).
    pub body: &'a mut BodySlot,
    /// Whether the request came over TLS to this node.
    pub https: bool,
    /// Whether the peer is trusted (`trusted_ips`): its `X-Forwarded-*` headers are believed.
    pub trusted: bool,
    /// The version of the configuration the request runs on.
    pub config_version: i64,
    pub client_ip: IpAddr,
    /// The address of the connection's other end (the client, or a proxy before it).
    pub peer_ip: IpAddr,
    /// The connection the request came on.
    pub connection: Connection,
    /// The route that matched: none in the rewrite phase, which runs before routing.
    pub route_id: Option<&'a str>,
    pub service_id: Option<&'a str>,
    pub consumer: Option<Arc<Consumer>>,
    /// The credential that authenticated the consumer.
    pub credential: Option<String>,
    pub identities: &'a Identities,
    /// The route's regex captures, by name and by number (`0` is the whole match): none in
    /// the rewrite phase.
    pub captures: &'a [(String, String)],
    /// Headers to add to the response to the client.
    pub response_headers: Vec<(HeaderName, HeaderValue)>,
    /// Per-request state, by type: what a plugin keeps from one phase to a later one (the
    /// log phase reads it from [`crate::server::RequestLog::state`]). Nothing is allocated
    /// until a plugin stores something.
    pub state: &'a mut hyper::http::Extensions,
}

impl Ctx<'_> {
    /// The whole request body (at most [`BODY_LIMIT`] bytes), read from the client the first
    /// time a plugin asks; `None` when it could not be read (too large, or the client failed),
    /// and the request then fails as it would have upstream.
    pub async fn body(&mut self) -> Option<&Bytes> {
        self.body.read(&self.req.headers).await
    }

    /// Set the consumer, and the upstream headers Kong sets for it.
    pub fn authenticate(
        &mut self,
        consumer: Arc<Consumer>,
        credential: Option<String>,
        anonymous: bool,
    ) {
        let h = &mut self.req.headers;
        let mut put = |name: HeaderName, v: Option<HeaderValue>| match v {
            Some(v) => {
                h.insert(name, v);
            }
            None => {
                h.remove(name);
            }
        };
        let [id, username, custom_id] = consumer.headers.clone();
        put(names::X_CONSUMER_ID, id);
        put(names::X_CONSUMER_USERNAME, username);
        put(names::X_CONSUMER_CUSTOM_ID, custom_id);
        put(
            names::X_CREDENTIAL_IDENTIFIER,
            credential
                .as_deref()
                .and_then(|c| HeaderValue::from_str(c).ok()),
        );
        put(
            names::X_ANONYMOUS_CONSUMER,
            anonymous.then_some(HeaderValue::from_static("true")),
        );
        self.consumer = Some(consumer);
        self.credential = credential;
    }
}

/// What follows an authorization scheme in a header value, as Kong's `\s*[Bb]earer\s+(.+)`
/// and `\s*[Bb]asic\s*(.+)` find it: the first `scheme` (its first letter in either case)
/// followed by at least `min_space` whitespace characters and then something. Written out
/// because a regex with a capture group costs microseconds on a long token.
pub(crate) fn after_scheme<'a>(value: &'a str, scheme: &str, min_space: usize) -> Option<&'a str> {
    let (first, tail) = scheme.split_at(1);
    let first = first.chars().next().unwrap_or_default();
    let mut from = 0;
    while let Some(at) = value[from..].find(tail) {
        let at = from + at;
        from = at + tail.len();
        if !value[..at].ends_with(|c: char| c.eq_ignore_ascii_case(&first)) {
            continue;
        }
        let after = &value[from..];
        let rest = after.trim_start_matches(|c: char| c.is_ascii_whitespace() || c == '\x0b');
        let space = after.len() - rest.len();
        if space < min_space {
            continue;
        }
        if !rest.is_empty() {
            return Some(rest);
        }
        // `(.+)` takes the last whitespace character when nothing else is left.
        if space > min_space {
            return Some(&after[space - 1..]);
        }
    }
    None
}

/// A boolean of a validated plugin configuration (`default` where it is absent).
pub(crate) fn conf_bool(c: &Value, k: &str, default: bool) -> bool {
    c.get(k).and_then(Value::as_bool).unwrap_or(default)
}

/// The strings of an array of a validated plugin configuration (none where it is absent).
pub(crate) fn conf_strings(c: &Value, k: &str) -> Vec<String> {
    gantry_model::document::strings(c.get(k))
}

/// base64 as nginx decodes it (`ngx.decode_base64`): the standard alphabet, padding optional.
pub(crate) const NGINX_BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// An auth plugin's `anonymous` consumer (an empty string is none, as in Kong).
pub(crate) fn conf_anonymous(c: &Value) -> Option<String> {
    c.get("anonymous")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// An authentication plugin's answer once its own check failed: with `anonymous` (Kong's
/// "logical OR" between auth plugins) the request goes on as that consumer, id or username;
/// without, `refusal`. An anonymous consumer that does not exist is a 500, never a pass.
pub fn fall_back(
    ctx: &mut Ctx<'_>,
    anonymous: Option<&str>,
    refusal: impl FnOnce() -> Response<ProxyBody>,
) -> Option<Response<ProxyBody>> {
    let Some(a) = anonymous else {
        return Some(refusal());
    };
    match ctx.identities.find(a) {
        Some(anon) => {
            ctx.authenticate(anon, None, true);
            None
        }
        None => Some(error(
            500,
            "An unexpected error occurred: anonymous consumer not found",
        )),
    }
}

/// A Kong-style JSON error response.
pub fn error(status: u16, message: &str) -> Response<ProxyBody> {
    let body = serde_json::json!({ "message": message }).to_string();
    raw(status, "application/json; charset=utf-8", Bytes::from(body))
}

/// A response the proxy answers itself, with a body of the given type.
pub fn raw(status: u16, content_type: &str, body: Bytes) -> Response<ProxyBody> {
    let mut r = Response::new(Full::new(body).map_err(|never| match never {}).boxed());
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(v) = HeaderValue::from_str(content_type) {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r.headers_mut().insert(
        hyper::header::SERVER,
        HeaderValue::from_static(concat!("gantry/", env!("CARGO_PKG_VERSION"))),
    );
    r
}

/// What the certificate phase sees of a TLS handshake.
pub struct CertCtx<'a> {
    /// The server name the client asked for (SNI).
    pub server_name: Option<&'a str>,
    /// The certificate the handshake presents, chosen from the configuration's SNIs: a plugin
    /// may replace it, or take it away to refuse the handshake.
    pub certificate: Option<Arc<rustls::sign::CertifiedKey>>,
}

/// A response body rewritten on its way to the client (the response body phase).
pub trait BodyFilter: Send + Sync {
    /// The next chunk of the body, in order; `last` is set on the final call, which may carry
    /// an empty chunk. Returns what goes to the client now (empty: nothing yet).
    fn filter(&mut self, chunk: Bytes, last: bool) -> Bytes;
    /// Whether this filter gives every chunk back unchanged (it only observes the body, as
    /// proxy-cache's does): when every filter does, the response keeps its `Content-Length`.
    fn keeps_body(&self) -> bool {
        false
    }
}

/// A future a plugin's hook returns when it waits on I/O.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// What a request phase (rewrite, access) decided. A hook that decides at once costs
/// nothing more than a return value; one that waits on I/O (Redis, an HTTP sink, an
/// introspection endpoint) returns [`Flow::Later`], and the request waits for it without
/// blocking anything else.
pub enum Flow<'a> {
    /// Go on with the next plugin.
    Next,
    /// Answer the client with this instead of the upstream's response.
    Respond(Response<ProxyBody>),
    /// Decide once this completes: `None` goes on, `Some` answers.
    Later(BoxFuture<'a, Option<Response<ProxyBody>>>),
}

impl<'a> Flow<'a> {
    /// A decision that waits on `f`.
    pub fn later<F>(f: F) -> Flow<'a>
    where
        F: std::future::Future<Output = Option<Response<ProxyBody>>> + Send + 'a,
    {
        Flow::Later(Box::pin(f))
    }

    /// The decision: the response to answer with, if any.
    pub async fn decided(self) -> Option<Response<ProxyBody>> {
        match self {
            Flow::Next => None,
            Flow::Respond(r) => Some(r),
            Flow::Later(f) => f.await,
        }
    }
}

impl From<Option<Response<ProxyBody>>> for Flow<'_> {
    fn from(r: Option<Response<ProxyBody>>) -> Self {
        match r {
            None => Flow::Next,
            Some(r) => Flow::Respond(r),
        }
    }
}

/// One configured plugin instance. Every hook has a default that does nothing; phases run in
/// this order, each over the plugins by priority.
pub trait Plugin: Send + Sync {
    /// During a TLS handshake, before routing: global plugins only, as no route is known.
    /// Synchronous: it runs inside the TLS library's certificate resolver.
    fn certificate(&self, _ctx: &mut CertCtx<'_>) {}
    /// Before routing, global plugins only (no route is known yet, as in Kong): may rewrite
    /// the request that routing then reads, or answer it.
    fn rewrite<'a>(&'a self, _ctx: &'a mut Ctx<'_>) -> Flow<'a> {
        Flow::Next
    }
    /// Authentication, authorisation, limits: may answer in place of the upstream.
    fn access<'a>(&'a self, _ctx: &'a mut Ctx<'_>) -> Flow<'a> {
        Flow::Next
    }
    /// The most bytes of request body this plugin lets through, when it limits them: the
    /// body streams upstream and is cut (413) once past the least limit of the plugins that
    /// ran access.
    fn body_limit(&self) -> Option<u64> {
        None
    }
    /// Whether this plugin reads the request body ([`Plugin::request_body`]). When one that
    /// runs on a request does, the proxy reads the whole body (up to [`BODY_LIMIT`]) before
    /// any of it goes upstream.
    fn reads_body(&self) -> bool {
        false
    }
    /// After access, for plugins that [read the body](Plugin::reads_body), in priority order:
    /// the whole request body, which the plugin may replace (the upstream gets what the last
    /// one left, with its `Content-Length`); it may also change the request head, or answer.
    fn request_body<'a>(&'a self, _ctx: &'a mut Ctx<'_>, _body: &'a mut Bytes) -> Flow<'a> {
        Flow::Next
    }
    /// The request as it goes upstream, before it is sent: a last edit of its head. The
    /// headers the proxy sets (`Host`, Kong's `X-Forwarded-*`, `X-Real-IP`, `Via`,
    /// `X-Kong-Request-Id`) are not in this map: they are written with it, and replace any of
    /// those names it holds (as nginx's `proxy_set_header` lines replace the client's in Kong).
    fn upstream_request(&self, _req: &mut UpstreamRequest<'_>) {}
    /// A connection to an upstream target failed: whether the proxy may try again (another
    /// target, or the same host, within the service's `retries`). Any plugin that runs on the
    /// request may stop the retries; the client then gets the error of this failure.
    fn upstream_failed(&self, _failure: &UpstreamFailure<'_>) -> Retry {
        Retry::Allow
    }
    /// The response head, from the upstream or from a plugin that answered, before it goes to
    /// the client.
    fn header_filter(&self, _response: &mut hyper::http::response::Parts) {}
    /// [`Plugin::header_filter`], with the per-request state the earlier phases kept.
    fn header_filter_with(
        &self,
        response: &mut hyper::http::response::Parts,
        _state: &mut hyper::http::Extensions,
    ) {
        self.header_filter(response)
    }
    /// After `header_filter`: a filter for this response's body, when the plugin rewrites it.
    fn body_filter(&self, _response: &hyper::http::response::Parts) -> Option<Box<dyn BodyFilter>> {
        None
    }
    /// Once the response body has gone (or the client left): the request as the log phase
    /// sees it. It must not block: work that waits on I/O goes in the returned future, which
    /// the runtime runs on its own (it must own what it needs of the entry).
    fn log(&self, _entry: &crate::server::RequestLog<'_>) -> Option<BoxFuture<'static, ()>> {
        None
    }
    /// Whether [`Plugin::log`] does anything (the proxy keeps what a log entry needs only then).
    fn logs(&self) -> bool {
        false
    }
}

/// The most of a request body the proxy reads for plugins that [read it](Plugin::reads_body):
/// a larger body is answered 413 (a plugin that must see the body is never skipped).
pub const BODY_LIMIT: usize = 8 << 20;

/// The upstream request's head, for [`Plugin::upstream_request`].
pub struct UpstreamRequest<'a> {
    pub method: &'a mut hyper::Method,
    pub uri: &'a mut hyper::Uri,
    pub headers: &'a mut hyper::HeaderMap,
    /// The target it goes to first (`host:port`).
    pub target: &'a str,
    /// The per-request state the earlier phases kept.
    pub state: &'a mut hyper::http::Extensions,
}

/// A failed connection to an upstream target, for [`Plugin::upstream_failed`].
pub struct UpstreamFailure<'a> {
    /// The target (`host:port`).
    pub target: &'a str,
    /// Connections tried for this request so far, this one included.
    pub attempt: usize,
    /// Whether it timed out (`connect_timeout`), rather than being refused or unresolved.
    pub timed_out: bool,
    /// What failed, as logged.
    pub error: &'a (dyn std::error::Error + Send + Sync),
}

/// Whether a failed upstream connection may be tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Within the service's `retries`.
    Allow,
    /// No more tries for this request.
    Stop,
}

/// A response body passed through the body filters of the plugins that ran, in order.
pub struct Filtered {
    inner: ProxyBody,
    filters: Vec<Box<dyn BodyFilter>>,
    /// The upstream body has ended (the filters had their last call).
    done: bool,
    /// Trailers, sent after what the filters gave on their last call.
    trailers: Option<hyper::HeaderMap>,
}

impl Filtered {
    pub fn new(inner: ProxyBody, filters: Vec<Box<dyn BodyFilter>>) -> Filtered {
        Filtered {
            inner,
            filters,
            done: false,
            trailers: None,
        }
    }

    fn run(&mut self, chunk: Bytes, last: bool) -> Bytes {
        self.filters
            .iter_mut()
            .fold(chunk, |chunk, f| f.filter(chunk, last))
    }
}

impl hyper::body::Body for Filtered {
    type Data = Bytes;
    type Error = crate::server::BodyError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, crate::server::BodyError>>> {
        use hyper::body::Frame;
        use std::task::Poll;
        let me = self.get_mut();
        loop {
            if me.done {
                return Poll::Ready(me.trailers.take().map(|t| Ok(Frame::trailers(t))));
            }
            let out = match std::pin::Pin::new(&mut me.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        // The upstream's last chunk is the filters' last call: a response that
                        // keeps its `Content-Length` is not polled past its last byte.
                        let last = me.inner.is_end_stream();
                        me.done = last;
                        me.run(data, last)
                    }
                    Err(frame) => {
                        me.trailers = frame.into_trailers().ok();
                        me.done = true;
                        me.run(Bytes::new(), true)
                    }
                },
                Poll::Ready(None) => {
                    me.done = true;
                    me.run(Bytes::new(), true)
                }
            };
            if !out.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(out))));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.trailers.is_none()
    }
}

/// What the access phase decided: the plugins that ran (for the later phases), and the
/// response one of them answered with, if any.
pub struct Access {
    pub ran: Vec<Arc<dyn Plugin>>,
    pub exit: Option<Response<ProxyBody>>,
}

/// Whether the request is traced with the instrumentation `bit`.
fn traced(ctx: &Ctx<'_>, bit: u8) -> bool {
    ctx.state
        .get::<crate::spans::Trace>()
        .is_some_and(|t| t.has(bit))
}

/// Builds a plugin instance from its id and validated configuration, with the state kept
/// across reloads.
pub type Build =
    fn(at: &Instance, config: &Value, shared: &Shared) -> Result<Arc<dyn Plugin>, CompileError>;

/// The plugin entity a configuration belongs to: its id and scope. When a configuration is
/// only checked (before it is stored), the scope is unknown.
#[derive(Debug, Clone, Copy, Default)]
pub struct Instance<'a> {
    pub id: &'a str,
    pub route: Option<&'a str>,
    pub service: Option<&'a str>,
    pub consumer: Option<&'a str>,
    pub consumer_group: Option<&'a str>,
}

impl<'a> Instance<'a> {
    /// An instance of no scope.
    pub fn new(id: &'a str) -> Instance<'a> {
        Instance {
            id,
            ..Instance::default()
        }
    }
}

/// A plugin: its schema and its builder, in the plugin's own module.
pub struct Descriptor {
    pub schema: LazyLock<PluginSchema>,
    pub build: Build,
    /// The credential entities this plugin authenticates with, indexed for it in
    /// [`Identities`].
    pub credentials: &'static [CredentialKind],
    /// Whether the plugin reads consumers' ACL groups ([`Identities::groups`]).
    pub groups: bool,
}

impl Descriptor {
    /// A plugin's descriptor, for a `static`: its schema is made on first use.
    pub const fn new(schema: fn() -> PluginSchema, build: Build) -> Descriptor {
        Descriptor {
            schema: LazyLock::new(schema),
            build,
            credentials: &[],
            groups: false,
        }
    }

    /// This descriptor, for a plugin that reads consumers' ACL groups.
    pub const fn with_groups(mut self) -> Descriptor {
        self.groups = true;
        self
    }

    /// This descriptor, for a plugin that authenticates with these credentials.
    pub const fn with_credentials(mut self, credentials: &'static [CredentialKind]) -> Descriptor {
        self.credentials = credentials;
        self
    }
}

/// The plugins this build of Gantry ships, each runnable on every node.
pub static BUNDLED: &[&Descriptor] = &[
    &acl::DESCRIPTOR,
    &basic_auth::DESCRIPTOR,
    &correlation_id::DESCRIPTOR,
    &hmac_auth::DESCRIPTOR,
    &ip_restriction::DESCRIPTOR,
    &jwt::DESCRIPTOR,
    &key_auth::DESCRIPTOR,
    &oauth2::DESCRIPTOR,
    &rate_limiting::DESCRIPTOR,
    &request_size_limiting::DESCRIPTOR,
    &request_termination::DESCRIPTOR,
    &request_transformer::DESCRIPTOR,
    &cors::DESCRIPTOR,
    &response_transformer::DESCRIPTOR,
    &response_ratelimiting::DESCRIPTOR,
    &file_log::DESCRIPTOR,
    &http_log::DESCRIPTOR,
    &prometheus::DESCRIPTOR,
    &proxy_cache::DESCRIPTOR,
    &opentelemetry::DESCRIPTOR,
];

/// Why a `plugins` setting cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("plugin '{0}' is not bundled with this node (bundled: {1})")]
    Unknown(String, String),
    #[error("'off' cannot be combined with other values")]
    OffWithOthers,
}

/// The plugins a node runs: Kong's `plugins` setting applied to [`BUNDLED`] (and, in tests,
/// to plugins of their own).
#[derive(Clone)]
pub struct Registry(Arc<[&'static Descriptor]>);

impl Default for Registry {
    fn default() -> Registry {
        Registry::new(BUNDLED.to_vec())
    }
}

impl Registry {
    pub fn new(mut plugins: Vec<&'static Descriptor>) -> Registry {
        plugins.sort_by_key(|d| d.schema.name);
        plugins.dedup_by_key(|d| d.schema.name);
        Registry(plugins.into())
    }

    /// Kong's `plugins` setting: `bundled`, names, both comma-separated, or `off` alone.
    pub fn from_setting(value: &str) -> Result<Registry, RegistryError> {
        let items: Vec<&str> = value
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        if items.contains(&"off") {
            return match items.len() {
                1 => Ok(Registry::new(Vec::new())),
                _ => Err(RegistryError::OffWithOthers),
            };
        }
        let mut chosen = Vec::new();
        for item in items {
            if item == "bundled" {
                chosen.extend_from_slice(BUNDLED);
                continue;
            }
            match BUNDLED.iter().find(|d| d.schema.name == item) {
                Some(d) => chosen.push(*d),
                None => {
                    let names: Vec<&str> = BUNDLED.iter().map(|d| d.schema.name).collect();
                    return Err(RegistryError::Unknown(item.to_string(), names.join(", ")));
                }
            }
        }
        Ok(Registry::new(chosen))
    }

    /// This registry with one more plugin (a plugin defined by a test or an embedding).
    pub fn with(&self, plugin: &'static Descriptor) -> Registry {
        let mut v = self.0.to_vec();
        v.push(plugin);
        Registry::new(v)
    }

    pub fn get(&self, name: &str) -> Option<&'static Descriptor> {
        self.0.iter().copied().find(|d| d.schema.name == name)
    }

    /// The credential kinds the plugins read, each once.
    /// Whether a plugin of the registry reads consumers' ACL groups.
    pub fn reads_groups(&self) -> bool {
        self.0.iter().any(|d| d.groups)
    }

    pub fn credential_kinds(&self) -> Vec<CredentialKind> {
        let mut kinds: Vec<CredentialKind> = self
            .0
            .iter()
            .flat_map(|d| d.credentials.iter().copied())
            .collect();
        kinds.sort_by_key(|k| (k.entity, k.key));
        kinds.dedup_by_key(|k| (k.entity, k.key));
        kinds
    }

    /// The names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.0.iter().map(|d| d.schema.name.to_string()).collect()
    }

    /// What validation reads: each plugin's schema, its configurations compiled by its own
    /// `build` (the instance is dropped at once), and routes and certificates compiled as a
    /// snapshot compiles them.
    pub fn catalog(&self) -> Catalog {
        self.catalog_with(Shared::default())
    }

    /// The catalog of a node whose plugins see `shared` (a node without a database refuses
    /// what needs one).
    pub fn catalog_with(&self, shared: Shared) -> Catalog {
        Catalog::new(
            self.0
                .iter()
                .map(|d| {
                    let build = d.build;
                    let shared = shared.clone();
                    Enabled {
                        schema: &d.schema,
                        compile: Arc::new(move |id: &str, config: &Value| {
                            build(&Instance::new(id), config, &shared).map(drop)
                        }),
                    }
                })
                .collect(),
        )
        .with_entities(Arc::new(crate::snapshot::compile_entity))
    }
}

/// A scope as interned ids: route, service, consumer. [`NONE`] stands for an absent part.
/// `[route, service, consumer, consumer group]`, interned.
type ScopeKey = [u32; 4];

/// One plugin's instances, sorted by scope.
type Instances = Vec<(ScopeKey, Arc<dyn Plugin>)>;

/// No route, service or consumer in a scope.
const NONE: u32 = 0;
/// A route, service or consumer that no plugin names: matches no scope.
const UNSCOPED: u32 = u32::MAX;

/// Every enabled plugin of a configuration, by name and scope, with the run order.
///
/// Ids that scopes name are interned into small numbers when the set is built, so that a
/// request resolves each plugin's configuration with three id lookups in all and a few
/// binary searches over integer keys per plugin.
#[derive(Default)]
pub struct PluginSet {
    /// Names in run order (priority, highest first), and each one's instances sorted by scope.
    order: Vec<(&'static str, Instances)>,
    ids: crate::FastMap<String, u32>,
    /// Whether any instance has a log phase.
    logs: bool,
    /// The global instance of each plugin, by priority.
    globals: Vec<Arc<dyn Plugin>>,
    /// Their names, in the same order (for the spans of their phases).
    global_names: Vec<&'static str>,
    /// Whether any instance is scoped to a consumer group.
    by_group: bool,
}

/// A plugin's configuration with the partials it names in place (Kong's `partials`: each
/// fills the configuration field its type stands for, `redis-ce` rate-limiting's `redis`).
/// A partial that is missing, or of a type the plugin does not take, fails the set.
fn apply_partials(
    d: &mut gantry_model::typed::Plugin,
    e: &Entity,
    descriptor: &Descriptor,
    partials: &HashMap<&str, &Entity>,
) -> Result<(), PluginSetError> {
    let Some(Value::Array(refs)) = e.get("partials") else {
        return Ok(());
    };
    let fail = |reason: String| PluginSetError::Partial {
        name: d.name.clone(),
        id: d.id.clone(),
        reason,
    };
    for r in refs {
        let id = r.get("id").and_then(Value::as_str).unwrap_or_default();
        let Some(p) = partials.get(id) else {
            return Err(fail(format!("partial {id} does not exist")));
        };
        let p = p.doc();
        let kind = p.get("type").and_then(Value::as_str).unwrap_or_default();
        let Some((_, field)) = descriptor.schema.partials.iter().find(|(t, _)| *t == kind) else {
            return Err(fail(format!(
                "partial {id} is of type '{kind}', which plugin {} does not take",
                d.name
            )));
        };
        if let (Some(cfg), Some(pc)) = (d.config.as_object_mut(), p.get("config")) {
            cfg.insert(field.to_string(), pc.clone());
        }
    }
    Ok(())
}

/// Why the plugins of a configuration do not build.
#[derive(Debug, thiserror::Error)]
pub enum PluginSetError {
    #[error("{} (plugin {id})", gantry_model::plugins::not_enabled(name))]
    NotEnabled { name: String, id: String },
    #[error(transparent)]
    Typed(gantry_model::typed::TypedError),
    /// Kong's troubleshooting names this: "invalid configuration partials".
    #[error("invalid configuration partials: plugin {name} ({id}): {reason}")]
    Partial {
        name: String,
        id: String,
        reason: String,
    },
    #[error("plugin {name} ({id}): {source}")]
    Build {
        name: String,
        id: String,
        source: CompileError,
    },
}

impl PluginSet {
    /// The plugin instances of `config`. A plugin outside `registry`, or a configuration its
    /// builder refuses, fails the whole set: the running configuration stays.
    pub fn build(
        config: &Config,
        registry: &Registry,
        shared: &Shared,
    ) -> Result<PluginSet, PluginSetError> {
        let mut set = PluginSet::default();
        let mut by_name: HashMap<&'static str, Instances> = HashMap::new();
        let partials: HashMap<&str, &Entity> = config
            .docs("partials")
            .iter()
            .map(|p| (p.id(), p))
            .collect();
        for e in config.docs("plugins") {
            let mut d = gantry_model::typed::Plugin::try_from(e).map_err(PluginSetError::Typed)?;
            if !d.enabled {
                continue;
            }
            if let Some(descriptor) = registry.get(&d.name) {
                apply_partials(&mut d, e, descriptor, &partials)?;
            }
            let (name, id) = (d.name.as_str(), d.id.as_str());
            let Some(descriptor) = registry.get(name) else {
                return Err(PluginSetError::NotEnabled {
                    name: name.to_string(),
                    id: id.to_string(),
                });
            };
            let reg_name = descriptor.schema.name;
            let at = Instance {
                id,
                route: d.route.as_ref().map(|r| r.id.as_str()),
                service: d.service.as_ref().map(|r| r.id.as_str()),
                consumer: d.consumer.as_ref().map(|r| r.id.as_str()),
                consumer_group: d.consumer_group.as_ref().map(|r| r.id.as_str()),
            };
            let plugin = (descriptor.build)(&at, &d.config, shared).map_err(|source| {
                PluginSetError::Build {
                    name: name.to_string(),
                    id: id.to_string(),
                    source,
                }
            })?;
            let mut intern = |r: &Option<gantry_model::typed::Ref>| match r {
                None => NONE,
                Some(r) => {
                    let next = set.ids.len() as u32 + 1;
                    *set.ids.entry(r.id.clone()).or_insert(next)
                }
            };
            let scope = [
                intern(&d.route),
                intern(&d.service),
                intern(&d.consumer),
                intern(&d.consumer_group),
            ];
            set.by_group |= d.consumer_group.is_some();
            set.logs |= plugin.logs();
            by_name.entry(reg_name).or_default().push((scope, plugin));
        }
        let prio = |n: &str| registry.get(n).map(|d| d.schema.priority).unwrap_or(0);
        let mut order: Vec<_> = by_name.into_iter().collect();
        order.sort_by(|a, b| prio(b.0).cmp(&prio(a.0)).then(a.0.cmp(b.0)));
        for (_, instances) in &mut order {
            // One instance per scope: the store keeps them unique; of duplicates in a
            // hand-written file, the first stays.
            instances.sort_by_key(|(k, _)| *k);
            instances.dedup_by_key(|(k, _)| *k);
        }
        set.order = order;
        (set.global_names, set.globals) = set
            .order
            .iter()
            .filter_map(|(name, instances)| {
                Some((*name, Self::resolve(instances, [NONE; 3], &[]).cloned()?))
            })
            .unzip();
        Ok(set)
    }

    /// The interned id of a route, service or consumer.
    fn key(&self, id: Option<&str>) -> u32 {
        match id {
            None => NONE,
            Some(id) => self.ids.get(id).copied().unwrap_or(UNSCOPED),
        }
    }

    /// The configuration that applies among `instances`, by Kong's precedence: the most
    /// specific scope first, a consumer before its groups, a consumer group before a route
    /// or service alone. `groups` are the consumer's groups that some instance names, in the
    /// order of their names: of two groups' instances at one level, the first group's applies.
    fn resolve<'i>(
        instances: &'i [(ScopeKey, Arc<dyn Plugin>)],
        [r, s, c]: [u32; 3],
        groups: &[u32],
    ) -> Option<&'i Arc<dyn Plugin>> {
        // Which of (route, service, consumer, consumer group) each level names.
        const LEVELS: [[bool; 4]; 12] = [
            [true, true, true, false],
            [true, true, false, true],
            [true, false, true, false],
            [false, true, true, false],
            [true, false, false, true],
            [false, true, false, true],
            [true, true, false, false],
            [false, false, true, false],
            [false, false, false, true],
            [true, false, false, false],
            [false, true, false, false],
            [false, false, false, false],
        ];
        let find = |k: &ScopeKey| {
            instances
                .binary_search_by_key(k, |(key, _)| *key)
                .ok()
                .map(|i| &instances[i].1)
        };
        for [wr, ws, wc, wg] in LEVELS {
            // A level naming what the request has not (no service, no consumer) is not one.
            let pick = |want: bool, have: u32| match (want, have) {
                (false, _) => Some(NONE),
                (true, NONE | UNSCOPED) => None,
                (true, k) => Some(k),
            };
            let (Some(r), Some(s), Some(c)) = (pick(wr, r), pick(ws, s), pick(wc, c)) else {
                continue;
            };
            let found = if wg {
                groups.iter().find_map(|g| find(&[r, s, c, *g]))
            } else {
                find(&[r, s, c, NONE])
            };
            if found.is_some() {
                return found;
            }
        }
        None
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// A set of global instances, in the given order (tests of the phases).
    #[cfg(test)]
    pub(crate) fn global(plugins: Vec<(&'static str, Arc<dyn Plugin>)>) -> PluginSet {
        PluginSet {
            logs: plugins.iter().any(|(_, p)| p.logs()),
            globals: plugins.iter().map(|(_, p)| p.clone()).collect(),
            global_names: plugins.iter().map(|(n, _)| *n).collect(),
            order: plugins
                .into_iter()
                .map(|(name, p)| (name, vec![([NONE; 4], p)]))
                .collect(),
            ..PluginSet::default()
        }
    }

    /// Whether an enabled instance of the plugin `name` is in the set.
    pub fn has(&self, name: &str) -> bool {
        self.order.iter().any(|(n, _)| *n == name)
    }

    /// Whether any plugin has a log phase.
    pub fn logs(&self) -> bool {
        self.logs
    }

    /// The global instance of each plugin, by priority: what runs when no route is known (the
    /// certificate phase, and the response and log phases of a request answered before its
    /// plugins ran: no route matched, a bad request, a redirect).
    pub fn globals(&self) -> Vec<Arc<dyn Plugin>> {
        self.globals.clone()
    }

    /// The names of [`PluginSet::globals`], in their order.
    pub fn global_names(&self) -> &[&'static str] {
        &self.global_names
    }

    /// The certificate phase.
    pub fn run_certificate(&self, ctx: &mut CertCtx<'_>) {
        for p in &self.globals {
            p.certificate(ctx);
        }
    }

    /// The rewrite phase, before routing: the global plugins in order, until one answers.
    pub async fn run_rewrite(&self, ctx: &mut Ctx<'_>) -> Option<Response<ProxyBody>> {
        let traced = traced(ctx, crate::spans::PLUGIN_REWRITE);
        for (p, name) in self.globals.iter().zip(&self.global_names) {
            let t0 = traced.then(std::time::Instant::now);
            let r = p.rewrite(ctx).decided().await;
            if let (Some(t0), Some(t)) = (t0, ctx.state.get_mut::<crate::spans::Trace>()) {
                t.phase(crate::spans::PLUGIN_REWRITE, "rewrite", name, t0);
            }
            if r.is_some() {
                return r;
            }
        }
        None
    }

    /// Run the access phase in order, until a plugin answers. Every plugin that applies to
    /// the request runs the response and log phases, as in Kong: those after the one that
    /// answered too (a log plugin records requests an authentication plugin refused).
    pub async fn run_access(&self, ctx: &mut Ctx<'_>) -> Access {
        let mut ran = Vec::new();
        let mut exit = None;
        let route = self.key(ctx.route_id);
        let service = self.key(ctx.service_id);
        // The consumer changes when an authentication plugin identifies one.
        let mut consumer: Option<(Arc<Consumer>, u32)> = None;
        let mut groups: Vec<u32> = Vec::new();
        let traced = traced(ctx, crate::spans::PLUGIN_ACCESS);
        let traced_any = ctx.state.get::<crate::spans::Trace>().is_some();
        let mut names = Vec::new();
        for (name, instances) in &self.order {
            let c = match (&ctx.consumer, &consumer) {
                (None, _) => {
                    groups.clear();
                    NONE
                }
                (Some(now), Some((seen, k))) if Arc::ptr_eq(now, seen) => *k,
                (Some(now), _) => {
                    let k = self.key(Some(&now.id));
                    consumer = Some((now.clone(), k));
                    groups.clear();
                    if self.by_group {
                        groups.extend(
                            ctx.identities
                                .consumer_groups(&now.id)
                                .iter()
                                .map(|g| self.key(Some(&g.id)))
                                .filter(|k| *k != UNSCOPED),
                        );
                    }
                    k
                }
            };
            let Some(p) = Self::resolve(instances, [route, service, c], &groups) else {
                continue;
            };
            ran.push(p.clone());
            if traced_any {
                names.push(*name);
            }
            if exit.is_none() {
                let t0 = traced.then(std::time::Instant::now);
                exit = p.access(ctx).decided().await;
                if let (Some(t0), Some(t)) = (t0, ctx.state.get_mut::<crate::spans::Trace>()) {
                    t.phase(crate::spans::PLUGIN_ACCESS, "access", name, t0);
                }
            }
        }
        if let Some(t) = ctx.state.get_mut::<crate::spans::Trace>() {
            t.ran = names;
        }
        Access { ran, exit }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_model::Doc;
    use serde_json::json;

    fn doc(v: Value) -> Doc {
        v.as_object().cloned().unwrap_or_default()
    }

    /// request-termination at `status`, scoped by `(route, service, consumer, group)`.
    fn terminate(status: u16, scope: [Option<&str>; 4]) -> Doc {
        let mut d = doc(json!({
            "id": format!("p{status}"), "name": "request-termination",
            "config": { "status_code": status },
        }));
        for (k, id) in ["route", "service", "consumer", "consumer_group"]
            .iter()
            .zip(scope)
        {
            if let Some(id) = id {
                d.insert(k.to_string(), json!({ "id": id }));
            }
        }
        d
    }

    /// The status the chosen configuration answers with, for a request on route `r1` of
    /// `service`, as `consumer`. Consumer `c1` is in groups `g1` ("gold") and `g2`
    /// ("bronze").
    fn chosen_on(plugins: Vec<Doc>, service: Option<&str>, consumer: Option<&str>) -> Option<u16> {
        let mut config = Config::default();
        config.entities.insert(
            "plugins".into(),
            plugins.into_iter().map(Entity::from).collect(),
        );
        config.entities.insert(
            CONSUMER_GROUPS.into(),
            vec![
                Entity::from(doc(json!({"id": "g1", "name": "gold"}))),
                Entity::from(doc(json!({"id": "g2", "name": "bronze"}))),
            ],
        );
        config.entities.insert(
            "consumers".into(),
            vec![Entity::from(doc(json!({"id": "c1", "username": "c1"})))],
        );
        let member = |id: &str, g: &str| {
            Entity::from(doc(json!({
                "id": id, "consumer": {"id": "c1"}, "consumer_group": {"id": g}
            })))
        };
        config.entities.insert(
            CONSUMER_GROUP_CONSUMERS.into(),
            vec![member("m1", "g1"), member("m2", "g2")],
        );
        let set =
            PluginSet::build(&config, &Registry::default(), &Shared::default()).expect("builds");
        let mut parts = hyper::Request::new(()).into_parts().0;
        let identities = Identities::build(&config, &Registry::default());
        let mut state = hyper::http::Extensions::new();
        let mut slot = BodySlot::empty();
        let mut ctx = Ctx {
            req: &mut parts,
            body: &mut slot,
            https: false,
            trusted: false,
            config_version: 0,
            client_ip: IpAddr::from([127, 0, 0, 1]),
            peer_ip: IpAddr::from([127, 0, 0, 1]),
            connection: Connection::default(),
            route_id: Some("r1"),
            service_id: service,
            consumer: consumer.map(|c| Arc::new(Consumer::new(c.into(), None, None))),
            credential: None,
            identities: &identities,
            captures: &[],
            response_headers: Vec::new(),
            state: &mut state,
        };
        let access = set.run_access(&mut ctx);
        let access = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime")
            .block_on(access);
        access.exit.map(|r| r.status().as_u16())
    }

    fn chosen(plugins: Vec<Doc>, consumer: Option<&str>) -> Option<u16> {
        chosen_on(plugins, Some("s1"), consumer)
    }

    #[test]
    fn kong_precedence() {
        let (r, s, c, g) = (Some("r1"), Some("s1"), Some("c1"), Some("g2"));
        let all = || {
            vec![
                terminate(401, [None, None, None, None]),
                terminate(402, [None, s, None, None]),
                terminate(403, [r, None, None, None]),
                terminate(404, [None, None, None, g]),
                terminate(405, [None, None, c, None]),
                terminate(406, [r, s, None, None]),
                terminate(407, [None, s, None, g]),
                terminate(408, [r, None, None, g]),
                terminate(409, [None, s, c, None]),
                terminate(410, [r, None, c, None]),
                terminate(411, [r, s, None, g]),
                terminate(412, [r, s, c, None]),
                // Scopes of other entities never apply.
                terminate(413, [Some("r2"), None, None, None]),
                terminate(414, [None, Some("s2"), c, None]),
                terminate(415, [None, None, None, Some("g9")]),
            ]
        };
        // Most specific first, dropping one each time: Kong's order.
        let order = [412, 411, 410, 409, 408, 407, 406, 405, 404, 403, 402, 401];
        for (i, want) in order.iter().enumerate() {
            let plugins: Vec<Doc> = all()
                .into_iter()
                .filter(|d| {
                    let s = d["config"]["status_code"].as_u64().unwrap() as u16;
                    !order[..i].contains(&s)
                })
                .collect();
            assert_eq!(chosen(plugins, c), Some(*want), "step {i}");
        }
        // Without a consumer, consumer and group scopes are skipped.
        assert_eq!(chosen(all(), None), Some(406));
        // Another consumer: no scope of c1 or its groups applies.
        assert_eq!(chosen(all(), Some("c9")), Some(406));
        // Only other entities' scopes: nothing runs.
        let others = vec![terminate(413, [Some("r2"), None, None, None])];
        assert_eq!(chosen(others, c), None);
        // A route without a service: a group on the route still comes before the
        // consumer alone.
        let plugins = vec![
            terminate(405, [None, None, c, None]),
            terminate(408, [r, None, None, g]),
        ];
        assert_eq!(chosen_on(plugins, None, c), Some(408));
    }

    /// Of a consumer's groups, the first by name wins at one level.
    #[test]
    fn groups_in_the_order_of_their_names() {
        let gold = terminate(420, [None, None, None, Some("g1")]);
        let bronze = terminate(421, [None, None, None, Some("g2")]);
        assert_eq!(chosen(vec![gold.clone(), bronze], Some("c1")), Some(421));
        assert_eq!(chosen(vec![gold], Some("c1")), Some(420));
    }

    /// A plugin naming a partial that is missing, or of a type it does not take, fails the set
    /// with the message Kong's troubleshooting names.
    #[test]
    fn missing_or_mistyped_partials_fail_the_set() {
        let plugin = |partial: &str| {
            Entity::from(doc(json!({
                "id": "p1", "name": "rate-limiting", "partials": [{"id": partial}],
                "config": {"minute": 1, "policy": "redis"},
            })))
        };
        let partial = Entity::from(doc(json!({
            "id": "x1", "name": "other", "type": "redis-ee", "config": {"host": "h"},
        })));
        for (p, says) in [
            ("gone", "partial gone does not exist"),
            ("x1", "of type 'redis-ee'"),
        ] {
            let mut config = Config::default();
            config.entities.insert("plugins".into(), vec![plugin(p)]);
            config
                .entities
                .insert("partials".into(), vec![partial.clone()]);
            let e = PluginSet::build(&config, &Registry::default(), &Shared::default())
                .err()
                .expect("refused")
                .to_string();
            assert!(e.starts_with("invalid configuration partials"), "{e}");
            assert!(e.contains(says), "{e}");
        }
    }

    /// A configuration naming a plugin outside the registry does not build: the running
    /// configuration stays, and no route runs without the plugin.
    #[test]
    fn a_plugin_outside_the_registry_fails_the_set() {
        let mut config = Config::default();
        config.entities.insert(
            "plugins".into(),
            vec![Entity::from(terminate(403, [None, None, None, None]))],
        );
        let counters = Shared::default();
        let only_cors = Registry::from_setting("cors").expect("a registry");
        let e = PluginSet::build(&config, &only_cors, &counters)
            .err()
            .expect("refused")
            .to_string();
        assert!(
            e.contains("plugin 'request-termination' not enabled; add it to the 'plugins' configuration property"),
            "{e}"
        );
        assert!(PluginSet::build(&config, &Registry::default(), &counters).is_ok());
        // Disabled instances are not run, so they need no runtime.
        let mut off = terminate(403, [None, None, None, None]);
        off.insert("enabled".into(), json!(false));
        config.entities.get_mut("plugins").unwrap()[0] = off.into();
        assert!(PluginSet::build(&config, &only_cors, &counters).is_ok());
    }

    #[test]
    fn schemes_found_as_kongs_regexes_find_them() {
        assert_eq!(after_scheme("Bearer abc", "Bearer", 1), Some("abc"));
        assert_eq!(
            after_scheme("  bearer \t abc.d", "Bearer", 1),
            Some("abc.d")
        );
        assert_eq!(after_scheme("Bearerabc", "Bearer", 1), None);
        assert_eq!(after_scheme("Bearer", "Bearer", 1), None);
        assert_eq!(after_scheme("Bearer  ", "Bearer", 1), Some(" "));
        assert_eq!(
            after_scheme("xBearer y Bearer z", "Bearer", 1),
            Some("y Bearer z")
        );
        assert_eq!(after_scheme("Basicabc", "Basic", 0), Some("abc"));
        assert_eq!(after_scheme("Basic", "Basic", 0), None);
        assert_eq!(
            after_scheme("Token Basic dXNlcjpw", "Basic", 0),
            Some("dXNlcjpw")
        );
        assert_eq!(after_scheme("Digest x", "Basic", 0), None);
    }

    #[test]
    fn the_plugins_setting() {
        let names = |v: &str| Registry::from_setting(v).map(|r| r.names());
        assert_eq!(names("off"), Ok(vec![]));
        assert_eq!(
            names(" cors ,key-auth"),
            Ok(vec!["cors".into(), "key-auth".into()])
        );
        assert_eq!(names("bundled, cors").unwrap().len(), BUNDLED.len());
        assert_eq!(names("off, cors"), Err(RegistryError::OffWithOthers));
        assert!(
            matches!(names("graphql-proxy-cache-advanced"), Err(RegistryError::Unknown(n, _)) if n == "graphql-proxy-cache-advanced")
        );
    }

    /// Credentials are indexed for the plugins of the registry that read them, and only
    /// those of known consumers.
    #[test]
    fn the_credential_index_serves_the_registry() {
        let mut config = Config::default();
        config.entities.insert(
            "consumers".into(),
            vec![Entity::from(doc(json!({"id": "c1", "username": "alice"})))],
        );
        config.entities.insert(
            "keyauth_credentials".into(),
            vec![
                Entity::from(doc(
                    json!({"id": "k1", "key": "alice-key", "consumer": {"id": "c1"}}),
                )),
                Entity::from(doc(
                    json!({"id": "k2", "key": "orphan", "consumer": {"id": "c9"}}),
                )),
            ],
        );
        let kind = key_auth::DESCRIPTOR.credentials[0];
        let ids = Identities::build(&config, &Registry::default());
        let c = ids.credential(&kind, "alice-key").expect("indexed");
        assert_eq!(
            (c.credential.id.as_str(), c.consumer.username.as_deref()),
            ("k1", Some("alice"))
        );
        assert_eq!(c.credential.entity.doc()["key"], "alice-key");
        assert!(ids.credential(&kind, "orphan").is_none());
        let without = Identities::build(&config, &Registry::from_setting("cors").unwrap());
        assert!(without.credential(&kind, "alice-key").is_none());
        assert!(without.find("alice").is_some());
    }

    /// A patched index answers as one built from the whole configuration would.
    #[test]
    fn the_credential_index_is_patched_by_changes() {
        let d = |v: Value| Entity::from(doc(v));
        let mut config = Config::default();
        let first = [
            Change::Upsert {
                entity: "consumers".into(),
                doc: d(json!({"id": "c1", "username": "alice"})),
            },
            Change::Upsert {
                entity: "keyauth_credentials".into(),
                doc: d(json!({"id": "k1", "key": "one", "consumer": {"id": "c1"}})),
            },
        ];
        config.apply(&first).unwrap();
        let reg = Registry::default();
        let kind = key_auth::DESCRIPTOR.credentials[0];
        let base = Identities::build(&config, &reg);
        let changes = [
            // alice is renamed, her key replaced; bob arrives with a key; then bob leaves.
            Change::Upsert {
                entity: "consumers".into(),
                doc: d(json!({"id": "c1", "username": "alicia"})),
            },
            Change::Upsert {
                entity: "keyauth_credentials".into(),
                doc: d(json!({"id": "k1", "key": "two", "consumer": {"id": "c1"}})),
            },
            Change::Upsert {
                entity: "consumers".into(),
                doc: d(json!({"id": "c2", "username": "bob"})),
            },
            Change::Upsert {
                entity: "keyauth_credentials".into(),
                doc: d(json!({"id": "k2", "key": "bobs", "consumer": {"id": "c2"}})),
            },
            Change::Delete {
                entity: "consumers".into(),
                id: "c2".into(),
            },
        ];
        config.apply(&changes).unwrap();
        let patched = base.patch(&changes, &reg);
        let whole = Identities::build(&config, &reg);
        for ids in [&patched, &whole] {
            assert!(ids.credential(&kind, "one").is_none());
            let c = ids.credential(&kind, "two").expect("the new key");
            assert_eq!(c.consumer.username.as_deref(), Some("alicia"));
            assert!(
                ids.credential(&kind, "bobs").is_none(),
                "its consumer is gone"
            );
            assert!(ids.find("alice").is_none());
            assert_eq!(
                ids.find("alicia").map(|c| c.id.clone()).as_deref(),
                Some("c1")
            );
            assert!(ids.find("bob").is_none());
            assert_eq!(ids.consumers(), 1);
        }
        // The index patched is a new value: the old one is unchanged.
        assert!(base.credential(&kind, "one").is_some());
    }

    /// State handed to builds is one value per type, the same for every later configuration.
    #[test]
    fn shared_state_outlives_builds() {
        let shared = Shared::default();
        let a = shared.get::<Counters>();
        assert!(Arc::ptr_eq(&a, &shared.get::<Counters>()));
        assert!(Arc::ptr_eq(&a, &shared.clone().get::<Counters>()));
        let n = shared.get::<std::sync::atomic::AtomicU64>();
        n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(
            shared
                .get::<std::sync::atomic::AtomicU64>()
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        assert!(!Arc::ptr_eq(&a, &Shared::default().get::<Counters>()));
    }
}
