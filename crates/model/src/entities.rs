//! The core entities: Kong's names, types, defaults and constraints.

use std::sync::LazyLock;

use serde_json::{json, Map, Value};

use crate::schema::*;
use crate::Doc;

/// A composite uniqueness constraint (Kong's `cache_key`): the fields, in order.
pub type CacheKey = &'static [&'static str];

/// One entity type of the configuration.
pub struct EntitySchema {
    /// Kong's DAO and declarative name, e.g. `keyauth_credentials`.
    pub name: &'static str,
    /// Top-level Admin API collection, e.g. `key-auths`.
    pub admin_path: &'static str,
    /// `(parent entity, path under the parent)`, e.g. `("consumers", "key-auth")`.
    pub nested: &'static [(&'static str, &'static str)],
    pub fields: Vec<Field>,
    /// The unique field that the Admin API also accepts in place of an id.
    pub endpoint_key: Option<&'static str>,
    pub cache_key: Option<CacheKey>,
    /// Checks across fields, run once the fields themselves are valid.
    pub checks: fn(&Doc, &mut FieldErrors),
}

impl EntitySchema {
    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }
    /// The foreign fields: `(field, referenced entity, on delete)`.
    pub fn foreign_fields(
        &self,
    ) -> impl Iterator<Item = (&'static str, &'static str, OnDelete)> + '_ {
        self.fields.iter().filter_map(|f| match f.ty {
            Ty::Foreign {
                reference,
                on_delete,
            } => Some((f.name, reference, on_delete)),
            _ => None,
        })
    }
    /// The single-field unique constraints.
    pub fn unique_fields(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.fields
            .iter()
            .filter(|f| f.unique && f.name != "id")
            .map(|f| f.name)
    }
    /// Kong's `/schemas/{entity}` body.
    pub fn describe(&self) -> Value {
        let mut v = json!({ "fields": describe(&self.fields) });
        if let Some(k) = self.endpoint_key {
            v["endpoint_key"] = json!(k);
        }
        if let Some(k) = self.cache_key {
            v["cache_key"] = json!(k);
        }
        v
    }
}

fn id() -> Field {
    Field::new("id", str_of(StrKind::Uuid)).auto().unique()
}
fn created_at() -> Field {
    Field::new("created_at", int(0, i64::MAX)).auto()
}
fn updated_at() -> Field {
    Field::new("updated_at", int(0, i64::MAX)).auto()
}
fn tags() -> Field {
    Field::new("tags", set(str_of(StrKind::Tag)))
}
fn name_field() -> Field {
    Field::new("name", str_of(StrKind::Name)).unique()
}
fn consumer_ref() -> Field {
    Field::new("consumer", foreign("consumers", OnDelete::Cascade)).req()
}
fn timeout() -> Ty {
    int(1, 2_147_483_646)
}
fn no_checks(_: &Doc, _: &mut FieldErrors) {}

pub const SERVICE_PROTOCOLS: &[&str] = &[
    "grpc",
    "grpcs",
    "http",
    "https",
    "tcp",
    "tls",
    "tls_passthrough",
    "udp",
    "ws",
    "wss",
];
const ROUTE_PROTOCOLS: &[&str] = SERVICE_PROTOCOLS;

/// Every entity, parents before children: the order of import and export.
pub static ENTITIES: LazyLock<Vec<EntitySchema>> = LazyLock::new(|| {
    vec![
        EntitySchema {
            name: "vaults",
            admin_path: "vaults",
            nested: &[],
            fields: vec![
                id(),
                Field::new("prefix", string()).req().unique(),
                Field::new("name", string()).req(),
                Field::new("description", string()),
                Field::new("config", record(vec![Field::new("prefix", string())])),
                created_at(),
                updated_at(),
                tags(),
            ],
            endpoint_key: Some("prefix"),
            cache_key: Some(&["prefix"]),
            checks: vault_checks,
        },
        EntitySchema {
            name: "certificates",
            admin_path: "certificates",
            nested: &[],
            fields: vec![
                id(),
                created_at(),
                updated_at(),
                Field::new("cert", str_of(StrKind::Certificate)).req(),
                Field::new("key", str_of(StrKind::Key)).req().secret(),
                Field::new("cert_alt", str_of(StrKind::Certificate)),
                Field::new("key_alt", str_of(StrKind::Key)).secret(),
                tags(),
            ],
            endpoint_key: None,
            cache_key: None,
            checks: certificate_checks,
        },
        EntitySchema {
            name: "ca_certificates",
            admin_path: "ca_certificates",
            nested: &[],
            fields: vec![
                id(),
                created_at(),
                updated_at(),
                Field::new("cert", str_of(StrKind::Certificate)).req(),
                Field::new("cert_digest", string()).unique().auto(),
                tags(),
            ],
            endpoint_key: None,
            cache_key: None,
            checks: ca_certificate_checks,
        },
        EntitySchema {
            name: "snis",
            admin_path: "snis",
            nested: &[("certificates", "snis")],
            fields: vec![
                id(),
                created_at(),
                updated_at(),
                Field::new("name", str_of(StrKind::WildcardHostPort))
                    .req()
                    .unique(),
                Field::new("certificate", foreign("certificates", OnDelete::Cascade)).req(),
                tags(),
            ],
            endpoint_key: Some("name"),
            cache_key: None,
            checks: sni_checks,
        },
        EntitySchema {
            name: "services",
            admin_path: "services",
            nested: &[],
            fields: vec![
                id(),
                created_at(),
                updated_at(),
                name_field(),
                Field::new("retries", int(0, 32767)).def(json!(5)),
                Field::new("protocol", one_of(SERVICE_PROTOCOLS))
                    .req()
                    .def(json!("http")),
                Field::new("host", str_of(StrKind::Host)).req(),
                Field::new("port", int(0, 65535)).req().def(json!(80)),
                Field::new("path", str_of(StrKind::Path)),
                Field::new("connect_timeout", timeout()).def(json!(60000)),
                Field::new("write_timeout", timeout()).def(json!(60000)),
                Field::new("read_timeout", timeout()).def(json!(60000)),
                tags(),
                Field::new(
                    "client_certificate",
                    foreign("certificates", OnDelete::Restrict),
                ),
                Field::new("tls_verify", boolean()),
                Field::new("tls_verify_depth", int(0, 64)),
                Field::new("ca_certificates", array(str_of(StrKind::Uuid))),
                Field::new("enabled", boolean()).req().def(json!(true)),
            ],
            endpoint_key: Some("name"),
            cache_key: None,
            checks: service_checks,
        },
        EntitySchema {
            name: "routes",
            admin_path: "routes",
            nested: &[("services", "routes")],
            fields: vec![
                id(),
                created_at(),
                updated_at(),
                name_field(),
                // Kong: `len_min = 1`.
                Field::new("protocols", set_min(one_of(ROUTE_PROTOCOLS), 1))
                    .req()
                    .def(json!(["http", "https"])),
                Field::new("methods", set(str_of(StrKind::HeaderName))),
                Field::new("hosts", array(str_of(StrKind::WildcardHostPort))),
                Field::new("paths", array(str_of(StrKind::RoutePath))),
                Field::new("headers", map(array(string()))),
                Field::new(
                    "https_redirect_status_code",
                    int_one_of(&[426, 301, 302, 307, 308]),
                )
                .req()
                .def(json!(426)),
                Field::new(
                    "regex_priority",
                    int(i64::from(i32::MIN), i64::from(i32::MAX)),
                )
                .def(json!(0)),
                Field::new("strip_path", boolean()).req().def(json!(true)),
                Field::new("path_handling", one_of(&["v0", "v1"])).def(json!("v0")),
                Field::new("preserve_host", boolean())
                    .req()
                    .def(json!(false)),
                Field::new("request_buffering", boolean())
                    .req()
                    .def(json!(true)),
                Field::new("response_buffering", boolean())
                    .req()
                    .def(json!(true)),
                Field::new("snis", set(str_of(StrKind::WildcardHostPort))),
                Field::new("sources", set(endpoint())),
                Field::new("destinations", set(endpoint())),
                tags(),
                Field::new("service", foreign("services", OnDelete::Restrict)),
            ],
            endpoint_key: Some("name"),
            cache_key: None,
            checks: route_checks,
        },
        EntitySchema {
            name: "consumers",
            admin_path: "consumers",
            nested: &[],
            fields: vec![
                id(),
                created_at(),
                updated_at(),
                Field::new("username", string()).unique(),
                Field::new("custom_id", string()).unique(),
                tags(),
            ],
            endpoint_key: Some("username"),
            cache_key: None,
            checks: consumer_checks,
        },
        EntitySchema {
            name: "consumer_groups",
            admin_path: "consumer_groups",
            nested: &[],
            fields: vec![
                id(),
                created_at(),
                updated_at(),
                Field::new("name", string()).req().unique(),
                tags(),
            ],
            endpoint_key: Some("name"),
            cache_key: None,
            checks: no_checks,
        },
        // The membership of a consumer in a consumer group: served through
        // `/consumer_groups/{g}/consumers` and `/consumers/{c}/consumer_groups`, not a
        // collection of its own (Kong's primary key is the pair; the id is derived from it).
        EntitySchema {
            name: "consumer_group_consumers",
            admin_path: "",
            nested: &[],
            fields: vec![
                id(),
                created_at(),
                Field::new(
                    "consumer_group",
                    foreign("consumer_groups", OnDelete::Cascade),
                )
                .req(),
                consumer_ref(),
            ],
            endpoint_key: None,
            cache_key: Some(&["consumer_group", "consumer"]),
            checks: no_checks,
        },
        EntitySchema {
            name: "upstreams",
            admin_path: "upstreams",
            nested: &[],
            fields: vec![
                id(),
                created_at(),
                updated_at(),
                Field::new("name", str_of(StrKind::Host)).req().unique(),
                Field::new(
                    "algorithm",
                    one_of(&[
                        "consistent-hashing",
                        "least-connections",
                        "round-robin",
                        "latency",
                    ]),
                )
                .def(json!("round-robin")),
                Field::new("hash_on", one_of(HASH_ON)).def(json!("none")),
                Field::new("hash_fallback", one_of(HASH_ON)).def(json!("none")),
                Field::new("hash_on_header", str_of(StrKind::HeaderName)),
                Field::new("hash_fallback_header", str_of(StrKind::HeaderName)),
                Field::new("hash_on_cookie", string()),
                Field::new("hash_on_cookie_path", str_of(StrKind::Path)).def(json!("/")),
                Field::new("hash_on_query_arg", string()),
                Field::new("hash_fallback_query_arg", string()),
                Field::new("hash_on_uri_capture", string()),
                Field::new("hash_fallback_uri_capture", string()),
                Field::new("slots", int(10, 65536)).def(json!(10000)),
                Field::new("healthchecks", crate::healthchecks::healthchecks()),
                tags(),
                Field::new("host_header", str_of(StrKind::Host)),
                Field::new(
                    "client_certificate",
                    foreign("certificates", OnDelete::Restrict),
                ),
                Field::new("use_srv_name", boolean()).def(json!(false)),
            ],
            endpoint_key: Some("name"),
            cache_key: None,
            checks: upstream_checks,
        },
        EntitySchema {
            name: "targets",
            admin_path: "targets",
            nested: &[("upstreams", "targets")],
            fields: vec![
                id(),
                created_at(),
                updated_at(),
                Field::new("upstream", foreign("upstreams", OnDelete::Cascade)).req(),
                Field::new("target", str_of(StrKind::HostPort)).req(),
                Field::new("weight", int(0, 65535)).def(json!(100)),
                tags(),
            ],
            endpoint_key: Some("target"),
            cache_key: Some(&["upstream", "target"]),
            checks: no_checks,
        },
        EntitySchema {
            name: "partials",
            admin_path: "partials",
            nested: &[],
            fields: vec![
                id(),
                created_at(),
                updated_at(),
                name_field(),
                Field::new("type", one_of(crate::plugins::PARTIAL_TYPES)).req(),
                Field::new("config", record(vec![])).req(),
                tags(),
            ],
            endpoint_key: Some("name"),
            cache_key: None,
            checks: no_checks,
        },
        EntitySchema {
            name: "plugins",
            admin_path: "plugins",
            nested: &[
                ("services", "plugins"),
                ("routes", "plugins"),
                ("consumers", "plugins"),
                ("consumer_groups", "plugins"),
            ],
            fields: vec![
                id(),
                created_at(),
                updated_at(),
                Field::new("name", string()).req(),
                Field::new("instance_name", str_of(StrKind::Name)).unique(),
                Field::new("route", foreign("routes", OnDelete::Cascade)),
                Field::new("service", foreign("services", OnDelete::Cascade)),
                Field::new("consumer", foreign("consumers", OnDelete::Cascade)),
                Field::new(
                    "consumer_group",
                    foreign("consumer_groups", OnDelete::Cascade),
                ),
                Field::new("config", record(vec![])).req(),
                Field::new("protocols", set(one_of(ROUTE_PROTOCOLS)))
                    .req()
                    .def(json!(["grpc", "grpcs", "http", "https"])),
                Field::new("enabled", boolean()).req().def(json!(true)),
                tags(),
                Field::new(
                    "partials",
                    array(record(vec![
                        Field::new("id", str_of(StrKind::Uuid)).req(),
                        Field::new("name", string()),
                        Field::new("path", string()),
                    ])),
                ),
            ],
            endpoint_key: Some("instance_name"),
            // `consumer_group` joins the key only when set, so that keys written before
            // consumer groups existed stay what they were.
            cache_key: Some(&["name", "route", "service", "consumer", "consumer_group"]),
            checks: no_checks,
        },
        EntitySchema {
            name: "key_sets",
            admin_path: "key-sets",
            nested: &[],
            fields: vec![
                id(),
                Field::new("name", string()).unique(),
                tags(),
                created_at(),
                updated_at(),
            ],
            endpoint_key: Some("name"),
            cache_key: None,
            checks: no_checks,
        },
        EntitySchema {
            name: "keys",
            admin_path: "keys",
            nested: &[("key_sets", "keys")],
            fields: vec![
                id(),
                Field::new("set", foreign("key_sets", OnDelete::Cascade)),
                Field::new("name", string()).unique(),
                Field::new("kid", string()).req(),
                Field::new("jwk", string()).secret(),
                Field::new(
                    "pem",
                    record(vec![
                        Field::new("private_key", string()).secret(),
                        Field::new("public_key", string()),
                    ]),
                ),
                tags(),
                created_at(),
                updated_at(),
            ],
            endpoint_key: Some("name"),
            cache_key: Some(&["kid", "set"]),
            checks: key_checks,
        },
        EntitySchema {
            name: "keyauth_credentials",
            admin_path: "key-auths",
            nested: &[("consumers", "key-auth")],
            fields: vec![
                id(),
                created_at(),
                consumer_ref(),
                Field::new("key", string()).unique().auto(),
                ttl(),
                tags(),
            ],
            endpoint_key: Some("key"),
            cache_key: None,
            checks: no_checks,
        },
        EntitySchema {
            name: "basicauth_credentials",
            admin_path: "basic-auths",
            nested: &[("consumers", "basic-auth")],
            fields: vec![
                id(),
                created_at(),
                consumer_ref(),
                Field::new("username", string()).req().unique(),
                Field::new("password", string()).req().secret(),
                tags(),
            ],
            endpoint_key: Some("username"),
            cache_key: None,
            checks: no_checks,
        },
        EntitySchema {
            name: "acls",
            admin_path: "acls",
            nested: &[("consumers", "acls")],
            fields: vec![
                id(),
                created_at(),
                consumer_ref(),
                Field::new("group", string()).req(),
                tags(),
            ],
            endpoint_key: None,
            cache_key: Some(&["consumer", "group"]),
            checks: no_checks,
        },
        EntitySchema {
            name: "jwt_secrets",
            admin_path: "jwts",
            nested: &[("consumers", "jwt")],
            fields: vec![
                id(),
                created_at(),
                consumer_ref(),
                Field::new("key", string()).unique().auto(),
                Field::new("secret", string()).auto().secret(),
                Field::new("rsa_public_key", string()),
                Field::new(
                    "algorithm",
                    one_of(&[
                        "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384",
                        "ES512", "PS256", "PS384", "PS512", "EdDSA",
                    ]),
                )
                .def(json!("HS256")),
                tags(),
            ],
            endpoint_key: Some("key"),
            cache_key: None,
            checks: jwt_checks,
        },
        EntitySchema {
            name: "hmacauth_credentials",
            admin_path: "hmac-auths",
            nested: &[("consumers", "hmac-auth")],
            fields: vec![
                id(),
                created_at(),
                consumer_ref(),
                Field::new("username", string()).req().unique(),
                Field::new("secret", string()).auto().secret(),
                tags(),
            ],
            endpoint_key: Some("username"),
            cache_key: None,
            checks: no_checks,
        },
        EntitySchema {
            name: "oauth2_credentials",
            admin_path: "oauth2",
            nested: &[("consumers", "oauth2")],
            fields: vec![
                id(),
                created_at(),
                consumer_ref(),
                Field::new("name", string()).req(),
                Field::new("client_id", string()).unique().auto(),
                Field::new("client_secret", string()).auto().secret(),
                Field::new("hash_secret", boolean()).req().def(json!(false)),
                Field::new("redirect_uris", array(str_of(StrKind::RedirectUri))),
                tags(),
                Field::new("client_type", one_of(&["confidential", "public"]))
                    .req()
                    .def(json!("confidential")),
            ],
            endpoint_key: Some("client_id"),
            cache_key: Some(&["client_id"]),
            checks: no_checks,
        },
        // Kong's `generate_admin_api = false` and `db_export = false`: codes live five
        // minutes, written and read by the oauth2 plugin alone.
        EntitySchema {
            name: "oauth2_authorization_codes",
            admin_path: "",
            nested: &[],
            fields: vec![
                id(),
                created_at(),
                Field::new("service", foreign("services", OnDelete::Cascade)),
                Field::new(
                    "credential",
                    foreign("oauth2_credentials", OnDelete::Cascade),
                )
                .req(),
                Field::new("code", string()).unique().auto(),
                Field::new("authenticated_userid", string()),
                Field::new("scope", string()),
                Field::new("challenge", string()),
                Field::new("challenge_method", one_of(&["S256"])),
                Field::new("plugin", foreign("plugins", OnDelete::Cascade)),
                ttl(),
            ],
            endpoint_key: None,
            cache_key: None,
            checks: no_checks,
        },
        EntitySchema {
            name: "oauth2_tokens",
            admin_path: "oauth2_tokens",
            nested: &[
                ("oauth2_credentials", "oauth2_tokens"),
                ("services", "oauth2_tokens"),
            ],
            fields: vec![
                id(),
                created_at(),
                Field::new("service", foreign("services", OnDelete::Cascade)),
                Field::new(
                    "credential",
                    foreign("oauth2_credentials", OnDelete::Cascade),
                )
                .req(),
                Field::new("token_type", one_of(&["bearer"]))
                    .req()
                    .def(json!("bearer")),
                Field::new("expires_in", int(i64::MIN, i64::MAX)).req(),
                Field::new("access_token", string()).unique().auto(),
                Field::new("refresh_token", string()).unique(),
                Field::new("authenticated_userid", string()),
                Field::new("scope", string()),
                ttl(),
            ],
            endpoint_key: Some("access_token"),
            cache_key: Some(&["access_token"]),
            checks: no_checks,
        },
    ]
});

/// Kong's entity `ttl` (entities whose schema has `ttl = true`): seconds from `created_at`
/// that the entity lives; shown as what is left, and gone once it has run out.
fn ttl() -> Field {
    Field::new("ttl", int(0, 100_000_000))
}

/// The entities that are not exported (Kong's `db_export = false`).
pub const NOT_EXPORTED: &[&str] = &["oauth2_authorization_codes"];

/// When an entity with a `ttl` runs out (Unix seconds); `None` when it lives on.
pub fn expires_at(d: &Doc) -> Option<i64> {
    let ttl = d.get("ttl")?.as_i64()?;
    let created = d.get("created_at").and_then(Value::as_i64).unwrap_or(0);
    Some(created.saturating_add(ttl))
}

const HASH_ON: &[&str] = &[
    "none",
    "consumer",
    "ip",
    "header",
    "cookie",
    "path",
    "query_arg",
    "uri_capture",
];

fn endpoint() -> Ty {
    record(vec![
        Field::new("ip", str_of(StrKind::IpOrCidr)),
        Field::new("port", int(0, 65535)),
    ])
}

/// The id of the membership of a consumer in a consumer group (a `consumer_group_consumers`
/// entity): derived from the pair, which is Kong's primary key of it.
pub fn membership_id(group: &str, consumer: &str) -> String {
    let seed = format!("consumer_group_consumers|{group}|{consumer}");
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, seed.as_bytes()).to_string()
}

/// The schema of an entity by its name (`services`, `keyauth_credentials`, ...).
pub fn entity(name: &str) -> Option<&'static EntitySchema> {
    ENTITIES.iter().find(|e| e.name == name)
}

/// The schema behind a top-level Admin API collection (`services`, `key-auths`, ...).
pub fn by_admin_path(path: &str) -> Option<&'static EntitySchema> {
    ENTITIES
        .iter()
        .find(|e| !e.admin_path.is_empty() && e.admin_path == path)
}

fn is_set(d: &Doc, k: &str) -> bool {
    match d.get(k) {
        None | Some(Value::Null) => false,
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(m)) => !m.is_empty(),
        Some(_) => true,
    }
}

fn strs<'a>(d: &'a Doc, k: &str) -> Vec<&'a str> {
    d.get(k)
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn service_checks(d: &Doc, e: &mut FieldErrors) {
    let proto = d.get("protocol").and_then(Value::as_str).unwrap_or("http");
    if !matches!(proto, "http" | "https" | "ws" | "wss" | "grpc" | "grpcs") && is_set(d, "path") {
        e.add(
            "path",
            format!("value must be null when 'protocol' is '{proto}'"),
        );
    }
    if !matches!(proto, "https" | "wss" | "grpcs" | "tls") && is_set(d, "client_certificate") {
        e.add(
            "client_certificate",
            format!("value must be null when 'protocol' is '{proto}'"),
        );
    }
}

fn route_checks(d: &Doc, e: &mut FieldErrors) {
    let protocols = strs(d, "protocols");
    let http_like = protocols
        .iter()
        .any(|p| matches!(*p, "http" | "https" | "grpc" | "grpcs" | "ws" | "wss"));
    let stream = protocols
        .iter()
        .any(|p| matches!(*p, "tcp" | "tls" | "udp" | "tls_passthrough"));
    if http_like && stream {
        e.add(
            "protocols",
            "mixing http and stream protocols is not allowed",
        );
        return;
    }
    let tls = protocols
        .iter()
        .any(|p| matches!(*p, "https" | "grpcs" | "wss" | "tls" | "tls_passthrough"));
    if http_like {
        let mut need = vec!["methods", "hosts", "headers", "paths"];
        if tls {
            need.push("snis");
        }
        if !need.iter().any(|k| is_set(d, k)) {
            let list: Vec<String> = need.iter().map(|k| format!("'{k}'")).collect();
            let last = protocols.last().copied().unwrap_or("http");
            e.add_entity(format!(
                "must set one of {} when 'protocols' is '{last}'",
                list.join(", ")
            ));
        }
        for k in ["sources", "destinations"] {
            if is_set(d, k) {
                e.add(
                    k,
                    "cannot set 'sources' or 'destinations' when 'protocols' is 'http' or 'https'",
                );
            }
        }
    } else if stream
        && !["sources", "destinations", "snis"]
            .iter()
            .any(|k| is_set(d, k))
    {
        e.add_entity("must set one of 'sources', 'destinations', 'snis' when 'protocols' is 'tcp', 'tls' or 'udp'");
    }
    if is_set(d, "snis") && !tls {
        e.add(
            "snis",
            "'snis' can only be set when 'protocols' is 'grpcs', 'https', 'tls' or 'tls_passthrough'",
        );
    }
    if let Some(Value::Object(h)) = d.get("headers") {
        for (k, v) in h {
            if k.eq_ignore_ascii_case("host") {
                e.add(
                    "headers",
                    "cannot contain 'host' header, which must be specified in the 'hosts' attribute",
                );
            } else if v.as_array().is_none_or(|a| a.is_empty()) {
                e.add(
                    "headers",
                    format!("header '{k}' must have at least one value"),
                );
            }
        }
    }
}

fn consumer_checks(d: &Doc, e: &mut FieldErrors) {
    if !is_set(d, "username") && !is_set(d, "custom_id") {
        e.add_entity("at least one of these fields must be non-empty: 'custom_id', 'username'");
    }
}

fn upstream_checks(d: &Doc, e: &mut FieldErrors) {
    let on = d.get("hash_on").and_then(Value::as_str).unwrap_or("none");
    let fb = d
        .get("hash_fallback")
        .and_then(Value::as_str)
        .unwrap_or("none");
    let needs = |v: &str, prefix: &str| -> Option<String> {
        match v {
            "header" => Some(format!("hash_{prefix}_header")),
            "query_arg" => Some(format!("hash_{prefix}_query_arg")),
            "uri_capture" => Some(format!("hash_{prefix}_uri_capture")),
            _ => None,
        }
    };
    if let Some(f) = needs(on, "on") {
        if !is_set(d, &f) {
            e.add(
                &f,
                format!("required field missing when 'hash_on' is '{on}'"),
            );
        }
    }
    if on == "cookie" && !is_set(d, "hash_on_cookie") {
        e.add(
            "hash_on_cookie",
            "required field missing when 'hash_on' is 'cookie'",
        );
    }
    if fb != "none" {
        if on == "none" || on == "cookie" {
            e.add(
                "hash_fallback",
                format!("must be 'none' when 'hash_on' is '{on}'"),
            );
        } else if fb == on && !matches!(fb, "header" | "query_arg" | "uri_capture") {
            e.add("hash_fallback", "must be different from 'hash_on'");
        }
        if let Some(f) = needs(fb, "fallback") {
            if !is_set(d, &f) {
                e.add(
                    &f,
                    format!("required field missing when 'hash_fallback' is '{fb}'"),
                );
            }
        }
    }
}

fn sni_checks(d: &Doc, e: &mut FieldErrors) {
    if let Some(n) = d.get("name").and_then(Value::as_str) {
        if n.contains(':') {
            e.add("name", "must not have a port");
        }
    }
}

fn certificate_checks(d: &Doc, e: &mut FieldErrors) {
    if is_set(d, "cert_alt") != is_set(d, "key_alt") {
        e.add_entity("all or none of these fields must be set: 'cert_alt', 'key_alt'");
    }
    for (c, k) in [("cert", "key"), ("cert_alt", "key_alt")] {
        if let (Some(Value::String(cert)), Some(Value::String(key))) = (d.get(c), d.get(k)) {
            if crate::pem::key_matches_cert(cert, key) == Some(false) {
                e.add(k, format!("does not match the public key of '{c}'"));
            }
        }
    }
}

fn ca_certificate_checks(d: &Doc, e: &mut FieldErrors) {
    if let Some(pem) = d.get("cert").and_then(Value::as_str) {
        match crate::pem::parse_cert_chain(pem) {
            Ok(info) if !info.is_ca => {
                e.add(
                    "cert",
                    "certificate does not appear to be a CA because it is missing the \"CA\" basic constraint",
                );
            }
            // A `cert_digest` given is replaced by the certificate's own when the document
            // is completed, as Kong recomputes it on every write of `cert`.
            Ok(_) => {}
            Err(m) => e.add("cert", m.0),
        }
    }
}

/// Kong's checks of a vault: a prefix usable in a reference's host part and not a vault's
/// own name, a vault Gantry has, and the env vault's `config.prefix` as a variable name starts.
fn vault_checks(d: &Doc, e: &mut FieldErrors) {
    static PREFIX: LazyLock<regex::Regex> = LazyLock::new(|| {
        regex::Regex::new(r"^[a-z][a-z0-9-]*[a-z0-9]+$").unwrap_or_else(|_| unreachable!())
    });
    static ENV_PREFIX: LazyLock<regex::Regex> = LazyLock::new(|| {
        regex::Regex::new(r"^[A-Za-z_-][A-Za-z0-9_-]*$").unwrap_or_else(|_| unreachable!())
    });
    if let Some(p) = d.get("prefix").and_then(Value::as_str) {
        if crate::vault::VAULTS.contains(&p) {
            e.add(
                "prefix",
                format!("must not be one of: {}", crate::vault::VAULTS.join(", ")),
            );
        } else if !PREFIX.is_match(p) {
            e.add("prefix", format!("invalid value: {p}"));
        }
    }
    if let Some(n) = d.get("name").and_then(Value::as_str) {
        if !crate::vault::VAULTS.contains(&n) {
            e.add("name", format!("vault '{n}' is not installed"));
        }
    }
    if let Some(p) = d
        .get("config")
        .and_then(|c| c.get("prefix"))
        .and_then(Value::as_str)
    {
        if !ENV_PREFIX.is_match(p) {
            e.add("config", format!("invalid value: {p}"));
        }
    }
}

/// Kong's checks of a key: a JWK or a PEM pair (one, not both); a JWK whose `kid` is the
/// key's and that reads as a key; PEM keys that read, a public key that is the private key's.
fn key_checks(d: &Doc, e: &mut FieldErrors) {
    match (is_set(d, "jwk"), is_set(d, "pem")) {
        (true, true) => {
            e.add_entity("only one or none of these fields must be set: 'jwk', 'pem'");
            return;
        }
        (false, false) => {
            e.add_entity("at least one of these fields must be non-empty: 'jwk', 'pem'");
            return;
        }
        _ => {}
    }
    if let Some(jwk) = d.get("jwk").and_then(Value::as_str) {
        let Ok(Value::Object(j)) = serde_json::from_str::<Value>(jwk) else {
            e.add_entity("could not json decode jwk string");
            return;
        };
        if j.get("kid").and_then(Value::as_str) != d.get("kid").and_then(Value::as_str) {
            e.add_entity("kid in jwk.kid must be equal to keys.kid");
            return;
        }
        if !crate::pem::jwk_is_key(&j) {
            e.add_entity("could not load JWK, likely not a valid key");
        }
    }
    if let Some(Value::Object(pem)) = d.get("pem") {
        let s = |k: &str| pem.get(k).and_then(Value::as_str);
        let (private, public) = (s("private_key"), s("public_key"));
        if private.is_none() && public.is_none() {
            e.add_entity("need to supply a PEM formatted public and/or private key.");
            return;
        }
        if let Err(m) = crate::pem::check_key_pair(private, public) {
            e.add("pem", m.0);
        }
    }
}

fn jwt_checks(d: &Doc, e: &mut FieldErrors) {
    let alg = d
        .get("algorithm")
        .and_then(Value::as_str)
        .unwrap_or("HS256");
    if !alg.starts_with("HS") && !is_set(d, "rsa_public_key") {
        e.add(
            "rsa_public_key",
            format!("required field missing when 'algorithm' is '{alg}'"),
        );
    }
}

/// Kong's `url` shorthand on services: `url` sets protocol, host, port and path.
pub fn expand_service_url(d: &mut Map<String, Value>, errs: &mut FieldErrors) {
    let Some(url) = d.remove("url") else { return };
    let Value::String(url) = url else {
        if !url.is_null() {
            errs.add("url", "expected a string");
        }
        return;
    };
    let Some((scheme, rest)) = url.split_once("://") else {
        errs.add("url", format!("missing scheme in url '{url}'"));
        return;
    };
    if !SERVICE_PROTOCOLS.contains(&scheme) {
        errs.add("url", format!("unsupported scheme '{scheme}'"));
        return;
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], Some(&rest[i..])),
        None => (rest, None),
    };
    let (host, port) = if let Some(h) = authority.strip_prefix('[') {
        match h.split_once(']') {
            Some((h, p)) => (h.to_string(), p.strip_prefix(':')),
            None => (authority.to_string(), None),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (authority.to_string(), None),
        }
    };
    let port = match port {
        Some(p) => match p.parse::<u16>() {
            Ok(p) => p,
            Err(_) => {
                errs.add("url", format!("invalid port '{p}' in url '{url}'"));
                return;
            }
        },
        None => match scheme {
            "https" | "wss" | "grpcs" | "tls" => 443,
            _ => 80,
        },
    };
    d.insert("protocol".into(), json!(scheme));
    d.insert("host".into(), json!(host));
    d.insert("port".into(), json!(port));
    d.insert("path".into(), path.map_or(Value::Null, |p| json!(p)));
}
