//! Configuration hashes, built from per-entity digests so that a change costs what it touches.
//!
//! Each entity's digest is the MD5 of its type and its canonical serialisation (keys sorted,
//! nulls and timestamps left out). A type's digest is the sum (mod 2^128) of its entities'
//! digests with their count, so it does not depend on order and an upsert or a delete updates
//! it by one subtraction and one addition, without reserialising anything else. The group
//! hashes (`routes`, `services`, `plugins`, `upstreams`, `targets`, `rest`) and the combined
//! hash are MD5s over those sums; an empty group hashes to 32 zeros, and so does an empty
//! configuration. Timestamps are left out, so equal content gives equal hashes across loads,
//! stores and nodes.

use std::collections::BTreeMap;

use md5::{Digest, Md5};
use serde_json::Value;

use crate::{Config, Doc, Entity};

/// The hash of an empty configuration (and of an empty group).
pub const EMPTY_HASH: &str = "00000000000000000000000000000000";

/// The groups a data plane compares to know what to rebuild.
pub const GROUPS: [&str; 6] = [
    "routes",
    "services",
    "plugins",
    "upstreams",
    "targets",
    "rest",
];

/// Per-group hashes and the combined one.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConfigHashes {
    pub config: String,
    pub routes: String,
    pub services: String,
    pub plugins: String,
    pub upstreams: String,
    pub targets: String,
    pub rest: String,
}

fn group_index(entity: &str) -> usize {
    GROUPS[..5].iter().position(|g| *g == entity).unwrap_or(5)
}

/// The digests of a set of entities: their sum (mod 2^128) and their number.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sum {
    total: u128,
    count: u64,
}

impl Sum {
    fn add(&mut self, d: u128) {
        self.total = self.total.wrapping_add(d);
        self.count += 1;
    }
    fn remove(&mut self, d: u128) {
        self.total = self.total.wrapping_sub(d);
        self.count = self.count.saturating_sub(1);
    }
    fn merge(&mut self, o: Sum) {
        self.total = self.total.wrapping_add(o.total);
        self.count += o.count;
    }
    fn hash(self) -> String {
        if self.count == 0 {
            return EMPTY_HASH.to_string();
        }
        let mut h = Md5::new();
        h.update(self.total.to_be_bytes());
        h.update(self.count.to_be_bytes());
        hex::encode(h.finalize())
    }
}

/// The digest of one entity of type `entity`.
pub fn entity_digest(entity: &str, doc: &Doc) -> u128 {
    let mut buf = String::with_capacity(256);
    buf.push_str(entity);
    buf.push(':');
    // Timestamps are bookkeeping, not configuration: the same content hashes the same
    // whether it was loaded today or last year.
    canonical_map(doc, &["created_at", "updated_at"], &mut buf);
    u128::from_be_bytes(Md5::digest(buf.as_bytes()).into())
}

/// The digests of a configuration by entity type, kept up to date change by change
/// ([`Config::apply_tracked`]); [`Digests::hashes`] gives the configuration's hashes from them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Digests {
    by_type: BTreeMap<String, Sum>,
}

impl Digests {
    /// Digest every entity of `config`: the cost of a whole configuration, paid once (a data
    /// plane's start from its cache, a snapshot). Sums do not depend on order, so a large
    /// configuration is digested in slices on the cores there are, and the sums merged.
    pub fn of(config: &Config) -> Digests {
        /// Below this many entities, threads cost more than they save.
        const PARALLEL_ABOVE: usize = 4_096;
        let total: usize = config.entities.values().map(Vec::len).sum();
        let threads = std::thread::available_parallelism()
            .map(|n| n.get().min(8))
            .unwrap_or(1);
        if total < PARALLEL_ABOVE || threads < 2 {
            let mut d = Digests::default();
            for (name, docs) in &config.entities {
                for doc in docs {
                    d.add(name, doc);
                }
            }
            return d;
        }
        let per = total.div_ceil(threads);
        // (entity type, its documents) in slices of about `per` documents.
        type Slice<'a> = Vec<(&'a str, &'a [Entity])>;
        let mut slices: Vec<Slice<'_>> = vec![Vec::new()];
        let mut filled = 0;
        for (name, docs) in &config.entities {
            let mut rest: &[Entity] = docs;
            while !rest.is_empty() {
                let take = (per - filled).min(rest.len());
                let (now, later) = rest.split_at(take);
                if let Some(s) = slices.last_mut() {
                    s.push((name.as_str(), now));
                }
                filled += take;
                rest = later;
                if filled == per {
                    slices.push(Vec::new());
                    filled = 0;
                }
            }
        }
        let parts: Vec<BTreeMap<String, Sum>> = std::thread::scope(|scope| {
            let running: Vec<_> = slices
                .iter()
                .map(|slice| {
                    scope.spawn(move || {
                        let mut d = Digests::default();
                        for (name, docs) in slice {
                            for doc in *docs {
                                d.add(name, doc);
                            }
                        }
                        d.by_type
                    })
                })
                .collect();
            running
                .into_iter()
                .map(|t| t.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .collect()
        });
        let mut d = Digests::default();
        for part in parts {
            for (name, sum) in part {
                d.by_type.entry(name).or_default().merge(sum);
            }
        }
        d
    }

    pub fn add(&mut self, entity: &str, doc: &Entity) {
        let d = doc.digest(entity);
        match self.by_type.get_mut(entity) {
            Some(s) => s.add(d),
            None => {
                let mut s = Sum::default();
                s.add(d);
                self.by_type.insert(entity.to_string(), s);
            }
        }
    }

    pub fn remove(&mut self, entity: &str, doc: &Entity) {
        let d = doc.digest(entity);
        if let Some(s) = self.by_type.get_mut(entity) {
            s.remove(d);
            if s.count == 0 {
                self.by_type.remove(entity);
            }
        }
    }

    /// The digest of the entities of these types, to tell whether any of them changed.
    pub fn of_types(&self, types: &[&str]) -> Sum {
        let mut sum = Sum::default();
        for t in types {
            if let Some(s) = self.by_type.get(*t) {
                sum.merge(*s);
            }
        }
        sum
    }

    /// Whether the entities of `types` are the same here and in `other`.
    pub fn same(&self, other: &Digests, types: &[&str]) -> bool {
        types
            .iter()
            .all(|t| self.by_type.get(*t) == other.by_type.get(*t))
    }

    /// The group hashes and the combined hash.
    pub fn hashes(&self) -> ConfigHashes {
        let mut groups = [Sum::default(); 6];
        for (name, s) in &self.by_type {
            groups[group_index(name)].merge(*s);
        }
        let groups: [String; 6] = groups.map(Sum::hash);
        let config = if groups.iter().all(|g| g == EMPTY_HASH) {
            EMPTY_HASH.to_string()
        } else {
            hex::encode(Md5::digest(groups.concat().as_bytes()))
        };
        let [routes, services, plugins, upstreams, targets, rest] = groups;
        ConfigHashes {
            config,
            routes,
            services,
            plugins,
            upstreams,
            targets,
            rest,
        }
    }
}

/// The hashes of a whole configuration (every entity digested).
pub fn hash_config(config: &Config) -> ConfigHashes {
    Digests::of(config).hashes()
}

/// An object, keys sorted, nulls and the `skip` keys left out.
fn canonical_map(m: &Doc, skip: &[&str], out: &mut String) {
    let mut entries: Vec<(&String, &Value)> = m
        .iter()
        .filter(|(k, v)| !v.is_null() && !skip.contains(&k.as_str()))
        .collect();
    entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
    out.push('{');
    for (i, (k, v)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        // Keys are schema field names; escape them as JSON all the same.
        out.push_str(&serde_json::to_string(k).unwrap_or_default());
        out.push(':');
        canonical(v, out);
    }
    out.push('}');
}

/// Serialise with object keys sorted and no whitespace; nulls are left out of objects,
/// so an absent optional field and an explicit null hash the same.
pub fn canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, _)| k)
                .collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String((*k).clone()).to_string());
                out.push(':');
                canonical(&m[k.as_str()], out);
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, e) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(e, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A large configuration is digested in slices on several threads: the same digests as
    /// one by one.
    #[test]
    fn slices_sum_to_the_whole() {
        let mut c = Config::default();
        for i in 0..10_000 {
            let doc = serde_json::json!({"id": format!("r{i}"), "paths": [format!("/{i}")]});
            c.push("routes", doc.as_object().cloned().unwrap_or_default());
        }
        for i in 0..3 {
            let doc = serde_json::json!({"id": format!("s{i}")});
            c.push("services", doc.as_object().cloned().unwrap_or_default());
        }
        let mut one_by_one = Digests::default();
        for (name, docs) in &c.entities {
            for d in docs {
                one_by_one.add(name, d);
            }
        }
        assert_eq!(Digests::of(&c), one_by_one);
        assert_eq!(Digests::of(&c).hashes(), one_by_one.hashes());
    }
    use serde_json::json;

    #[test]
    fn empty_is_zeros_and_order_does_not_matter() {
        let empty = Config::default();
        assert_eq!(hash_config(&empty).config, EMPTY_HASH);
        let a = json!({"id": "a", "name": "x", "port": 80})
            .as_object()
            .unwrap()
            .clone();
        let b = json!({"port": 81, "id": "b", "name": null})
            .as_object()
            .unwrap()
            .clone();
        let mut c1 = Config::default();
        c1.push("services", a.clone());
        c1.push("services", b.clone());
        let mut c2 = Config::default();
        c2.push("services", b);
        c2.push("services", a);
        let (h1, h2) = (hash_config(&c1), hash_config(&c2));
        assert_eq!(h1, h2);
        assert_ne!(h1.config, EMPTY_HASH);
        assert_ne!(h1.services, EMPTY_HASH);
        assert_eq!(h1.routes, EMPTY_HASH);
    }

    #[test]
    fn digests_follow_changes_as_a_full_rehash_would() {
        let doc = |v: Value| Entity::new(v.as_object().unwrap());
        let mut c = Config::default();
        c.push("services", doc(json!({"id": "a", "host": "a"})));
        c.push("routes", doc(json!({"id": "r", "paths": ["/"]})));
        let mut d = Digests::of(&c);
        d.remove("services", &doc(json!({"id": "a", "host": "a"})));
        d.add("services", &doc(json!({"id": "a", "host": "b"})));
        d.add("consumers", &doc(json!({"id": "c", "username": "u"})));
        let mut want = Config::default();
        want.push("services", doc(json!({"id": "a", "host": "b"})));
        want.push("routes", doc(json!({"id": "r", "paths": ["/"]})));
        want.push("consumers", doc(json!({"id": "c", "username": "u"})));
        assert_eq!(d, Digests::of(&want));
        assert_eq!(d.hashes(), hash_config(&want));
        assert!(d.same(&Digests::of(&c), &["routes"]));
        assert!(!d.same(&Digests::of(&c), &["services"]));
        // Timestamps do not count; every other field does.
        let raw = |v: Value| v.as_object().cloned().unwrap();
        let mut t = raw(json!({"id": "a", "host": "b"}));
        t.insert("updated_at".into(), json!(5));
        assert_eq!(
            entity_digest("services", &t),
            entity_digest("services", &raw(json!({"host": "b", "id": "a"})))
        );
        assert_ne!(entity_digest("services", &t), entity_digest("routes", &t));
        d.remove("consumers", &doc(json!({"id": "c", "username": "u"})));
        d.remove("services", &doc(json!({"id": "a", "host": "b"})));
        d.remove("routes", &doc(json!({"id": "r", "paths": ["/"]})));
        assert_eq!(d.hashes().config, EMPTY_HASH);
    }
}
