//! Who a request may be: the consumers, their credentials by kind (looked up by the
//! authentication plugins), and consumer groups, indexed from the configuration and patched by
//! a change feed's changes.

use std::sync::Arc;

use gantry_model::delta::Change;
use gantry_model::{Config, Entity};
use hyper::header::HeaderValue;
use serde_json::Value;

use super::Registry;

/// A consumer, as plugins and upstream headers need it.
#[derive(Debug)]
pub struct Consumer {
    pub id: String,
    pub username: Option<String>,
    pub custom_id: Option<String>,
    /// `X-Consumer-Id`, `-Username` and `-Custom-Id`, made once with the snapshot.
    pub(super) headers: [Option<HeaderValue>; 3],
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
