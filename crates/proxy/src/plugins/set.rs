//! The plugins a node runs and how a request finds them: the bundled descriptors, the
//! [`Registry`] Kong's `plugins` setting chooses, and the [`PluginSet`] of a configuration (every
//! enabled instance by name and scope, in run order), which runs the rewrite and access phases.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use gantry_model::plugins::{Catalog, CompileError, Enabled, PluginSchema};
use gantry_model::{Config, Entity};
use hyper::Response;
use serde_json::Value;

use super::{CertCtx, Consumer, CredentialKind, Ctx, Plugin, Shared, BUNDLED};
use crate::server::ProxyBody;

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

/// The plugin runtime's tests: sets and Kong's scoping, identities and their patches, and the
/// helpers plugins share.
#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use gantry_model::delta::Change;
    use gantry_model::Doc;
    use serde_json::json;

    use super::*;
    use crate::plugins::{
        after_scheme, BodySlot, Connection, Counters, Identities, CONSUMER_GROUPS,
        CONSUMER_GROUP_CONSUMERS,
    };

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
        let kind = crate::plugins::key_auth::DESCRIPTOR.credentials[0];
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
        let kind = crate::plugins::key_auth::DESCRIPTOR.credentials[0];
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
