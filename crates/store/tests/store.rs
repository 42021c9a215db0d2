//! The store's behaviour, the same on SQLite and PostgreSQL.

use gantry_model::document::{prepare, Secrets};
use gantry_model::entities::entity;
use gantry_model::hash::hash_config;
use gantry_model::Doc;
use gantry_store::{ListQuery, Op, StoreError, TagFilter};
use gantry_testkit::all_stores;
use serde_json::json;

fn doc(kind: &str, v: serde_json::Value) -> (&'static gantry_model::entities::EntitySchema, Doc) {
    let s = entity(kind).unwrap();
    (
        s,
        prepare(
            s,
            v.as_object().unwrap().clone(),
            Secrets::Clear,
            1,
            &gantry_testkit::bundled_plugins(),
        )
        .unwrap(),
    )
}

#[tokio::test]
async fn crud_constraints_cascade_and_change_log() {
    for t in all_stores().await {
        let st = &t.store;
        let v0 = st.version().await.unwrap();
        let (ss, svc) = doc(
            "services",
            json!({"name": "s1", "host": "a.example", "tags": ["x", "y"]}),
        );
        let sid = svc["id"].as_str().unwrap().to_string();
        let v1 = st.write(vec![Op::Insert(ss, svc.clone())]).await.unwrap();
        assert!(v1 > v0, "{}", t.name);
        // Same id again: primary key violation; same name: unique violation.
        assert!(matches!(
            st.write(vec![Op::Insert(ss, svc.clone())]).await,
            Err(StoreError::PrimaryKey { .. })
        ));
        let (_, dup) = doc("services", json!({"name": "s1", "host": "b.example"}));
        assert!(matches!(
            st.write(vec![Op::Insert(ss, dup)]).await,
            Err(StoreError::Unique { .. })
        ));
        // A route on the service, a plugin on the route.
        let (rs, route) = doc(
            "routes",
            json!({"name": "r1", "paths": ["/"], "service": {"id": sid}}),
        );
        let rid = route["id"].as_str().unwrap().to_string();
        let (ps, plugin) = doc("plugins", json!({"name": "key-auth", "route": {"id": rid}}));
        st.write(vec![Op::Insert(rs, route), Op::Insert(ps, plugin)])
            .await
            .unwrap();
        // A reference to nothing is refused, and the failed write left nothing behind.
        let before = st.version().await.unwrap();
        let (_, orphan) = doc(
            "routes",
            json!({"paths": ["/o"], "service": {"id": "8b6f1f4e-93a0-4b5e-9a56-3f0c6b1c9f11"}}),
        );
        let (_, ok) = doc("services", json!({"name": "s2", "host": "c.example"}));
        let e = st
            .write(vec![Op::Insert(ss, ok), Op::Insert(rs, orphan)])
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::ForeignKey { .. }), "{e}");
        assert_eq!(st.version().await.unwrap(), before);
        assert!(st
            .find_by_key("services", "name", "s2")
            .await
            .unwrap()
            .is_none());
        // The service is referenced by a route: deleting it is refused.
        let e = st
            .write(vec![Op::Delete(ss, sid.clone())])
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::ReferencedBy { .. }), "{e}");
        // Deleting the route cascades to its plugin.
        let v = st.write(vec![Op::Delete(rs, rid.clone())]).await.unwrap();
        assert_eq!(st.count("plugins").await.unwrap(), 0);
        let changes = st.changes_since(v - 1, 100).await.unwrap();
        let ops: Vec<(String, String)> = changes
            .iter()
            .map(|c| (c.entity_type.clone(), c.op.clone()))
            .collect();
        assert!(ops.contains(&("routes".into(), "delete".into())));
        assert!(ops.contains(&("plugins".into(), "delete".into())));
        // Lookups by key and tags.
        assert_eq!(
            st.find_by_key("services", "name", "s1")
                .await
                .unwrap()
                .unwrap()["id"],
            json!(sid)
        );
        let page = st
            .list(
                "services",
                &ListQuery {
                    tags: Some(TagFilter::All(vec!["x".into(), "y".into()])),
                    size: 10,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(page.data.len(), 1);
        let page = st
            .list(
                "services",
                &ListQuery {
                    tags: Some(TagFilter::All(vec!["x".into(), "z".into()])),
                    size: 10,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert!(page.data.is_empty());
        let page = st
            .list(
                "services",
                &ListQuery {
                    tags: Some(TagFilter::Any(vec!["z".into(), "y".into()])),
                    size: 10,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(page.data.len(), 1);
        let (tags, _) = st.tags(None, 10, None).await.unwrap();
        assert_eq!(tags.len(), 2);
    }
}

#[tokio::test]
async fn pagination_walks_every_entity_once() {
    for t in all_stores().await {
        let st = &t.store;
        let s = entity("consumers").unwrap();
        let ops: Vec<Op> = (0..25)
            .map(|i| {
                Op::Insert(
                    s,
                    prepare(
                        s,
                        json!({"username": format!("u{i}")})
                            .as_object()
                            .unwrap()
                            .clone(),
                        Secrets::Clear,
                        1,
                        &gantry_testkit::bundled_plugins(),
                    )
                    .unwrap(),
                )
            })
            .collect();
        st.write(ops).await.unwrap();
        let mut seen = Vec::new();
        let mut offset = None;
        loop {
            let page = st
                .list(
                    "consumers",
                    &ListQuery {
                        size: 10,
                        offset: offset.clone(),
                        ..Default::default()
                    },
                )
                .await
                .unwrap();
            seen.extend(
                page.data
                    .iter()
                    .map(|d| d["username"].as_str().unwrap().to_string()),
            );
            match page.next_offset {
                Some(o) => offset = Some(o),
                None => break,
            }
        }
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 25, "{}", t.name);
        assert!(matches!(
            st.list(
                "consumers",
                &ListQuery {
                    size: 10,
                    offset: Some("!!".into()),
                    ..Default::default()
                }
            )
            .await,
            Err(StoreError::InvalidOffset)
        ));
    }
}

#[tokio::test]
async fn import_export_round_trip_keeps_the_hash() {
    let text = r#"
_format_version: "3.0"
services:
- name: a
  url: http://a.example:8080/base
  tags: [t1]
  routes:
  - name: r1
    paths: ["/a", "~/b/(?<id>\\d+)$"]
    plugins:
    - name: rate-limiting
      config: { minute: 10 }
consumers:
- username: alice
  keyauth_credentials: [{ key: k1 }]
  basicauth_credentials: [{ username: alice, password: s3cret }]
  acls: [{ group: admins }]
upstreams:
- name: up
  targets: [{ target: "10.0.0.1:80", weight: 50 }]
"#;
    let value = gantry_model::declarative::parse_text(text).unwrap();
    let config = gantry_model::declarative::load(
        value,
        gantry_model::declarative::LoadOptions {
            now: 5,
            plugins: gantry_testkit::bundled_plugins(),
        },
    )
    .unwrap();
    for t in all_stores().await {
        t.store.import(&config).await.unwrap();
        let (exported, _) = t.store.export().await.unwrap();
        assert_eq!(hash_config(&exported), hash_config(&config), "{}", t.name);
        // Export to the declarative format, load into a new empty store: same hash.
        let doc = gantry_model::declarative::export(&exported);
        let again = gantry_model::declarative::load(
            doc,
            gantry_model::declarative::LoadOptions {
                now: 9,
                plugins: gantry_testkit::bundled_plugins(),
            },
        )
        .unwrap();
        let fresh = match t.name {
            "sqlite" => gantry_testkit::sqlite_store().await,
            _ => gantry_testkit::postgres_store().await.unwrap(),
        };
        fresh.store.import(&again).await.unwrap();
        let (back, _) = fresh.store.export().await.unwrap();
        assert_eq!(hash_config(&back), hash_config(&config), "{}", t.name);
        // Importing the same file twice changes nothing.
        t.store.import(&config).await.unwrap();
        let (twice, _) = t.store.export().await.unwrap();
        assert_eq!(hash_config(&twice), hash_config(&config));
        // Replace empties what the new config lacks.
        t.store
            .replace(&gantry_model::Config::default())
            .await
            .unwrap();
        let (empty, _) = t.store.export().await.unwrap();
        assert_eq!(hash_config(&empty).config, gantry_model::hash::EMPTY_HASH);
    }
}

/// A configuration kept up to date by applying `delta_since` equals a fresh export, through
/// inserts, updates, cascading deletes and a replace (which asks for a full export).
#[tokio::test]
async fn deltas_replay_to_the_exported_configuration() {
    use gantry_store::StoreDelta;
    for t in all_stores().await {
        let st = &t.store;
        let (mut mirror, mut at) = st.export().await.unwrap();
        let catch_up = |mirror: &mut gantry_model::Config, at: &mut i64, d: StoreDelta| match d {
            StoreDelta::Changes { to, changes } => {
                mirror.apply(&changes).unwrap();
                *at = to;
            }
            other => panic!("{}: {other:?}", t.name),
        };
        let (ss, svc) = doc("services", json!({"name": "s", "host": "a.example"}));
        let sid = svc["id"].as_str().unwrap().to_string();
        let (rs, route) = doc("routes", json!({"paths": ["/"], "service": {"id": sid}}));
        let rid = route["id"].as_str().unwrap().to_string();
        let (cs, consumer) = doc("consumers", json!({"username": "u"}));
        let cid = consumer["id"].as_str().unwrap().to_string();
        let (ks, key) = doc(
            "keyauth_credentials",
            json!({"key": "k", "consumer": {"id": cid}}),
        );
        st.write(vec![
            Op::Insert(ss, svc.clone()),
            Op::Insert(rs, route),
            Op::Insert(cs, consumer),
            Op::Insert(ks, key),
        ])
        .await
        .unwrap();
        let mut svc2 = svc.clone();
        svc2.insert("host".into(), json!("b.example"));
        st.write(vec![Op::Upsert(ss, svc2)]).await.unwrap();
        let d = st.delta_since(at, 1000).await.unwrap();
        if let StoreDelta::Changes { changes, .. } = &d {
            // Two writes to the service collapse into one change.
            assert_eq!(changes.len(), 4, "{}", t.name);
        }
        catch_up(&mut mirror, &mut at, d);
        assert_eq!(
            st.delta_since(at, 1000).await.unwrap(),
            StoreDelta::Unchanged
        );
        let (now, v) = st.export().await.unwrap();
        assert_eq!(
            (hash_config(&mirror), at),
            (hash_config(&now), v),
            "{}",
            t.name
        );
        // Deleting the consumer cascades to its key: both arrive as deletes.
        st.write(vec![
            Op::Delete(rs, rid),
            Op::Delete(ss, sid),
            Op::Delete(cs, cid),
        ])
        .await
        .unwrap();
        let d = st.delta_since(at, 1000).await.unwrap();
        catch_up(&mut mirror, &mut at, d);
        assert!(mirror.is_empty(), "{}: {mirror:?}", t.name);
        // A log longer than the limit, or a replace, asks for a full export.
        for i in 0..3 {
            let (_, s) = doc("services", json!({"name": format!("n{i}"), "host": "h"}));
            st.write(vec![Op::Insert(ss, s)]).await.unwrap();
        }
        assert_eq!(st.delta_since(at, 2).await.unwrap(), StoreDelta::Reset);
        // A reader behind a pruned log is told to read everything again; one within it is not.
        let now = st.version().await.unwrap();
        assert!(st.prune_changes(1).await.unwrap() > 0);
        assert_eq!(st.delta_since(at, 1000).await.unwrap(), StoreDelta::Reset);
        assert!(matches!(
            st.delta_since(now - 1, 1000).await.unwrap(),
            StoreDelta::Changes { .. }
        ));
        st.replace(&gantry_model::Config::default()).await.unwrap();
        assert_eq!(st.delta_since(at, 1000).await.unwrap(), StoreDelta::Reset);
    }
}

/// The change feed keeps a configuration, its digests and its hash equal to a fresh export's,
/// and says what each step brought.
#[tokio::test]
async fn the_change_feed_follows_the_store() {
    use gantry_store::feed::{Feed, Step};
    for t in all_stores().await {
        let st = &t.store;
        let mut feed = Feed::start(st).await.unwrap();
        assert_eq!(feed.next(st).await.unwrap(), Step::Unchanged);
        let start = (feed.version(), feed.hash().to_string());
        let (ss, svc) = doc("services", json!({"name": "s", "host": "a.example"}));
        let (cs, consumer) = doc("consumers", json!({"username": "u"}));
        st.write(vec![Op::Insert(ss, svc.clone()), Op::Insert(cs, consumer)])
            .await
            .unwrap();
        let mut svc2 = svc.clone();
        svc2.insert("host".into(), json!("b.example"));
        st.write(vec![Op::Upsert(ss, svc2)]).await.unwrap();
        match feed.next(st).await.unwrap() {
            Step::Changes {
                from,
                from_hash,
                changes,
            } => {
                assert_eq!((from, from_hash), start, "{}", t.name);
                assert_eq!(changes.len(), 2, "{}", t.name);
            }
            other => panic!("{}: {other:?}", t.name),
        }
        let (now, v) = st.export().await.unwrap();
        assert_eq!(feed.version(), v, "{}", t.name);
        // Entities hold no nulls: the feed's is the store's configuration.
        assert_eq!(**feed.config(), now, "{}", t.name);
        assert_eq!(feed.hash(), hash_config(&now).config, "{}", t.name);
        assert_eq!(*feed.digests(), gantry_model::hash::Digests::of(&now));
        // A replace is read whole.
        st.replace(&gantry_model::Config::default()).await.unwrap();
        assert!(matches!(feed.next(st).await.unwrap(), Step::Whole { .. }));
        assert!(feed.config().is_empty(), "{}", t.name);
        assert_eq!(feed.hash(), gantry_model::hash::EMPTY_HASH);
    }
}

#[tokio::test]
async fn the_data_plane_registry_is_kept_apart_from_the_config() {
    for t in all_stores().await {
        let st = &t.store;
        let v = st.version().await.unwrap();
        let d = json!({"id": "dp1", "hostname": "h"})
            .as_object()
            .cloned()
            .unwrap();
        let w = |id: &str, session: &str, doc: &Doc, last_seen: i64, insert: bool| {
            gantry_store::RegistryWrite {
                id: id.into(),
                session: session.into(),
                doc: doc.clone(),
                last_seen,
                insert,
            }
        };
        let mut d2 = d.clone();
        d2.insert("hostname".into(), json!("h2"));
        st.write_data_planes(&[w("dp1", "s1", &d, 100, true)])
            .await
            .unwrap();
        st.write_data_planes(&[w("dp1", "s2", &d2, 200, true), w("dp2", "s3", &d, 50, true)])
            .await
            .unwrap();
        // The first connection's late update does not overwrite the second's entry.
        st.write_data_planes(&[w("dp1", "s1", &d, 300, false)])
            .await
            .unwrap();
        let all = st.data_planes().await.unwrap();
        assert_eq!(all.len(), 2, "{}", t.name);
        assert_eq!(all[0]["hostname"], "h2");
        assert_eq!(st.purge_data_planes(60).await.unwrap(), 1);
        assert_eq!(st.data_planes().await.unwrap().len(), 1);
        assert_eq!(
            st.version().await.unwrap(),
            v,
            "{}: registry writes are not config",
            t.name
        );
    }
}

#[tokio::test]
async fn analytics_batches_merge_once_and_filter() {
    use gantry_model::analytics::{Histogram, Row};
    use gantry_store::AnalyticsQuery;
    for t in all_stores().await {
        let st = &t.store;
        let mut h = Histogram::default();
        h.record(3.0);
        let row = |route: &str, status: u16, count: u64| Row {
            minute: 600,
            service: "s".into(),
            route: route.into(),
            consumer: String::new(),
            status,
            count,
            total: h.clone(),
            upstream: h.clone(),
            gateway: h.clone(),
        };
        assert!(st
            .ingest_analytics("n1", 1, &[row("a", 200, 3), row("b", 404, 1)])
            .await
            .unwrap());
        // The same batch again (its ack was lost): counted once.
        assert!(!st
            .ingest_analytics("n1", 1, &[row("a", 200, 3)])
            .await
            .unwrap());
        assert!(st
            .ingest_analytics("n1", 2, &[row("a", 200, 2)])
            .await
            .unwrap());
        assert!(st
            .ingest_analytics("n2", 1, &[row("a", 200, 5)])
            .await
            .unwrap());
        let q = AnalyticsQuery {
            start: 0,
            end: 10_000,
            ..Default::default()
        };
        let all = st.analytics(&q).await.unwrap();
        assert_eq!(all.len(), 3, "{}", t.name);
        let a_n1 = all
            .iter()
            .find(|(n, r)| n == "n1" && r.route == "a")
            .unwrap();
        assert_eq!(a_n1.1.count, 5);
        assert_eq!(a_n1.1.total.count(), 2);
        let only = st
            .analytics(&AnalyticsQuery {
                route: Some("a".into()),
                node: Some("n2".into()),
                ..q.clone()
            })
            .await
            .unwrap();
        assert_eq!(only.len(), 1);
        assert_eq!(only[0].1.count, 5);
        assert!(st
            .analytics(&AnalyticsQuery {
                start: 660,
                ..q.clone()
            })
            .await
            .unwrap()
            .is_empty());
        assert_eq!(st.purge_analytics(700).await.unwrap(), 3);
    }
}

/// The SQLite database holds certificate keys and credentials: it is the owner's alone, and
/// one left readable by others is tightened when opened (issue 17's item 6).
#[tokio::test]
async fn the_sqlite_database_is_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gantry.db");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    {
        let _store = gantry_store::Store::open(&gantry_store::Backend::Sqlite(Some(path.clone())))
            .await
            .unwrap();
        assert_eq!(mode(&path), 0o600);
    }
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let _store = gantry_store::Store::open(&gantry_store::Backend::Sqlite(Some(path.clone())))
        .await
        .unwrap();
    assert_eq!(mode(&path), 0o600);
}

#[tokio::test]
async fn control_planes_hold_their_own_configuration() {
    for t in all_stores().await {
        let st = &t.store;
        let cps = st.control_planes().await.unwrap();
        assert_eq!(cps.len(), 1, "{}: the default control plane", t.name);
        assert_eq!((cps[0].key, cps[0].name.as_str()), (1, "default"));
        let meta = json!({"description": "b"}).as_object().cloned().unwrap();
        let b_row = st
            .create_control_plane(&uuid::Uuid::new_v4().to_string(), "b", &meta)
            .await
            .unwrap();
        assert!(matches!(
            st.create_control_plane(&uuid::Uuid::new_v4().to_string(), "b", &meta)
                .await,
            Err(StoreError::Unique { .. })
        ));
        let b = st.scoped(b_row.key);
        assert_eq!(b.version().await.unwrap(), 0, "{}", t.name);
        // The same service, id and name, in both: keys and ids hold within a control plane.
        let (ss, svc) = doc(
            "services",
            json!({"name": "s", "host": "a.example", "tags": ["t"]}),
        );
        let sid = svc["id"].as_str().unwrap().to_string();
        st.write(vec![Op::Insert(ss, svc.clone())]).await.unwrap();
        let before_b = b.version().await.unwrap();
        b.write(vec![Op::Insert(ss, svc.clone())]).await.unwrap();
        assert_eq!(b.version().await.unwrap(), before_b + 1);
        // A reference never crosses: a route in b to a service only the default has.
        let (_, other) = doc("services", json!({"name": "only-a", "host": "a.example"}));
        let only_a = other["id"].as_str().unwrap().to_string();
        st.write(vec![Op::Insert(ss, other)]).await.unwrap();
        let (rs, route) = doc(
            "routes",
            json!({"name": "r", "paths": ["/"], "service": {"id": only_a}}),
        );
        assert!(matches!(
            b.write(vec![Op::Insert(rs, route.clone())]).await,
            Err(StoreError::ForeignKey { .. })
        ));
        st.write(vec![Op::Insert(rs, route)]).await.unwrap();
        // Reads, lists, tags, exports and the change log see one control plane each.
        assert_eq!(b.count("services").await.unwrap(), 1, "{}", t.name);
        assert_eq!(st.count("services").await.unwrap(), 2, "{}", t.name);
        assert!(b.get("services", &only_a).await.unwrap().is_none());
        assert!(b
            .find_by_key("services", "name", "only-a")
            .await
            .unwrap()
            .is_none());
        let (bc, _) = b.export().await.unwrap();
        assert_eq!(bc.len(), 1, "{}", t.name);
        assert_eq!(b.tags(None, 10, None).await.unwrap().0.len(), 1);
        let changes = b.changes_since(0, 100).await.unwrap();
        assert_eq!(changes.len(), 1, "{}: {changes:?}", t.name);
        // Deleting b's service leaves the default's, whose route still stands.
        b.write(vec![Op::Delete(ss, sid.clone())]).await.unwrap();
        assert!(st.get("services", &sid).await.unwrap().is_some());
        assert_eq!(st.count("routes").await.unwrap(), 1);
        // A replace of b clears b alone.
        b.write(vec![Op::Insert(ss, svc.clone())]).await.unwrap();
        b.replace(&gantry_model::Config::default()).await.unwrap();
        assert_eq!(b.count("services").await.unwrap(), 0);
        assert_eq!(st.count("services").await.unwrap(), 2);
        // Deleting a control plane removes what it held; the default stays.
        b.write(vec![Op::Insert(ss, svc.clone())]).await.unwrap();
        st.delete_control_plane(b_row.key).await.unwrap();
        assert!(matches!(
            b.version().await,
            Err(StoreError::NoControlPlane(_))
        ));
        assert!(matches!(
            b.write(vec![Op::Insert(ss, svc)]).await,
            Err(StoreError::NoControlPlane(_))
        ));
        assert!(matches!(
            st.delete_control_plane(1).await,
            Err(StoreError::DefaultControlPlane)
        ));
        assert_eq!(st.control_planes().await.unwrap().len(), 1);
    }
}

/// A database written before control planes existed opens with its entities, change log,
/// registry and analytics in the default control plane.
#[tokio::test]
async fn a_database_from_before_control_planes_migrates_in_place() {
    use sqlx::{Connection, Executor};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    {
        let mut c =
            sqlx::SqliteConnection::connect(&format!("sqlite://{}?mode=rwc", path.display()))
                .await
                .unwrap();
        for s in [
            "CREATE TABLE gantry_migrations (name TEXT PRIMARY KEY, applied_at BIGINT NOT NULL)",
            "INSERT INTO gantry_migrations VALUES ('000_base', 0), ('001_clustering', 0), ('002_analytics', 0)",
            "CREATE TABLE config_version (id BIGINT PRIMARY KEY, version BIGINT NOT NULL)",
            "INSERT INTO config_version VALUES (1, 7)",
            "CREATE TABLE entities (entity_type TEXT NOT NULL, id TEXT NOT NULL, doc TEXT NOT NULL, version BIGINT NOT NULL, PRIMARY KEY (entity_type, id))",
            r#"INSERT INTO entities VALUES ('services', '0b7f3a4e-4c1f-4a5e-9e42-2d5b7b0c1a11', '{"id":"0b7f3a4e-4c1f-4a5e-9e42-2d5b7b0c1a11","name":"old","host":"a.example","port":80,"protocol":"http","path":null,"retries":5,"connect_timeout":60000,"write_timeout":60000,"read_timeout":60000,"tags":["t"],"created_at":1,"updated_at":1,"enabled":true,"client_certificate":null,"tls_verify":null,"tls_verify_depth":null,"ca_certificates":null}', 7)"#,
            "CREATE TABLE entity_keys (entity_type TEXT NOT NULL, key_name TEXT NOT NULL, key_value TEXT NOT NULL, id TEXT NOT NULL, PRIMARY KEY (entity_type, key_name, key_value))",
            "CREATE INDEX entity_keys_by_id ON entity_keys (entity_type, id)",
            "INSERT INTO entity_keys VALUES ('services', 'name', 'old', '0b7f3a4e-4c1f-4a5e-9e42-2d5b7b0c1a11')",
            "CREATE TABLE entity_refs (entity_type TEXT NOT NULL, id TEXT NOT NULL, field TEXT NOT NULL, ref_type TEXT NOT NULL, ref_id TEXT NOT NULL, PRIMARY KEY (entity_type, id, field, ref_id))",
            "CREATE INDEX entity_refs_by_target ON entity_refs (ref_type, ref_id)",
            "CREATE INDEX entity_refs_by_field ON entity_refs (entity_type, field, ref_id)",
            "CREATE TABLE entity_tags (entity_type TEXT NOT NULL, id TEXT NOT NULL, tag TEXT NOT NULL, PRIMARY KEY (entity_type, id, tag))",
            "CREATE INDEX entity_tags_by_tag ON entity_tags (tag, entity_type, id)",
            "INSERT INTO entity_tags VALUES ('services', '0b7f3a4e-4c1f-4a5e-9e42-2d5b7b0c1a11', 't')",
            "CREATE TABLE changes (version BIGINT NOT NULL, seq BIGINT NOT NULL, entity_type TEXT NOT NULL, id TEXT NOT NULL, op TEXT NOT NULL, PRIMARY KEY (version, seq))",
            "INSERT INTO changes VALUES (7, 1, 'services', '0b7f3a4e-4c1f-4a5e-9e42-2d5b7b0c1a11', 'upsert')",
            "CREATE TABLE clustering_data_planes (id TEXT PRIMARY KEY, doc TEXT NOT NULL, session TEXT NOT NULL, last_seen BIGINT NOT NULL)",
            r#"INSERT INTO clustering_data_planes VALUES ('dp1', '{"id":"dp1"}', 's', 100)"#,
            "CREATE TABLE analytics_minutes (minute BIGINT NOT NULL, node_id TEXT NOT NULL, service TEXT NOT NULL, route TEXT NOT NULL, consumer TEXT NOT NULL, status BIGINT NOT NULL, count BIGINT NOT NULL, hist TEXT NOT NULL, PRIMARY KEY (minute, node_id, service, route, consumer, status))",
            "CREATE TABLE analytics_batches (node_id TEXT NOT NULL, seq BIGINT NOT NULL, received_at BIGINT NOT NULL, PRIMARY KEY (node_id, seq))",
        ] {
            c.execute(s).await.unwrap();
        }
        c.close().await.unwrap();
    }
    let st = gantry_store::Store::open(&gantry_store::Backend::Sqlite(Some(path.clone())))
        .await
        .unwrap();
    assert_eq!(st.version().await.unwrap(), 7);
    assert_eq!(st.count("services").await.unwrap(), 1);
    assert!(st
        .find_by_key("services", "name", "old")
        .await
        .unwrap()
        .is_some());
    assert_eq!(st.changes_since(0, 10).await.unwrap().len(), 1);
    assert_eq!(st.data_planes().await.unwrap().len(), 1);
    assert_eq!(st.tags(Some("t"), 10, None).await.unwrap().0.len(), 1);
    assert_eq!(st.control_planes().await.unwrap()[0].name, "default");
    // The unique key still holds after the move.
    let (ss, dup) = doc("services", json!({"name": "old", "host": "b.example"}));
    assert!(matches!(
        st.write(vec![Op::Insert(ss, dup)]).await,
        Err(StoreError::Unique { .. })
    ));
    st.close().await;
}
