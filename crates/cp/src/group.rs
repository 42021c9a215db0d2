//! Control plane groups: a group's data planes run the union of its members' configurations.
//! Two members holding the same entity (by id) or the same unique key (a route's name, a
//! consumer's username, a plugin's scope, a credential's key) conflict: the union is not
//! published while they do, and the group reports each conflict.

use std::collections::HashMap;
use std::sync::Arc;

use gantry_model::document::unique_keys;
use gantry_model::entities::entity;
use gantry_model::Config;

/// One entity that a member holds and another member holds too.
#[derive(Debug, Clone, PartialEq)]
pub struct Conflict {
    /// The member holding it (its key), and the other member's.
    pub member: i64,
    pub other: i64,
    /// Entity type (`routes`) and id.
    pub entity: String,
    pub id: String,
    pub description: String,
}

/// The union of the members' configurations (`(key, configuration)`, in membership order), or
/// every conflict between them.
pub fn union(members: &[(i64, Arc<Config>)]) -> Result<Config, Vec<Conflict>> {
    let mut out = Config::default();
    let mut ids: HashMap<(&str, &str), i64> = HashMap::new();
    let mut keys: HashMap<(&str, &'static str, String), (i64, String)> = HashMap::new();
    let mut conflicts = Vec::new();
    for (member, config) in members {
        for (ty, docs) in &config.entities {
            let schema = entity(ty);
            for e in docs {
                if let Some(first) = ids.insert((ty.as_str(), e.id()), *member) {
                    if first != *member {
                        conflicts.push(Conflict {
                            member: *member,
                            other: first,
                            entity: ty.clone(),
                            id: e.id().to_string(),
                            description: format!(
                                "conflicting entity found: ID={}, Type={ty} (held by two members)",
                                e.id()
                            ),
                        });
                        continue;
                    }
                }
                if let Some(schema) = schema {
                    for (k, v) in unique_keys(schema, &e.doc()) {
                        match keys.get(&(ty.as_str(), k, v.clone())) {
                            Some((first, _)) if first != member => {
                                conflicts.push(Conflict {
                                    member: *member,
                                    other: *first,
                                    entity: ty.clone(),
                                    id: e.id().to_string(),
                                    description: format!(
                                        "conflicting entity found: ID={}, {}={v} (another member has a {} with that {k})",
                                        e.id(),
                                        if k == "name" { "Name" } else { k },
                                        schema.name
                                    ),
                                });
                            }
                            _ => {
                                keys.insert((ty.as_str(), k, v), (*member, e.id().to_string()));
                            }
                        }
                    }
                }
                out.push(ty, e.clone());
            }
        }
    }
    if !conflicts.is_empty() {
        return Err(conflicts);
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(routes: &[(&str, &str)]) -> Arc<Config> {
        let mut c = Config::default();
        for (id, name) in routes {
            let d = json!({"id": id, "name": name, "paths": ["/"], "protocols": ["http"]});
            c.push("routes", d.as_object().cloned().unwrap());
        }
        Arc::new(c)
    }

    #[test]
    fn members_union_and_conflicts() {
        let a = config(&[("a1", "ra")]);
        let b = config(&[("b1", "rb")]);
        let u = union(&[(2, a.clone()), (3, b.clone())]).unwrap();
        assert_eq!(u.docs("routes").len(), 2);
        // The same route name in two members: a conflict naming both.
        let b2 = config(&[("b1", "rb"), ("b2", "ra")]);
        let e = union(&[(2, a.clone()), (3, b2)]).unwrap_err();
        assert_eq!(e.len(), 1);
        assert_eq!((e[0].member, e[0].other, e[0].id.as_str()), (3, 2, "b2"));
        assert!(e[0].description.contains("Name=ra"), "{}", e[0].description);
        // The same id in two members.
        let e = union(&[(2, a.clone()), (3, config(&[("a1", "other")]))]).unwrap_err();
        assert_eq!(e[0].id, "a1");
    }
}
