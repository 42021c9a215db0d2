//! ip-restriction: requests allowed or denied by the client's address, as Kong 3.9's plugin
//! does. The address is the client's as `trusted_ips` / `real_ip_header` give it; `deny` is
//! checked first, then `allow`; a refusal answers `status` (403) with `message` (Kong's
//! `IP address not allowed: <address>`).

use std::sync::Arc;

use serde_json::Value;

use gantry_model::plugins::*;
use gantry_model::schema::*;

use super::Flow;
use super::{error, Ctx, Descriptor, Instance, Plugin, Shared};
use crate::trust::IpSet;

struct IpRestriction {
    allow: IpSet,
    deny: IpSet,
    status: u16,
    message: Option<String>,
}

pub static DESCRIPTOR: Descriptor = Descriptor::new(schema, build);

fn schema() -> PluginSchema {
    PluginSchema::new(
        "ip-restriction",
        990,
        vec![
            Field::new("allow", array(str_of(StrKind::IpOrCidr))),
            Field::new("deny", array(str_of(StrKind::IpOrCidr))),
            Field::new("status", number()),
            Field::new("message", string()),
        ],
    )
    .protocols(&["http", "https", "tcp", "tls", "grpc", "grpcs"])
    .any_protocol()
    .checks(|c, e| {
        let set = |k: &str| {
            c.get(k)
                .and_then(Value::as_array)
                .is_some_and(|a| !a.is_empty())
        };
        if !set("allow") && !set("deny") {
            e.add_entity(
                "at least one of these fields must be non-empty: 'config.allow', 'config.deny'",
            );
        }
    })
}

fn build(_: &Instance, c: &Value, _: &Shared) -> Result<Arc<dyn Plugin>, CompileError> {
    let list = |k: &str| {
        let items = c.get(k).and_then(Value::as_array);
        IpSet::parse(items.into_iter().flatten().filter_map(Value::as_str))
            .map_err(|bad| CompileError::field(k, format!("invalid ip or cidr range: '{bad}'")))
    };
    let status = match c.get("status").and_then(Value::as_f64) {
        None => 403,
        Some(s) if s.fract() == 0.0 && (100.0..=999.0).contains(&s) => s as u16,
        // Kong's schema takes any number; an HTTP response needs a status code.
        Some(_) => {
            return Err(CompileError::field(
                "status",
                "must be an HTTP status code, from 100 to 999",
            ))
        }
    };
    Ok(Arc::new(IpRestriction {
        allow: list("allow")?,
        deny: list("deny")?,
        status,
        message: c.get("message").and_then(Value::as_str).map(str::to_string),
    }))
}

impl Plugin for IpRestriction {
    fn access<'a>(&'a self, ctx: &'a mut Ctx<'_>) -> Flow<'a> {
        let ip = ctx.client_ip;
        let refused = (!self.deny.is_empty() && self.deny.contains(ip))
            || (!self.allow.is_empty() && !self.allow.contains(ip));
        if !refused {
            return None.into();
        }
        let message = match &self.message {
            Some(m) => m.clone(),
            None => format!("IP address not allowed: {ip}"),
        };
        tracing::warn!(client = %ip, "{message}");
        Some(error(self.status, &message)).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_blocks() {
        let s = IpSet::parse(["10.0.0.0/8", "192.0.2.1", "2001:db8::/32"]).unwrap();
        for ip in ["10.1.2.3", "192.0.2.1", "::ffff:10.0.0.1", "2001:db8::5"] {
            assert!(s.contains(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["11.0.0.1", "192.0.2.2", "2001:db9::1"] {
            assert!(!s.contains(ip.parse().unwrap()), "{ip}");
        }
        assert_eq!(IpSet::parse(["10.0.0.0/8", "nope"]).unwrap_err(), "nope");
    }
}
