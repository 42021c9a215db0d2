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
