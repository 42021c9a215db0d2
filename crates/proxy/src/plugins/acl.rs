//! acl: requests allowed or denied by the ACL groups of the consumer an authentication plugin
//! identified, as Kong 3.9's plugin does.
//!
//! - No consumer: 401 `Unauthorized` (403 `You cannot consume this service` when a credential
//!   was given but found no consumer).
//! - `allow`: the consumer must be in one of the groups; `deny`: in none of them. A consumer in
//!   no group is refused by `allow` (401 when it came without a credential, as an anonymous
//!   consumer does) and passes `deny`. A refusal is 403 `You cannot consume this service`.
//! - Allowed: `X-Consumer-Groups` upstream holds the consumer's groups (`a, b`), unless
//!   `hide_groups_header`. Kong leaves a client's own `X-Consumer-Groups` in place when the
//!   header is hidden; Gantry removes it, so that an upstream never sees groups a client made up.
//! - Consumer groups: the names of the consumer's consumer groups count as its groups too, and
//!   join `X-Consumer-Groups` after its ACL groups, each name once. This is Kong Enterprise's
//!   `include_consumer_groups = true`, always on: Kong 3.9 OSS has neither consumer groups nor
//!   that field, so its acl configurations (and decK files) stay field for field as they are,
//!   and a consumer group counts only once a consumer is put in one.
//! - Kong OSS 3.9 has no plugin that sets authenticated groups without a consumer (its
//!   Enterprise LDAP and OpenID Connect plugins do), so `always_use_authenticated_groups` has no
//!   groups to prefer and the consumer's are used, as Kong OSS does.

use std::sync::Arc;

use serde_json::{json, Value};

use gantry_model::plugins::*;
use gantry_model::schema::*;

use super::Flow;
use super::{error, Ctx, Descriptor, Instance, Plugin, Shared};
use crate::names;

struct Acl {
    /// The groups of `allow`, or of `deny` when `deny` is the list given.
    groups: Vec<String>,
    deny: bool,
    hide_groups_header: bool,
}

pub static DESCRIPTOR: Descriptor = Descriptor::new(schema, build).with_groups();

fn schema() -> PluginSchema {
    PluginSchema::new(
        "acl",
        950,
        vec![
            Field::new("allow", array(string())),
            Field::new("deny", array(string())),
            Field::new("hide_groups_header", boolean())
                .req()
                .def(json!(false)),
            Field::new("always_use_authenticated_groups", boolean())
                .req()
                .def(json!(false)),
        ],
    )
    .auth()
    .checks(|c, e| {
        let set = |k: &str| {
            c.get(k)
                .and_then(Value::as_array)
                .is_some_and(|a| !a.is_empty())
        };
        match (set("allow"), set("deny")) {
            (false, false) => e.add_entity(
                "at least one of these fields must be non-empty: 'config.allow', 'config.deny'",
            ),
            (true, true) => e.add_entity(
                "exactly one of these fields must be non-empty: 'config.allow', 'config.deny'",
            ),
            _ => {}
        }
    })
}

fn build(_: &Instance, c: &Value, _: &Shared) -> Result<Arc<dyn Plugin>, CompileError> {
    let deny = super::conf_strings(c, "deny");
    let is_deny = !deny.is_empty();
    Ok(Arc::new(Acl {
        groups: if is_deny {
            deny
        } else {
            super::conf_strings(c, "allow")
        },
        deny: is_deny,
        hide_groups_header: super::conf_bool(c, "hide_groups_header", false),
    }))
}

const DENIED: &str = "You cannot consume this service";

impl Plugin for Acl {
    fn access<'a>(&'a self, ctx: &'a mut Ctx<'_>) -> Flow<'a> {
        self.decide(ctx).into()
    }
}

impl Acl {
    fn decide(&self, ctx: &mut Ctx<'_>) -> Option<hyper::Response<crate::server::ProxyBody>> {
        if self.hide_groups_header {
            ctx.req.headers.remove(names::X_CONSUMER_GROUPS);
        }
        let refuse = |ctx: &Ctx<'_>| {
            Some(if ctx.credential.is_some() {
                error(403, DENIED)
            } else {
                error(401, "Unauthorized")
            })
        };
        let Some(consumer) = ctx.consumer.as_ref() else {
            return refuse(ctx);
        };
        let acl_groups = ctx.identities.groups(&consumer.id).cloned();
        let consumer_groups = ctx.identities.consumer_groups(&consumer.id);
        let in_group = acl_groups
            .as_ref()
            .is_some_and(|g| g.names.iter().any(|n| self.groups.contains(n)))
            || consumer_groups
                .iter()
                .any(|g| self.groups.iter().any(|n| **n == *g.name));
        if acl_groups.is_none() && consumer_groups.is_empty() && !self.deny {
            return refuse(ctx);
        }
        if in_group == self.deny {
            return Some(error(403, DENIED));
        }
        if !self.hide_groups_header {
            let value = if consumer_groups.is_empty() {
                acl_groups.and_then(|g| g.header.clone())
            } else {
                let mut names: Vec<&str> = acl_groups
                    .as_ref()
                    .map(|g| g.names.iter().map(String::as_str).collect())
                    .unwrap_or_default();
                for g in consumer_groups {
                    if !names.contains(&&*g.name) {
                        names.push(&g.name);
                    }
                }
                hyper::header::HeaderValue::from_str(&names.join(", ")).ok()
            };
            let value = value.unwrap_or(hyper::header::HeaderValue::from_static(""));
            ctx.req.headers.insert(names::X_CONSUMER_GROUPS, value);
        }
        None
    }
}
