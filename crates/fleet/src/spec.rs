//! A configuration request (`PUT /v2/cloud-gateways/configurations`), checked field by field,
//! and the stored manifest it becomes.

use std::time::Duration;

use gantry_konnect::error::Invalid;
use serde_json::{json, Map, Value};

use crate::provider::Providers;

pub const GEOS: [&str; 6] = ["us", "eu", "au", "me", "in", "sg"];
pub const API_ACCESS: [&str; 3] = ["private", "public", "private+public"];
pub const INSTANCE_TYPES: [&str; 3] = ["small", "medium", "large"];

/// Settings a managed group's nodes get from the control plane, not from `environment`.
const OWNED: [&str; 18] = [
    "KONG_ROLE",
    "KONG_DATABASE",
    "KONG_PREFIX",
    "KONG_NODE_ID",
    "KONG_PROXY_LISTEN",
    "KONG_STATUS_LISTEN",
    "KONG_ADMIN_LISTEN",
    "KONG_WORKER_THREADS",
    "KONG_CLUSTER_MTLS",
    "KONG_CLUSTER_CERT",
    "KONG_CLUSTER_CERT_KEY",
    "KONG_CLUSTER_CA_CERT",
    "KONG_CLUSTER_CONTROL_PLANE",
    "KONG_CLUSTER_SERVER_NAME",
    "KONG_CLUSTER_TELEMETRY_ENDPOINT",
    "KONG_CLUSTER_TELEMETRY_SERVER_NAME",
    "KONG_LUA_SSL_TRUSTED_CERTIFICATE",
    "KONG_VITALS",
];

/// How a group is sized.
#[derive(Debug, Clone, PartialEq)]
pub enum Autoscale {
    Static {
        instance_type: String,
        requested: usize,
    },
    Autopilot {
        base_rps: u64,
        max_rps: u64,
    },
}

/// One group as configured.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupSpec {
    pub provider: String,
    pub region: String,
    pub autoscale: Autoscale,
    pub environment: Vec<(String, String)>,
}

/// A checked request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub control_plane_id: String,
    pub control_plane_geo: String,
    pub version: String,
    pub api_access: String,
    pub groups: Vec<GroupSpec>,
    /// The groups as given, for `dataplane_group_config`.
    pub group_json: Vec<Value>,
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn unknown(prefix: &str, o: &Map<String, Value>, known: &[&str], out: &mut Vec<Invalid>) {
    for k in o.keys().filter(|k| !known.contains(&k.as_str())) {
        let field = format!("{prefix}{k}");
        out.push(Invalid::body(
            field.clone(),
            "unknown_property",
            format!("property {field} should not exist"),
        ));
    }
}

fn string<'a>(
    o: &'a Map<String, Value>,
    field: &str,
    key: &str,
    required: bool,
    out: &mut Vec<Invalid>,
) -> Option<&'a str> {
    match o.get(key) {
        None | Some(Value::Null) => {
            if required {
                out.push(Invalid::body(
                    field,
                    "required",
                    format!("{field} is required"),
                ));
            }
            None
        }
        Some(Value::String(s)) => Some(s),
        Some(v) => {
            out.push(Invalid::body(
                field,
                "type",
                format!("{field} must be a string, not {}", kind_of(v)),
            ));
            None
        }
    }
}

fn one_of<'a>(
    v: Option<&'a str>,
    field: &str,
    choices: &[&str],
    out: &mut Vec<Invalid>,
) -> Option<&'a str> {
    let v = v?;
    if choices.contains(&v) {
        return Some(v);
    }
    out.push(
        Invalid::body(
            field,
            "enum",
            format!(
                "{field} must be one of the following values: {}",
                choices.join(", ")
            ),
        )
        .with("choices", json!(choices)),
    );
    None
}

fn integer(
    o: &Map<String, Value>,
    field: &str,
    key: &str,
    min: u64,
    out: &mut Vec<Invalid>,
) -> Option<u64> {
    match o.get(key) {
        None | Some(Value::Null) => {
            out.push(Invalid::body(
                field,
                "required",
                format!("{field} is required"),
            ));
            None
        }
        Some(v) => match v.as_u64() {
            Some(n) if n >= min => Some(n),
            Some(_) => {
                out.push(
                    Invalid::body(field, "min", format!("{field} must be at least {min}"))
                        .with("minimum", json!(min)),
                );
                None
            }
            None => {
                out.push(Invalid::body(
                    field,
                    "is_integer",
                    format!("{field} must be an integer number"),
                ));
                None
            }
        },
    }
}

fn autoscale(v: Option<&Value>, at: &str, out: &mut Vec<Invalid>) -> Option<Autoscale> {
    let field = format!("{at}.autoscale");
    let Some(v) = v.filter(|v| !v.is_null()) else {
        out.push(Invalid::body(
            field.clone(),
            "required",
            format!("{field} is required: a managed group needs a size (static or autopilot)"),
        ));
        return None;
    };
    let Value::Object(o) = v else {
        out.push(Invalid::body(
            field.clone(),
            "type",
            format!("{field} must be an object"),
        ));
        return None;
    };
    let kind = one_of(
        string(o, &format!("{field}.kind"), "kind", true, out),
        &format!("{field}.kind"),
        &["static", "autopilot"],
        out,
    )?;
    let p = format!("{field}.");
    if kind == "static" {
        unknown(
            &p,
            o,
            &["kind", "instance_type", "requested_instances"],
            out,
        );
        let t = one_of(
            string(o, &format!("{p}instance_type"), "instance_type", true, out),
            &format!("{p}instance_type"),
            &INSTANCE_TYPES,
            out,
        );
        let n = integer(
            o,
            &format!("{p}requested_instances"),
            "requested_instances",
            1,
            out,
        );
        Some(Autoscale::Static {
            instance_type: t?.to_string(),
            requested: n? as usize,
        })
    } else {
        unknown(&p, o, &["kind", "base_rps", "max_rps"], out);
        let base = integer(o, &format!("{p}base_rps"), "base_rps", 1, out)?;
        let max = match o.get("max_rps") {
            None | Some(Value::Null) => base * 10,
            Some(_) => integer(o, &format!("{p}max_rps"), "max_rps", base, out)?,
        };
        Some(Autoscale::Autopilot {
            base_rps: base,
            max_rps: max,
        })
    }
}

fn environment(v: Option<&Value>, at: &str, out: &mut Vec<Invalid>) -> Vec<(String, String)> {
    let field = format!("{at}.environment");
    let items = match v {
        None | Some(Value::Null) => return Vec::new(),
        Some(Value::Array(a)) => a,
        Some(_) => {
            out.push(Invalid::body(
                field.clone(),
                "type",
                format!("{field} must be an array"),
            ));
            return Vec::new();
        }
    };
    let mut env = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let f = format!("{field}.{i}");
        let Value::Object(o) = item else {
            out.push(Invalid::body(
                f.clone(),
                "type",
                format!("{f} must be an object with name and value"),
            ));
            continue;
        };
        unknown(&format!("{f}."), o, &["name", "value"], out);
        let name = string(o, &format!("{f}.name"), "name", true, out);
        let value = string(o, &format!("{f}.value"), "value", true, out);
        let (Some(name), Some(value)) = (name, value) else {
            continue;
        };
        let nf = format!("{f}.name");
        if value.is_empty() || value.len() > 2048 {
            out.push(Invalid::body(
                format!("{f}.value"),
                "length",
                format!("{f}.value must be 1 to 2048 characters long"),
            ));
            continue;
        }
        if name.starts_with("OTEL_") {
            out.push(Invalid::body(
                nf,
                "unsupported",
                format!("{name}: Gantry's data planes read no OTEL_ variables; export traces with the opentelemetry plugin"),
            ));
            continue;
        }
        let Some(setting) = name.strip_prefix("KONG_").map(str::to_ascii_lowercase) else {
            out.push(Invalid::body(
                nf,
                "pattern",
                format!("{f}.name must be prefixed by KONG_ or OTEL_"),
            ));
            continue;
        };
        if OWNED.contains(&name) {
            out.push(Invalid::body(
                nf,
                "managed",
                format!("{name} is set by the managed group itself and cannot be overridden"),
            ));
            continue;
        }
        match gantry_conf::key(&setting) {
            None => out.push(Invalid::body(
                nf,
                "unknown_setting",
                format!("{name}: '{setting}' is not a setting Gantry knows"),
            )),
            Some(k) => match k.kind.check(value) {
                Ok(()) => env.push((name.to_string(), value.to_string())),
                Err(e) => out.push(Invalid::body(
                    format!("{f}.value"),
                    "invalid",
                    format!("{name}: {e}"),
                )),
            },
        }
    }
    env
}

/// Check a request body. Regions and versions, which a provider may need to ask a daemon
/// about, are checked by the caller (`api`).
pub fn check(body: &Value, providers: &Providers) -> Result<Request, Vec<Invalid>> {
    let mut out = Vec::new();
    let Value::Object(o) = body else {
        return Err(vec![Invalid::body(
            "body",
            "type",
            "the body must be a JSON object",
        )]);
    };
    unknown(
        "",
        o,
        &[
            "control_plane_id",
            "control_plane_geo",
            "version",
            "dataplane_groups",
            "kind",
            "api_access",
        ],
        &mut out,
    );
    let cp = string(o, "control_plane_id", "control_plane_id", true, &mut out);
    if let Some(id) = cp {
        if uuid::Uuid::parse_str(id).is_err() {
            out.push(Invalid::body(
                "control_plane_id",
                "is_uuid",
                "control_plane_id must be a UUID",
            ));
        }
    }
    let geo = one_of(
        string(o, "control_plane_geo", "control_plane_geo", true, &mut out),
        "control_plane_geo",
        &GEOS,
        &mut out,
    );
    let version = string(o, "version", "version", true, &mut out);
    if let Some(kind) = string(o, "kind", "kind", false, &mut out) {
        if kind != "dedicated.v0" {
            out.push(
                Invalid::body(
                    "kind",
                    "enum",
                    format!("kind {kind} is not offered by Gantry's providers: only dedicated.v0 (data planes this control plane runs)"),
                )
                .with("choices", json!(["dedicated.v0"])),
            );
        }
    }
    let access = match o.get("api_access") {
        None | Some(Value::Null) => Some("private+public"),
        _ => one_of(
            string(o, "api_access", "api_access", false, &mut out),
            "api_access",
            &API_ACCESS,
            &mut out,
        ),
    };
    let mut groups = Vec::new();
    let mut group_json = Vec::new();
    match o.get("dataplane_groups") {
        None | Some(Value::Null) => out.push(Invalid::body(
            "dataplane_groups",
            "required",
            "dataplane_groups is required",
        )),
        Some(Value::Array(items)) => {
            for (i, g) in items.iter().enumerate() {
                let at = format!("dataplane_groups.{i}");
                let Value::Object(go) = g else {
                    out.push(Invalid::body(
                        at.clone(),
                        "type",
                        format!("{at} must be an object"),
                    ));
                    continue;
                };
                unknown(
                    &format!("{at}."),
                    go,
                    &[
                        "provider",
                        "region",
                        "cloud_gateway_network_id",
                        "autoscale",
                        "environment",
                    ],
                    &mut out,
                );
                if go
                    .get("cloud_gateway_network_id")
                    .is_some_and(|v| !v.is_null())
                {
                    out.push(Invalid::body(
                        format!("{at}.cloud_gateway_network_id"),
                        "unsupported",
                        "Gantry has no cloud gateway networks: the region names where the group runs",
                    ));
                }
                let pf = format!("{at}.provider");
                let provider = string(go, &pf, "provider", true, &mut out);
                let provider = provider.and_then(|p| match providers.get(p) {
                    Some(prov) => Some((p, prov)),
                    None => {
                        out.push(
                            Invalid::body(
                                pf.clone(),
                                "enum",
                                format!("{pf}: no provider '{p}' is registered here"),
                            )
                            .with("choices", json!(providers.names())),
                        );
                        None
                    }
                });
                let region = string(go, &format!("{at}.region"), "region", true, &mut out);
                let scale = autoscale(go.get("autoscale"), &at, &mut out);
                let env = environment(go.get("environment"), &at, &mut out);
                if let (Some((p, _)), Some(region), Some(scale)) = (provider, region, scale) {
                    if groups
                        .iter()
                        .any(|g: &GroupSpec| g.provider == p && g.region == region)
                    {
                        out.push(Invalid::body(
                            format!("{at}.region"),
                            "unique",
                            format!("two groups name provider {p} and region {region}"),
                        ));
                    }
                    groups.push(GroupSpec {
                        provider: p.to_string(),
                        region: region.to_string(),
                        autoscale: scale,
                        environment: env,
                    });
                    group_json.push(g.clone());
                }
            }
        }
        Some(_) => out.push(Invalid::body(
            "dataplane_groups",
            "type",
            "dataplane_groups must be an array",
        )),
    }
    if !out.is_empty() {
        return Err(out);
    }
    let (Some(cp), Some(geo), Some(version), Some(access)) = (cp, geo, version, access) else {
        return Err(out);
    };
    Ok(Request {
        control_plane_id: cp.to_string(),
        control_plane_geo: geo.to_string(),
        version: version.to_string(),
        api_access: access.to_string(),
        groups,
        group_json,
    })
}

/// A group's spec read back from its stored form (`dataplane_groups` item).
pub fn group_of(g: &Map<String, Value>) -> Option<GroupSpec> {
    let a = g.get("autoscale")?;
    let autoscale = match a.get("kind")?.as_str()? {
        "static" => Autoscale::Static {
            instance_type: a.get("instance_type")?.as_str()?.to_string(),
            requested: a.get("requested_instances")?.as_u64()? as usize,
        },
        _ => {
            let base = a.get("base_rps")?.as_u64()?;
            Autoscale::Autopilot {
                base_rps: base,
                max_rps: a
                    .get("max_rps")
                    .and_then(Value::as_u64)
                    .unwrap_or(base * 10),
            }
        }
    };
    let environment = g
        .get("environment")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|e| {
                    Some((
                        e.get("name")?.as_str()?.to_string(),
                        e.get("value")?.as_str()?.to_string(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    Some(GroupSpec {
        provider: g.get("provider")?.as_str()?.to_string(),
        region: g.get("region")?.as_str()?.to_string(),
        autoscale,
        environment,
    })
}

/// The scale-in delay and per-node capacity autopilot works with.
#[derive(Debug, Clone, Copy)]
pub struct Sizing {
    pub instance_rps: u64,
    pub scale_in_delay: Duration,
}
