//! Plugin configuration schemas. A plugin is one `PluginSchema` in `PLUGINS`; the proxy engine
//! registers its runtime under the same name.

use std::sync::LazyLock;

use serde_json::{json, Map, Value};

use crate::schema::*;

/// Partial types that plugins can reference (shared config fragments).
pub const PARTIAL_TYPES: &[&str] = &["redis-ce", "redis-ee"];

pub struct PluginSchema {
    pub name: &'static str,
    pub version: &'static str,
    /// Kong's execution priority: higher runs first.
    pub priority: i32,
    pub config: Vec<Field>,
    pub no_consumer: bool,
    pub no_route: bool,
    pub no_service: bool,
    /// `(partial type, config field it fills)`.
    pub partials: &'static [(&'static str, &'static str)],
    pub checks: fn(&Map<String, Value>, &mut FieldErrors),
}

impl PluginSchema {
    fn new(name: &'static str, priority: i32, config: Vec<Field>) -> PluginSchema {
        PluginSchema {
            name,
            version: crate::GANTRY_VERSION,
            priority,
            config,
            no_consumer: false,
            no_route: false,
            no_service: false,
            partials: &[],
            checks: |_, _| {},
        }
    }
    fn auth(mut self) -> PluginSchema {
        self.no_consumer = true;
        self
    }
    fn checks(mut self, f: fn(&Map<String, Value>, &mut FieldErrors)) -> PluginSchema {
        self.checks = f;
        self
    }
    /// Kong's `/schemas/plugins/{name}` body.
    pub fn describe(&self) -> Value {
        let mut fields = vec![
            json!({"protocols": {"type": "set", "elements": {"type": "string", "one_of": crate::entities::SERVICE_PROTOCOLS}, "default": ["grpc", "grpcs", "http", "https"], "required": true}}),
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

fn s_arr() -> Ty {
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

fn anonymous() -> Field {
    Field::new("anonymous", string())
}

fn transform_group(fields: &[&'static str]) -> Ty {
    record(
        fields
            .iter()
            .map(|f| Field::new(f, s_arr()).def(json!([])))
            .collect(),
    )
}

pub static PLUGINS: LazyLock<Vec<PluginSchema>> = LazyLock::new(|| {
    vec![
        PluginSchema::new(
            "correlation-id",
            100_001,
            vec![
                Field::new("header_name", string()).def(json!("Kong-Request-ID")),
                Field::new("generator", one_of(&["uuid", "uuid#counter", "tracker"]))
                    .req()
                    .def(json!("uuid#counter")),
                Field::new("echo_downstream", boolean())
                    .req()
                    .def(json!(false)),
            ],
        ),
        PluginSchema::new(
            "ip-restriction",
            990,
            vec![
                Field::new("allow", array(str_of(StrKind::IpOrCidr))),
                Field::new("deny", array(str_of(StrKind::IpOrCidr))),
                Field::new("status", int(100, 599)),
                Field::new("message", string()),
            ],
        )
        .checks(|c, e| {
            if !set_nonempty(c, "allow") && !set_nonempty(c, "deny") {
                e.add_entity(
                    "at least one of these fields must be non-empty: 'config.allow', 'config.deny'",
                );
            }
        }),
        PluginSchema::new(
            "cors",
            2000,
            vec![
                Field::new("origins", s_arr()),
                Field::new("headers", s_arr()),
                Field::new("exposed_headers", s_arr()),
                Field::new(
                    "methods",
                    array(one_of(&[
                        "GET", "HEAD", "PUT", "PATCH", "POST", "DELETE", "OPTIONS", "TRACE",
                        "CONNECT",
                    ])),
                )
                .def(json!([
                    "GET", "HEAD", "PUT", "PATCH", "POST", "DELETE", "OPTIONS", "TRACE", "CONNECT"
                ])),
                Field::new("max_age", number()),
                Field::new("credentials", boolean()).req().def(json!(false)),
                Field::new("private_network", boolean())
                    .req()
                    .def(json!(false)),
                Field::new("preflight_continue", boolean())
                    .req()
                    .def(json!(false)),
                // Since Gantry 0.2 (see `compat`): answer requests without `Origin` with CORS
                // headers (true, as before) or leave them alone.
                Field::new("allow_origin_absent", boolean())
                    .req()
                    .def(json!(true)),
            ],
        ),
        PluginSchema::new(
            "jwt",
            1450,
            vec![
                Field::new("uri_param_names", set(string())).def(json!(["jwt"])),
                Field::new("cookie_names", set(string())).def(json!([])),
                Field::new("key_claim_name", string()).def(json!("iss")),
                Field::new("secret_is_base64", boolean())
                    .req()
                    .def(json!(false)),
                Field::new("claims_to_verify", set(one_of(&["exp", "nbf"]))),
                anonymous(),
                Field::new("run_on_preflight", boolean())
                    .req()
                    .def(json!(true)),
                Field::new(
                    "maximum_expiration",
                    Ty::Num {
                        min: Some(0.0),
                        max: Some(31_536_000.0),
                        gt: None,
                    },
                )
                .def(json!(0)),
                Field::new("header_names", set(string())).def(json!(["authorization"])),
                Field::new("realm", string()),
            ],
        )
        .auth(),
        PluginSchema::new(
            "key-auth",
            1250,
            vec![
                Field::new("key_names", array(str_of(StrKind::HeaderName)))
                    .req()
                    .def(json!(["apikey"])),
                Field::new("hide_credentials", boolean())
                    .req()
                    .def(json!(false)),
                anonymous(),
                Field::new("key_in_header", boolean())
                    .req()
                    .def(json!(true)),
                Field::new("key_in_query", boolean()).req().def(json!(true)),
                Field::new("key_in_body", boolean()).req().def(json!(false)),
                Field::new("run_on_preflight", boolean())
                    .req()
                    .def(json!(true)),
                Field::new("realm", string()),
            ],
        )
        .auth(),
        PluginSchema::new(
            "basic-auth",
            1100,
            vec![
                anonymous(),
                Field::new("hide_credentials", boolean())
                    .req()
                    .def(json!(false)),
                Field::new("realm", string()).req().def(json!("service")),
            ],
        )
        .auth(),
        PluginSchema::new(
            "hmac-auth",
            1030,
            vec![
                Field::new("hide_credentials", boolean())
                    .req()
                    .def(json!(false)),
                Field::new("clock_skew", number_gt(0.0)).def(json!(300)),
                anonymous(),
                Field::new("validate_request_body", boolean())
                    .req()
                    .def(json!(false)),
                Field::new("enforce_headers", s_arr()).def(json!([])),
                Field::new(
                    "algorithms",
                    array(one_of(&[
                        "hmac-sha1",
                        "hmac-sha256",
                        "hmac-sha384",
                        "hmac-sha512",
                    ])),
                )
                .def(json!([
                    "hmac-sha1",
                    "hmac-sha256",
                    "hmac-sha384",
                    "hmac-sha512"
                ])),
                Field::new("realm", string()),
            ],
        )
        .auth(),
        PluginSchema::new(
            "acl",
            950,
            vec![
                Field::new("allow", s_arr()),
                Field::new("deny", s_arr()),
                Field::new("hide_groups_header", boolean())
                    .req()
                    .def(json!(false)),
                Field::new("include_consumer_groups", boolean()).def(json!(false)),
                Field::new("always_use_authenticated_groups", boolean())
                    .req()
                    .def(json!(false)),
            ],
        )
        .auth()
        .checks(|c, e| {
            let (a, d) = (set_nonempty(c, "allow"), set_nonempty(c, "deny"));
            if a == d {
                e.add_entity(
                    "exactly one of these fields must be non-empty: 'config.allow', 'config.deny'",
                );
            }
        }),
        rate_limiting(),
        PluginSchema::new(
            "request-size-limiting",
            951,
            vec![
                Field::new("allowed_payload_size", int(0, i64::MAX)).def(json!(128)),
                Field::new("size_unit", one_of(&["megabytes", "kilobytes", "bytes"]))
                    .req()
                    .def(json!("megabytes")),
                Field::new("require_content_length", boolean())
                    .req()
                    .def(json!(false)),
            ],
        ),
        PluginSchema::new(
            "request-termination",
            2,
            vec![
                Field::new("status_code", int(100, 599))
                    .req()
                    .def(json!(503)),
                Field::new("message", string()),
                Field::new("content_type", string()),
                Field::new("body", string()),
                Field::new("echo", boolean()).req().def(json!(false)),
                Field::new("trigger", str_of(StrKind::HeaderName)),
            ],
        )
        .checks(|c, e| {
            if set_nonempty(c, "message") && set_nonempty(c, "body") {
                e.add_entity(
                    "at most one of these fields may be set: 'config.message', 'config.body'",
                );
            }
            if set_nonempty(c, "content_type") && !set_nonempty(c, "body") {
                e.add(
                    "content_type",
                    "value must be null when 'config.body' is not set",
                );
            }
        }),
        PluginSchema::new(
            "request-transformer",
            801,
            vec![
                Field::new("http_method", str_of(StrKind::HeaderName)),
                Field::new(
                    "remove",
                    transform_group(&["body", "headers", "querystring"]),
                ),
                Field::new(
                    "rename",
                    transform_group(&["body", "headers", "querystring"]),
                ),
                Field::new(
                    "replace",
                    transform_group(&["body", "headers", "querystring", "uri"]),
                ),
                Field::new("add", transform_group(&["body", "headers", "querystring"])),
                Field::new(
                    "append",
                    transform_group(&["body", "headers", "querystring"]),
                ),
            ],
        ),
        PluginSchema::new(
            "response-transformer",
            800,
            vec![
                Field::new("remove", transform_group(&["json", "headers"])),
                Field::new("rename", transform_group(&["json", "headers"])),
                Field::new(
                    "replace",
                    transform_group(&["json", "json_types", "headers"]),
                ),
                Field::new("add", transform_group(&["json", "json_types", "headers"])),
                Field::new(
                    "append",
                    transform_group(&["json", "json_types", "headers"]),
                ),
            ],
        )
        .checks(|c, e| {
            // `name:value` entries (rename: `old:new`), header names and values that HTTP
            // allows, and the types of `json` values.
            let token = |s: &str| {
                !s.is_empty()
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
            };
            let field_value = |s: &str| s.bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b));
            let removed = c.get("remove").and_then(|g| g.get("headers"));
            for name in crate::document::strings(removed) {
                if !token(name.trim()) {
                    e.add("remove.headers", format!("invalid header name: '{name}'"));
                }
            }
            for group in ["rename", "replace", "add", "append"] {
                for list in ["headers", "json"] {
                    let items = c.get(group).and_then(|g| g.get(list));
                    for item in crate::document::strings(items) {
                        let path = format!("{group}.{list}");
                        let Some((n, v)) = item.split_once(':').filter(|(n, _)| !n.is_empty())
                        else {
                            e.add(
                                &path,
                                format!("invalid value: '{item}' (expected 'name:value')"),
                            );
                            continue;
                        };
                        if list == "headers" {
                            let (n, v) = (n.trim(), v.trim());
                            let value_ok = if group == "rename" {
                                token(v)
                            } else {
                                field_value(v)
                            };
                            if !token(n) {
                                e.add(&path, format!("invalid header name: '{n}'"));
                            } else if !value_ok {
                                e.add(&path, format!("invalid header value in '{item}'"));
                            }
                        }
                    }
                }
                let types = c.get(group).and_then(|g| g.get("json_types"));
                for t in crate::document::strings(types) {
                    if !matches!(t.as_str(), "string" | "boolean" | "number") {
                        e.add(
                            &format!("{group}.json_types"),
                            format!("expected one of: string, boolean, number (got '{t}')"),
                        );
                    }
                }
            }
        }),
        PluginSchema::new(
            "prometheus",
            13,
            vec![
                Field::new("per_consumer", boolean()).def(json!(false)),
                Field::new("status_code_metrics", boolean()).def(json!(false)),
                Field::new("latency_metrics", boolean()).def(json!(false)),
                Field::new("bandwidth_metrics", boolean()).def(json!(false)),
                Field::new("upstream_health_metrics", boolean()).def(json!(false)),
            ],
        ),
        PluginSchema::new(
            "file-log",
            9,
            vec![
                Field::new("path", string()).req(),
                Field::new("reuse", boolean()).req().def(json!(false)),
                Field::new("custom_fields_by_lua", map(string())),
            ],
        )
        .checks(|c, e| {
            let path = c.get("path").and_then(Value::as_str).unwrap_or_default();
            if path
                .chars()
                .any(|ch| matches!(ch, '*' | '&' | '%' | '`' | '\0'))
            {
                e.add("path", "not a valid filename");
            }
            if set_nonempty(c, "custom_fields_by_lua")
                && c.get("custom_fields_by_lua")
                    .and_then(Value::as_object)
                    .is_some_and(|m| !m.is_empty())
            {
                e.add(
                    "custom_fields_by_lua",
                    "Lua code is not run by Gantry: leave this field empty",
                );
            }
        }),
        PluginSchema::new(
            "http-log",
            12,
            vec![
                Field::new("http_endpoint", str_of(StrKind::Url)).req(),
                Field::new("method", one_of(&["POST", "PUT", "PATCH"])).def(json!("POST")),
                Field::new(
                    "content_type",
                    one_of(&["application/json", "application/json; charset=utf-8"]),
                )
                .def(json!("application/json")),
                Field::new("timeout", number()).def(json!(10000)),
                Field::new("keepalive", number()).def(json!(60000)),
                Field::new("retry_count", int(0, 1_000_000)),
                Field::new("queue_size", int(1, 1_000_000)),
                Field::new("flush_timeout", number()),
                Field::new("headers", map(string())),
                Field::new(
                    "queue",
                    record(vec![
                        Field::new("max_batch_size", int(1, 1_000_000)).def(json!(1)),
                        Field::new(
                            "max_coalescing_delay",
                            Ty::Num {
                                min: Some(0.0),
                                max: Some(3600.0),
                                gt: None,
                            },
                        )
                        .def(json!(1)),
                        Field::new("max_entries", int(1, 1_000_000)).def(json!(10000)),
                        Field::new("max_bytes", int(1, i64::MAX)),
                        Field::new("max_retry_time", number()).def(json!(60)),
                        Field::new(
                            "initial_retry_delay",
                            Ty::Num {
                                min: Some(0.001),
                                max: Some(1_000_000.0),
                                gt: None,
                            },
                        )
                        .def(json!(0.01)),
                        Field::new(
                            "max_retry_delay",
                            Ty::Num {
                                min: Some(0.001),
                                max: Some(1_000_000.0),
                                gt: None,
                            },
                        )
                        .def(json!(60)),
                    ]),
                ),
            ],
        ),
    ]
});

const LIMITS: [&str; 6] = ["second", "minute", "hour", "day", "month", "year"];

fn rate_limiting() -> PluginSchema {
    let mut fields: Vec<Field> = LIMITS
        .iter()
        .map(|l| Field::new(l, number_gt(0.0)))
        .collect();
    fields.extend([
        Field::new(
            "limit_by",
            one_of(&[
                "consumer",
                "credential",
                "ip",
                "service",
                "header",
                "path",
                "consumer-group",
            ]),
        )
        .def(json!("consumer")),
        Field::new("header_name", str_of(StrKind::HeaderName)),
        Field::new("path", str_of(StrKind::Path)),
        Field::new("policy", one_of(&["local", "cluster", "redis"])).def(json!("local")),
        Field::new("fault_tolerant", boolean())
            .req()
            .def(json!(true)),
        Field::new("redis", redis()),
        Field::new("hide_client_headers", boolean())
            .req()
            .def(json!(false)),
        Field::new("error_code", number()).def(json!(429)),
        Field::new("error_message", string()).def(json!("API rate limit exceeded")),
        Field::new("sync_rate", number()).def(json!(-1)),
    ]);
    let mut p = PluginSchema::new("rate-limiting", 910, fields).checks(|c, e| {
        let set: Vec<(&str, f64)> = LIMITS
            .iter()
            .filter_map(|l| c.get(*l).and_then(Value::as_f64).map(|v| (*l, v)))
            .collect();
        if set.is_empty() {
            e.add_entity(
                "at least one of these fields must be non-empty: 'config.second', 'config.minute', 'config.hour', 'config.day', 'config.month', 'config.year'",
            );
        }
        for w in set.windows(2) {
            if w[1].1 < w[0].1 {
                e.add(
                    w[1].0,
                    format!("The limit for {}({}) cannot be lower than the limit for {}({})", w[1].0, w[1].1, w[0].0, w[0].1),
                );
            }
        }
        let policy = c.get("policy").and_then(Value::as_str).unwrap_or("local");
        if policy == "redis" && c.get("redis").and_then(|r| r.get("host")).is_none_or(Value::is_null) {
            e.add_entity("'config.redis.host' is required when 'config.policy' is 'redis'");
        }
        let by = c.get("limit_by").and_then(Value::as_str).unwrap_or("consumer");
        if by == "header" && !set_nonempty(c, "header_name") {
            e.add("header_name", "required field missing when 'config.limit_by' is 'header'");
        }
        if by == "path" && !set_nonempty(c, "path") {
            e.add("path", "required field missing when 'config.limit_by' is 'path'");
        }
    });
    p.partials = &[("redis-ce", "redis")];
    p
}

fn set_nonempty(c: &Map<String, Value>, k: &str) -> bool {
    match c.get(k) {
        None | Some(Value::Null) => false,
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::String(s)) => !s.is_empty(),
        Some(_) => true,
    }
}

/// The schema of a plugin by name.
pub fn plugin(name: &str) -> Option<&'static PluginSchema> {
    PLUGINS.iter().find(|p| p.name == name)
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
