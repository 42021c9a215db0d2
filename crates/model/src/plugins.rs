//! Plugins as the model sees them: a plugin's configuration schema ([`PluginSchema`]) and the
//! set of plugins a node enables ([`Catalog`]).
//!
//! Each schema lives beside its plugin's runtime (`gantry_proxy::plugins`), in one descriptor;
//! the node's `plugins` setting chooses the descriptors that make the catalog. Validation
//! (Admin API, declarative files, `POST /config`) reads the catalog, so a plugin that a node
//! does not run is refused before it is stored, and a configuration is compiled by the same
//! code that will run it.

use std::sync::Arc;

use serde_json::{json, Map, Value};

use crate::compat::Version;
use crate::schema::*;

/// Partial types that plugins can reference (shared config fragments).
pub const PARTIAL_TYPES: &[&str] = &["redis-ce", "redis-ee"];

/// Checks across the fields of a validated configuration.
pub type Checks = fn(&Map<String, Value>, &mut FieldErrors);

pub struct PluginSchema {
    pub name: &'static str,
    pub version: &'static str,
    /// Kong's execution priority: higher runs first.
    pub priority: i32,
    pub config: Vec<Field>,
    pub no_consumer: bool,
    /// Never scoped to a consumer group (Kong Enterprise's `typedefs.no_consumer_group`):
    /// authentication plugins, and those that log or count every request.
    pub no_consumer_group: bool,
    pub no_route: bool,
    pub no_service: bool,
    /// `(partial type, config field it fills)`.
    pub partials: &'static [(&'static str, &'static str)],
    pub checks: Checks,
    /// Configuration fields added after the first release of the cluster protocol, each with
    /// the version that added it (dotted under `config.`): an older data plane is sent the
    /// configuration without them (`compat`).
    pub since: &'static [(&'static str, Version)],
    /// The plugin's `protocols` default, when it is not Kong's HTTP set (ip-restriction also
    /// guards stream routes).
    pub protocols: &'static [&'static str],
    /// Whether the plugin takes any protocol (Kong's `typedefs.protocols`); most take the HTTP
    /// ones alone (`typedefs.protocols_http`).
    pub any_protocol: bool,
    /// Kong's deprecated shorthand fields: `(name, path of the field it stands for)`. Accepted
    /// on writes and moved to their field; returned on every read, mirrored from it.
    pub shorthands: &'static [(&'static str, &'static [&'static str])],
    /// Shorthand fields accepted on writes and moved to their field, but not returned on
    /// reads (Kong's shorthands without `translate_backwards`).
    pub hidden_shorthands: &'static [(&'static str, &'static [&'static str])],
}

/// The `protocols` default of most plugins (Kong's `typedefs.protocols_http`).
pub const HTTP_PROTOCOLS: &[&str] = &["grpc", "grpcs", "http", "https"];

impl PluginSchema {
    pub fn new(name: &'static str, priority: i32, config: Vec<Field>) -> PluginSchema {
        PluginSchema {
            name,
            version: crate::GANTRY_VERSION,
            priority,
            config,
            no_consumer: false,
            no_consumer_group: false,
            no_route: false,
            no_service: false,
            partials: &[],
            checks: |_, _| {},
            since: &[],
            protocols: HTTP_PROTOCOLS,
            any_protocol: false,
            shorthands: &[],
            hidden_shorthands: &[],
        }
    }
    /// Deprecated shorthand fields (see [`PluginSchema::shorthands`]).
    pub fn shorthands(mut self, s: &'static [(&'static str, &'static [&'static str])]) -> Self {
        self.shorthands = s;
        self
    }
    /// Shorthand fields that are accepted but not returned (see
    /// [`PluginSchema::hidden_shorthands`]).
    pub fn hidden_shorthands(
        mut self,
        s: &'static [(&'static str, &'static [&'static str])],
    ) -> Self {
        self.hidden_shorthands = s;
        self
    }
    /// Move the shorthand fields of a configuration to the fields they stand for, as Kong
    /// 3.9 does: each is checked as its field's type, and one given beside its field with
    /// another value is refused. Errors are keyed by the shorthand's name, and a shorthand in
    /// error stays where it was.
    pub fn expand_shorthands(&self, config: &mut Map<String, Value>, errs: &mut FieldErrors) {
        for (name, path) in self.shorthands.iter().chain(self.hidden_shorthands) {
            let Some(v) = config.get(*name).cloned() else {
                continue;
            };
            if v.is_null() {
                config.remove(*name);
                continue;
            }
            let Some(ty) = field_at(&self.config, path) else {
                continue;
            };
            let v = match check(ty, v) {
                Ok(v) => v,
                Err(e) => {
                    errs.0.insert(name.to_string(), e);
                    continue;
                }
            };
            match value_at(config, path).filter(|c| !c.is_null()) {
                Some(cur) if *cur != v => errs.add(
                    name,
                    format!(
                        "both deprecated and new field are used but their values mismatch: {name} = {} vs {} = {}",
                        shown(&v),
                        path.join("."),
                        shown(cur)
                    ),
                ),
                Some(_) => {
                    config.remove(*name);
                }
                None => {
                    config.remove(*name);
                    set_at(config, path, v);
                }
            }
        }
    }
    /// Add the shorthand fields to a stored configuration, each mirroring its field (null when
    /// that is unset), as Kong 3.9 returns them on reads.
    pub fn mirror_shorthands(&self, config: &mut Map<String, Value>) {
        for (name, path) in self.shorthands {
            let v = value_at(config, path).cloned().unwrap_or(Value::Null);
            config.insert(name.to_string(), v);
        }
    }
    /// A plugin that takes any protocol, stream ones included.
    pub fn any_protocol(mut self) -> PluginSchema {
        self.any_protocol = true;
        self
    }
    /// The protocols the plugin may be configured for.
    pub fn allowed_protocols(&self) -> &'static [&'static str] {
        if self.any_protocol {
            crate::entities::SERVICE_PROTOCOLS
        } else {
            HTTP_PROTOCOLS
        }
    }
    /// A `protocols` default other than [`HTTP_PROTOCOLS`].
    pub fn protocols(mut self, p: &'static [&'static str]) -> PluginSchema {
        self.protocols = p;
        self
    }
    /// A plugin never scoped to a consumer or a consumer group: authentication plugins, cors.
    pub fn auth(mut self) -> PluginSchema {
        self.no_consumer = true;
        self.no_consumer_group = true;
        self
    }
    /// A plugin that is never scoped to a consumer group.
    pub fn no_consumer_group(mut self) -> PluginSchema {
        self.no_consumer_group = true;
        self
    }
    pub fn checks(mut self, f: Checks) -> PluginSchema {
        self.checks = f;
        self
    }
    pub fn since(mut self, fields: &'static [(&'static str, Version)]) -> PluginSchema {
        self.since = fields;
        self
    }
    pub fn partials(mut self, p: &'static [(&'static str, &'static str)]) -> PluginSchema {
        self.partials = p;
        self
    }
    /// Kong's `/schemas/plugins/{name}` body.
    pub fn describe(&self) -> Value {
        let mut fields = vec![
            json!({"protocols": {"type": "set", "elements": {"type": "string", "one_of": self.allowed_protocols()}, "default": self.protocols, "required": true}}),
            json!({"config": {"type": "record", "required": true, "fields": describe(&self.config)}}),
        ];
        if self.no_consumer {
            fields.push(
                json!({"consumer": {"type": "foreign", "reference": "consumers", "eq": null}}),
            );
        }
        json!({ "fields": fields, "priority": self.priority, "version": self.version })
    }
}

/// The type of the field at `path` in a field list.
fn field_at<'f>(fields: &'f [Field], path: &[&str]) -> Option<&'f Ty> {
    let (first, rest) = path.split_first()?;
    let f = fields.iter().find(|f| f.name == *first)?;
    match (&f.ty, rest.is_empty()) {
        (ty, true) => Some(ty),
        (Ty::Record(sub), false) => field_at(sub, rest),
        _ => None,
    }
}

fn value_at<'v>(m: &'v Map<String, Value>, path: &[&str]) -> Option<&'v Value> {
    let (first, rest) = path.split_first()?;
    let v = m.get(*first)?;
    if rest.is_empty() {
        return Some(v);
    }
    value_at(v.as_object()?, rest)
}

fn set_at(m: &mut Map<String, Value>, path: &[&str], v: Value) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    if rest.is_empty() {
        m.insert(first.to_string(), v);
        return;
    }
    let slot = m
        .entry(first.to_string())
        .or_insert_with(|| Value::Object(Map::new()));
    if !slot.is_object() {
        *slot = Value::Object(Map::new());
    }
    if let Value::Object(sub) = slot {
        set_at(sub, rest, v);
    }
}

/// A value as Kong's messages print it: strings bare.
fn shown(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        v => v.to_string(),
    }
}

/// Kong 3.9's deprecated `config.redis_*` fields of rate-limiting and response-ratelimiting.
pub const REDIS_SHORTHANDS: &[(&str, &[&str])] = &[
    ("redis_host", &["redis", "host"]),
    ("redis_port", &["redis", "port"]),
    ("redis_password", &["redis", "password"]),
    ("redis_username", &["redis", "username"]),
    ("redis_ssl", &["redis", "ssl"]),
    ("redis_ssl_verify", &["redis", "ssl_verify"]),
    ("redis_server_name", &["redis", "server_name"]),
    ("redis_timeout", &["redis", "timeout"]),
    ("redis_database", &["redis", "database"]),
];

/// Why a node cannot run what a schema accepted: a plugin configuration, a route, a certificate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", field.as_deref().map(|f| format!("{f}: ")).unwrap_or_default())]
pub struct CompileError {
    /// The field at fault, when one is (for a plugin: dotted under `config`).
    pub field: Option<String>,
    pub message: String,
}

impl CompileError {
    pub fn field(field: &str, message: impl Into<String>) -> CompileError {
        CompileError {
            field: Some(field.to_string()),
            message: message.into(),
        }
    }
    pub fn whole(message: impl Into<String>) -> CompileError {
        CompileError {
            field: None,
            message: message.into(),
        }
    }
    /// Add this error to a configuration's errors: under its field, or as the record's.
    pub fn record(self, errors: &mut FieldErrors) {
        match self.field {
            Some(f) => errors.add(&f, self.message),
            None => errors.add_entity(self.message),
        }
    }
}

impl From<String> for CompileError {
    fn from(message: String) -> CompileError {
        CompileError::whole(message)
    }
}

impl From<&str> for CompileError {
    fn from(message: &str) -> CompileError {
        CompileError::whole(message)
    }
}

/// Compiles a configuration its schema accepted exactly as the runtime will, without running
/// it: `(plugin id, config)`.
pub type Compile = Arc<dyn Fn(&str, &Value) -> Result<(), CompileError> + Send + Sync>;

/// One plugin a node runs: its schema and the compiler of its configurations.
#[derive(Clone)]
pub struct Enabled {
    pub schema: &'static PluginSchema,
    pub compile: Compile,
}

/// Compiles an entity as a node will run it (a route's matchers, a certificate's key pair):
/// `(entity type, document)`. What does not compile is refused before it is stored.
pub type EntityCompile = Arc<dyn Fn(&str, &crate::Doc) -> Result<(), CompileError> + Send + Sync>;

/// What a node runs, as validation needs it: the plugins (Kong's `plugins` setting applied),
/// by name, and the compiler of the other entities.
#[derive(Clone, Default)]
pub struct Catalog {
    plugins: Arc<[Enabled]>,
    entities: Option<EntityCompile>,
}

impl Catalog {
    pub fn new(mut plugins: Vec<Enabled>) -> Catalog {
        plugins.sort_by_key(|p| p.schema.name);
        plugins.dedup_by_key(|p| p.schema.name);
        Catalog {
            plugins: plugins.into(),
            entities: None,
        }
    }

    /// This catalog, with entities compiled by `f`.
    pub fn with_entities(mut self, f: EntityCompile) -> Catalog {
        self.entities = Some(f);
        self
    }

    /// Compile an entity as the node will (no compiler: nothing to compile).
    pub fn compile_entity(&self, entity: &str, doc: &crate::Doc) -> Result<(), CompileError> {
        match &self.entities {
            Some(f) => f(entity, doc),
            None => Ok(()),
        }
    }

    pub fn get(&self, name: &str) -> Option<&Enabled> {
        self.plugins
            .binary_search_by_key(&name, |p| p.schema.name)
            .ok()
            .map(|i| &self.plugins[i])
    }

    pub fn schema(&self, name: &str) -> Option<&'static PluginSchema> {
        self.get(name).map(|p| p.schema)
    }

    /// The schemas, by name.
    pub fn schemas(&self) -> impl Iterator<Item = &'static PluginSchema> + '_ {
        self.plugins.iter().map(|p| p.schema)
    }
}

/// Kong's message for a plugin that the node does not enable.
pub fn not_enabled(name: &str) -> String {
    format!("plugin '{name}' not enabled; add it to the 'plugins' configuration property")
}

/// An array of strings.
pub fn s_arr() -> Ty {
    array(string())
}

/// The Redis connection record shared by rate-limiting and the `redis-*` partials.
pub fn redis() -> Ty {
    record(vec![
        Field::new("host", str_of(StrKind::Host)),
        Field::new("port", int(0, 65535)).def(json!(6379)),
        Field::new("timeout", int(0, 2_147_483_646)).def(json!(2000)),
        Field::new("username", string()),
        Field::new("password", string()).secret(),
        Field::new("database", int(0, 2_147_483_646)).def(json!(0)),
        Field::new("ssl", boolean()).def(json!(false)),
        Field::new("ssl_verify", boolean()).def(json!(false)),
        Field::new("server_name", str_of(StrKind::Host)),
    ])
}

/// The `anonymous` field of authentication plugins: a consumer id or username.
pub fn anonymous() -> Field {
    Field::new("anonymous", string())
}

/// A record of string arrays, each defaulting to empty (the transformer plugins' groups).
pub fn transform_group(fields: &[&'static str]) -> Ty {
    record(
        fields
            .iter()
            .map(|f| Field::new(f, s_arr()).def(json!([])))
            .collect(),
    )
}

/// Whether a configuration field holds something: not absent, null, or empty.
pub fn set_nonempty(c: &Map<String, Value>, k: &str) -> bool {
    match c.get(k) {
        None | Some(Value::Null) => false,
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::String(s)) => !s.is_empty(),
        Some(_) => true,
    }
}

/// Kong's `custom_fields_by_lua` (log plugins): Lua Gantry does not run, so a map that is not
/// empty is refused, naming the field.
pub fn refuse_lua_fields(c: &Map<String, Value>, e: &mut FieldErrors) {
    if c.get("custom_fields_by_lua")
        .and_then(Value::as_object)
        .is_some_and(|m| !m.is_empty())
    {
        e.add(
            "custom_fields_by_lua",
            "Lua code is not run by Gantry: leave this field empty",
        );
    }
}

/// The config schema of a partial type.
pub fn partial_config(kind: &str) -> Option<Vec<Field>> {
    match kind {
        "redis-ce" | "redis-ee" => match redis() {
            Ty::Record(f) => Some(f),
            _ => None,
        },
        _ => None,
    }
}

/// A plugin configuration with its partials in the fields they fill (`partials` maps a
/// partial's id to its `(type, config)`), for it to be validated as it will run; returns the
/// plugin's own values of those fields (its defaults where it gave none) to put back after.
/// `Err` names a partial that is missing or of a type the plugin does not take.
pub fn fill_partials(
    plugin: &PluginSchema,
    config: &mut Map<String, Value>,
    refs: &[String],
    partials: &dyn Fn(&str) -> Option<(String, Value)>,
) -> Result<Vec<(String, Value)>, String> {
    let mut kept = Vec::new();
    for id in refs {
        let Some((kind, pconfig)) = partials(id) else {
            return Err(format!("partial '{id}' does not exist"));
        };
        let Some((_, field)) = plugin.partials.iter().find(|(t, _)| *t == kind) else {
            let takes: Vec<&str> = plugin.partials.iter().map(|(t, _)| *t).collect();
            return Err(format!(
                "partial '{id}' is of type '{kind}'; plugin '{}' takes {}",
                plugin.name,
                if takes.is_empty() {
                    "none".to_string()
                } else {
                    takes.join(", ")
                }
            ));
        };
        let own = match config.remove(*field) {
            Some(v) if !v.is_null() => v,
            _ => match plugin
                .config
                .iter()
                .find(|f| f.name == *field)
                .map(|f| &f.ty)
            {
                Some(Ty::Record(sub)) => validate_record(sub, &Map::new())
                    .map(Value::Object)
                    .unwrap_or(Value::Null),
                _ => Value::Null,
            },
        };
        config.insert(field.to_string(), pconfig);
        kept.push((field.to_string(), own));
    }
    Ok(kept)
}

/// The partial ids a plugin document names.
pub fn partial_ids(doc: &Map<String, Value>) -> Vec<String> {
    doc.get("partials")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|r| r.get("id").and_then(Value::as_str).map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Plugins of the model's own tests: the real ones live with their runtimes, in another crate.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use std::sync::LazyLock;

    static AUTH: LazyLock<PluginSchema> =
        LazyLock::new(|| PluginSchema::new("key-auth", 1250, vec![]).auth());
    /// A schema with a default, and a compiler that refuses what the schema accepts but a
    /// runtime could not run.
    static LIMITS: LazyLock<PluginSchema> = LazyLock::new(|| {
        PluginSchema::new(
            "limits",
            910,
            vec![
                Field::new("minute", number()),
                Field::new("policy", one_of(&["local", "redis"])).def(json!("local")),
                Field::new("burst", number()),
            ],
        )
        .since(&[("config.burst", Version(0, 2, 0))])
    });

    /// `key-auth` (an authentication plugin without fields) and `limits`.
    pub fn catalog() -> Catalog {
        Catalog::new(vec![
            Enabled {
                schema: &AUTH,
                compile: Arc::new(|_, _| Ok(())),
            },
            Enabled {
                schema: &LIMITS,
                compile: Arc::new(|_, c| match c["policy"].as_str() {
                    Some("redis") => Err(CompileError::field("policy", "not in this build")),
                    _ => Ok(()),
                }),
            },
        ])
    }
}
