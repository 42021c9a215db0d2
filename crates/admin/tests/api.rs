//! The Admin API against a real socket, on SQLite and on PostgreSQL.

use gantry_testkit::admin::{certs, start, Api};
use gantry_testkit::all_stores;
use gantry_testkit::http::not_enabled;
use serde_json::{json, Value};

/// For one entity: where to create it, a valid body, defaults to expect, a field to patch.
struct Case {
    path: String,
    body: Value,
    defaults: Vec<(&'static str, Value)>,
    patch: (&'static str, Value),
    /// An invalid body and the field its error must name.
    bad: (Value, &'static str),
}

async fn cases(api: &Api) -> Vec<Case> {
    let (cert, key, ca) = certs();
    let svc = api
        .ok(
            "POST",
            "/services",
            Some(json!({"name": "parent-svc", "host": "p.example"})),
        )
        .await;
    let consumer = api
        .ok(
            "POST",
            "/consumers",
            Some(json!({"username": "parent-consumer"})),
        )
        .await;
    let up = api
        .ok("POST", "/upstreams", Some(json!({"name": "parent-up"})))
        .await;
    let c = api
        .ok(
            "POST",
            "/certificates",
            Some(json!({"cert": cert, "key": key})),
        )
        .await;
    let cid = consumer["id"].as_str().unwrap().to_string();
    vec![
        Case {
            path: "/services".into(),
            body: json!({"name": "svc1", "url": "https://api.example:8443/v1"}),
            defaults: vec![
                ("retries", json!(5)),
                ("connect_timeout", json!(60000)),
                ("protocol", json!("https")),
                ("port", json!(8443)),
                ("enabled", json!(true)),
            ],
            patch: ("retries", json!(3)),
            bad: (
                json!({"host": "h.example", "connect_timeout": 0}),
                "connect_timeout",
            ),
        },
        Case {
            path: format!("/services/{}/routes", svc["id"].as_str().unwrap()),
            body: json!({"name": "route1", "paths": ["/r"]}),
            defaults: vec![
                ("protocols", json!(["http", "https"])),
                ("strip_path", json!(true)),
                ("preserve_host", json!(false)),
                ("regex_priority", json!(0)),
                ("path_handling", json!("v0")),
                ("https_redirect_status_code", json!(426)),
            ],
            patch: ("strip_path", json!(false)),
            bad: (json!({"paths": ["/r"], "methods": ["G T"]}), "methods"),
        },
        Case {
            path: "/upstreams".into(),
            body: json!({"name": "up1.internal"}),
            defaults: vec![
                ("algorithm", json!("round-robin")),
                ("slots", json!(10000)),
                ("hash_on", json!("none")),
            ],
            patch: ("algorithm", json!("least-connections")),
            bad: (
                json!({"name": "u.example", "algorithm": "random"}),
                "algorithm",
            ),
        },
        Case {
            path: format!("/upstreams/{}/targets", up["id"].as_str().unwrap()),
            body: json!({"target": "10.1.1.1"}),
            defaults: vec![("weight", json!(100)), ("target", json!("10.1.1.1:8000"))],
            patch: ("weight", json!(5)),
            bad: (json!({"target": "10.1.1.1:99999"}), "target"),
        },
        Case {
            path: "/consumers".into(),
            body: json!({"username": "alice", "custom_id": "a-1"}),
            defaults: vec![],
            patch: ("custom_id", json!("a-2")),
            bad: (json!({"username": 7}), "username"),
        },
        Case {
            path: "/plugins".into(),
            body: json!({"name": "rate-limiting", "config": {"minute": 10}}),
            defaults: vec![
                ("enabled", json!(true)),
                ("protocols", json!(["grpc", "grpcs", "http", "https"])),
            ],
            patch: ("enabled", json!(false)),
            bad: (
                json!({"name": "cors", "config": {"max_age": "x"}}),
                "config",
            ),
        },
        Case {
            path: "/certificates".into(),
            body: json!({"cert": cert, "key": key}),
            defaults: vec![],
            patch: ("tags", json!(["patched"])),
            bad: (json!({"cert": "not a pem", "key": "not a pem"}), "cert"),
        },
        Case {
            path: format!("/certificates/{}/snis", c["id"].as_str().unwrap()),
            body: json!({"name": "api.example.com"}),
            defaults: vec![],
            patch: ("name", json!("www.example.com")),
            bad: (json!({"name": "bad name.example"}), "name"),
        },
        Case {
            path: "/ca_certificates".into(),
            body: json!({"cert": ca}),
            defaults: vec![],
            patch: ("tags", json!(["patched"])),
            bad: (json!({"cert": cert.clone()}), "cert"),
        },
        Case {
            path: "/partials".into(),
            body: json!({"name": "redis1", "type": "redis-ce", "config": {"host": "redis.internal"}}),
            defaults: vec![],
            patch: ("name", json!("redis2")),
            bad: (
                json!({"name": "p", "type": "redis-ce", "config": {"port": "x"}}),
                "config",
            ),
        },
        Case {
            path: format!("/consumers/{cid}/key-auth"),
            body: json!({}),
            defaults: vec![],
            patch: ("key", json!("my-key")),
            bad: (json!({"ttl": -1}), "ttl"),
        },
        Case {
            path: format!("/consumers/{cid}/basic-auth"),
            body: json!({"username": "alice-basic", "password": "pw"}),
            defaults: vec![],
            patch: ("username", json!("alice-basic-x")),
            bad: (json!({"username": "u"}), "password"),
        },
        Case {
            path: format!("/consumers/{cid}/acls"),
            body: json!({"group": "admins"}),
            defaults: vec![],
            patch: ("group", json!("ops")),
            bad: (json!({}), "group"),
        },
        Case {
            path: format!("/consumers/{cid}/jwt"),
            body: json!({}),
            defaults: vec![("algorithm", json!("HS256"))],
            patch: ("algorithm", json!("HS512")),
            bad: (json!({"algorithm": "RS256"}), "rsa_public_key"),
        },
        Case {
            path: format!("/consumers/{cid}/hmac-auth"),
            body: json!({"username": "alice-hmac"}),
            defaults: vec![],
            patch: ("username", json!("alice-hmac-x")),
            bad: (json!({"username": ["u"]}), "username"),
        },
    ]
}

#[tokio::test]
async fn every_entity_crud_defaults_pagination_tags() {
    for t in all_stores().await {
        let name = t.name;
        let api = start(t, &[]).await;
        for case in cases(&api).await {
            let ctx = format!("[{name}] {}", case.path);
            // An invalid body: 400, the field named, nothing stored.
            let before = api.version().await;
            let (s, b) = api.req("POST", &case.path, Some(case.bad.0.clone())).await;
            assert_eq!(s, 400, "{ctx}: {b}");
            assert!(b["fields"].get(case.bad.1).is_some(), "{ctx}: {b}");
            assert_eq!(api.version().await, before, "{ctx}");
            // Create three tagged entities so that pagination has pages.
            let mut created = Vec::new();
            for i in 0..3 {
                let mut body = case.body.clone();
                let obj = body.as_object_mut().unwrap();
                for k in ["name", "username", "group", "target", "custom_id"] {
                    if k == "name" && case.path == "/plugins" {
                        continue;
                    }
                    if let Some(Value::String(s)) = obj.get(k).cloned() {
                        let v = if k == "target" {
                            format!("10.1.1.{}", i + 1)
                        } else {
                            format!("{s}{i}")
                        };
                        let v = if k == "name" && case.path.ends_with("/snis") {
                            format!("h{i}.{s}")
                        } else {
                            v
                        };
                        obj.insert(k.into(), json!(v));
                    }
                }
                if case.path == "/plugins" {
                    // One plugin per scope: the second and third go on their own services.
                    if i > 0 {
                        let s = api
                            .ok(
                                "POST",
                                "/services",
                                Some(json!({"name": format!("plug-svc{i}"), "host": "x.example"})),
                            )
                            .await;
                        obj.insert("service".into(), json!({"id": s["id"]}));
                    }
                }
                if case.path == "/certificates" && i > 0 {
                    let (c, k, _) = certs();
                    obj.insert("cert".into(), json!(c));
                    obj.insert("key".into(), json!(k));
                }
                if case.path == "/ca_certificates" && i > 0 {
                    let (_, _, ca) = certs();
                    obj.insert("cert".into(), json!(ca));
                }
                obj.insert("tags".into(), json!(["t-all", format!("t{i}")]));
                let (s, d) = api.req("POST", &case.path, Some(body)).await;
                assert_eq!(s, 201, "{ctx}: {d}");
                for (k, v) in &case.defaults {
                    if *k != "target" || i == 0 {
                        assert_eq!(&d[*k], v, "{ctx}: default {k}");
                    }
                }
                assert!(
                    d["id"].is_string() && d["created_at"].is_i64(),
                    "{ctx}: {d}"
                );
                created.push(d);
            }
            let first = &created[0];
            let id = first["id"].as_str().unwrap();
            let item = format!("{}/{id}", case.path);
            assert_eq!(api.ok("GET", &item, None).await["id"], first["id"], "{ctx}");
            // Secrets never come back in clear.
            if case.path.ends_with("/basic-auth") {
                let stored = first["password"].as_str().unwrap();
                assert!(
                    stored.len() == 40 && stored.bytes().all(|b| b.is_ascii_hexdigit()),
                    "{ctx}"
                );
            }
            // Tags: AND and OR.
            let tagged = api
                .ok("GET", &format!("{}?tags=t-all,t1", case.path), None)
                .await;
            assert_eq!(
                tagged["data"].as_array().unwrap().len(),
                1,
                "{ctx}: {tagged}"
            );
            let either = api
                .ok("GET", &format!("{}?tags=t0/t2", case.path), None)
                .await;
            assert_eq!(
                either["data"].as_array().unwrap().len(),
                2,
                "{ctx}: {either}"
            );
            // Pagination: size 2 then the rest, following `offset`.
            let page1 = api.ok("GET", &format!("{}?size=2", case.path), None).await;
            assert_eq!(page1["data"].as_array().unwrap().len(), 2, "{ctx}: {page1}");
            let offset = page1["offset"].as_str().expect("offset");
            assert!(page1["next"].as_str().unwrap().contains(offset), "{ctx}");
            let page2 = api
                .ok(
                    "GET",
                    &format!("{}?size=2&offset={offset}", case.path),
                    None,
                )
                .await;
            let mut ids: Vec<Value> = page1["data"]
                .as_array()
                .unwrap()
                .iter()
                .chain(page2["data"].as_array().unwrap())
                .map(|d| d["id"].clone())
                .collect();
            ids.sort_by_key(|v| v.to_string());
            ids.dedup();
            // Collections under a parent hold the three; top-level ones may hold set-up entities too.
            assert!(ids.len() >= 3, "{ctx}: {ids:?}");
            // PATCH changes one field and keeps the rest.
            let (k, v) = &case.patch;
            let patched = api.ok("PATCH", &item, Some(json!({ *k: v }))).await;
            assert_eq!(&patched[*k], v, "{ctx}");
            assert_eq!(patched["created_at"], first["created_at"], "{ctx}");
            // DELETE, then 404.
            let (s, _) = api.req("DELETE", &item, None).await;
            assert_eq!(s, 204, "{ctx}");
            let (s, body) = api.req("GET", &item, None).await;
            assert_eq!((s, body), (404, json!({"message": "Not found"})), "{ctx}");
        }
        // The tags endpoint lists what is tagged.
        let tags = api.ok("GET", "/tags/t-all", None).await;
        assert!(!tags["data"].as_array().unwrap().is_empty());
    }
}

#[tokio::test]
async fn put_upserts_by_id_or_name_and_names_resolve() {
    for t in all_stores().await {
        let api = start(t, &[]).await;
        let s = api
            .ok(
                "PUT",
                "/services/by-name",
                Some(json!({"host": "a.example"})),
            )
            .await;
        assert_eq!(s["name"], "by-name");
        let s2 = api
            .ok(
                "PUT",
                "/services/by-name",
                Some(json!({"host": "b.example"})),
            )
            .await;
        assert_eq!(s2["id"], s["id"]);
        assert_eq!(s2["host"], "b.example");
        assert_eq!(s2["name"], "by-name");
        assert_eq!(s2["created_at"], s["created_at"]);
        let id = "3c1f2f9e-2d7a-4f43-9d6e-0f6a1f0b7c55";
        let s3 = api
            .ok(
                "PUT",
                &format!("/services/{id}"),
                Some(json!({"name": "by-id", "host": "c.example"})),
            )
            .await;
        assert_eq!(s3["id"], id);
        // Routes refer to services by name, nested or in the body.
        let r = api
            .ok(
                "POST",
                "/routes",
                Some(json!({"paths": ["/x"], "service": {"name": "by-name"}})),
            )
            .await;
        assert_eq!(r["service"]["id"], s["id"]);
        let r = api
            .ok(
                "POST",
                "/services/by-id/routes",
                Some(json!({"hosts": ["h.example"]})),
            )
            .await;
        assert_eq!(r["service"]["id"], id);
        let svc = api
            .ok(
                "GET",
                &format!("/routes/{}/service", r["id"].as_str().unwrap()),
                None,
            )
            .await;
        assert_eq!(svc["id"], id);
        // A nested item that belongs to another parent is not found there.
        let (st, _) = api
            .req(
                "GET",
                &format!("/services/by-name/routes/{}", r["id"].as_str().unwrap()),
                None,
            )
            .await;
        assert_eq!(st, 404);
        // Targets by their address under their upstream.
        api.ok("POST", "/upstreams", Some(json!({"name": "u1"})))
            .await;
        api.ok(
            "POST",
            "/upstreams/u1/targets",
            Some(json!({"target": "10.0.0.9:81"})),
        )
        .await;
        assert_eq!(
            api.ok("GET", "/upstreams/u1/targets/10.0.0.9:81", None)
                .await["weight"],
            100
        );
        // Consumers by username, and filtered by custom_id.
        api.ok(
            "POST",
            "/consumers",
            Some(json!({"username": "bob", "custom_id": "c-9"})),
        )
        .await;
        assert_eq!(
            api.ok("GET", "/consumers/bob", None).await["custom_id"],
            "c-9"
        );
        let f = api.ok("GET", "/consumers?custom_id=c-9", None).await;
        assert_eq!(f["data"][0]["username"], "bob");
        // The key in the path wins over the body's (Kong's upsert_by_username): this PUT
        // updates alice and never creates a "carol".
        api.ok("POST", "/consumers", Some(json!({"username": "alice"})))
            .await;
        let a = api
            .ok(
                "PUT",
                "/consumers/alice",
                Some(json!({"username": "carol", "custom_id": "c-1"})),
            )
            .await;
        assert_eq!(
            (&a["username"], &a["custom_id"]),
            (&json!("alice"), &json!("c-1"))
        );
        let (st, _) = api.req("GET", "/consumers/carol", None).await;
        assert_eq!(st, 404);
        // Concurrent PUTs to one new key: one creates it, the others update it; none is 409.
        let puts = (0..8).map(|i| {
            let api = &api;
            async move {
                let body = json!({"host": format!("h{i}.example")});
                api.req("PUT", "/services/raced", Some(body)).await.0
            }
        });
        let statuses = futures_util::future::join_all(puts).await;
        assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
        let raced = api.ok("GET", "/services?name=raced", None).await;
        assert_eq!(raced["data"].as_array().map(Vec::len), Some(1));
    }
}

/// A CA certificate's `cert_digest` is the certificate's: recomputed when `cert` changes,
/// even with the old digest still in the body (as clients send back what they read).
#[tokio::test]
async fn cert_digest_follows_the_certificate() {
    for t in all_stores().await {
        let api = start(t, &[]).await;
        let (_, _, ca1) = certs();
        let (_, _, ca2) = certs();
        let c = api
            .ok("POST", "/ca_certificates", Some(json!({"cert": ca1})))
            .await;
        let id = c["id"].as_str().unwrap().to_string();
        let old = c["cert_digest"].clone();
        let mut back = c.clone();
        back["cert"] = json!(ca2);
        for (method, body) in [
            ("PATCH", json!({"cert": ca2, "cert_digest": old})),
            ("PUT", back),
        ] {
            let u = api
                .ok(method, &format!("/ca_certificates/{id}"), Some(body))
                .await;
            assert_ne!(u["cert_digest"], old, "{method}");
            assert_eq!(
                u["cert_digest"].as_str().map(str::len),
                Some(64),
                "{method}"
            );
        }
    }
}

async fn count(api: &Api) -> i64 {
    let st = &api.t.store;
    st.count("services").await.unwrap() + st.count("routes").await.unwrap()
}

#[tokio::test]
async fn bad_input_is_refused_whole_with_the_fields_named() {
    for t in all_stores().await {
        let api = start(t, &[("nginx_admin_client_max_body_size", "2k")]).await;
        api.ok(
            "POST",
            "/services",
            Some(json!({"name": "taken", "host": "a.example"})),
        )
        .await;
        let v0 = api.version().await;
        let n0 = count(&api).await;
        // Malformed JSON.
        let (s, b) = api
            .raw(
                "POST",
                "/services",
                "application/json",
                b"{\"name\": ".to_vec(),
            )
            .await;
        assert_eq!(s, 400);
        assert!(
            b["message"]
                .as_str()
                .unwrap()
                .starts_with("Cannot parse JSON body"),
            "{b}"
        );
        // Wrong types, unknown fields: every one listed.
        let (s, b) = api
            .req(
                "POST",
                "/services",
                Some(json!({"name": 1, "host": "h", "port": "eighty", "nope": true})),
            )
            .await;
        assert_eq!(s, 400);
        assert_eq!(b["code"], 2);
        assert_eq!(b["name"], "schema violation");
        assert_eq!(b["fields"]["name"], "expected a string");
        assert_eq!(b["fields"]["port"], "expected an integer");
        assert_eq!(b["fields"]["nope"], "unknown field");
        assert!(
            b["message"]
                .as_str()
                .unwrap()
                .starts_with("3 schema violations"),
            "{b}"
        );
        // Out of range, bad enum.
        let (s, b) = api
            .req(
                "POST",
                "/services",
                Some(json!({"host": "h", "port": 70000, "protocol": "ftp"})),
            )
            .await;
        assert_eq!(s, 400);
        assert_eq!(b["fields"]["port"], "value should be between 0 and 65535");
        assert!(b["fields"]["protocol"]
            .as_str()
            .unwrap()
            .starts_with("expected one of"));
        // Invalid UUIDs.
        let (s, b) = api
            .req(
                "POST",
                "/services",
                Some(json!({"id": "not-a-uuid", "host": "h"})),
            )
            .await;
        assert_eq!(
            (s, b["fields"]["id"].clone()),
            (400, json!("expected a valid UUID"))
        );
        let (s, b) = api
            .req(
                "POST",
                "/routes",
                Some(json!({"paths": ["/"], "service": {"id": "zzz"}})),
            )
            .await;
        assert_eq!(s, 400, "{b}");
        // Duplicate names: 409.
        let (s, b) = api
            .req(
                "POST",
                "/services",
                Some(json!({"name": "taken", "host": "b.example"})),
            )
            .await;
        assert_eq!(s, 409);
        assert_eq!(b["name"], "unique constraint violation");
        assert_eq!(b["fields"]["name"], "taken");
        // References to missing entities.
        let (s, b) = api
            .req("POST", "/routes", Some(json!({"paths": ["/"], "service": {"id": "3c1f2f9e-2d7a-4f43-9d6e-0f6a1f0b7c55"}})))
            .await;
        assert_eq!(s, 400);
        assert_eq!(b["name"], "foreign key violation");
        assert_eq!(
            b["fields"]["service"]["id"],
            "3c1f2f9e-2d7a-4f43-9d6e-0f6a1f0b7c55"
        );
        let (s, _) = api
            .req(
                "POST",
                "/services/missing/routes",
                Some(json!({"paths": ["/"]})),
            )
            .await;
        assert_eq!(s, 404);
        // Oversized body: 413.
        let big = json!({"name": "big", "host": "h", "tags": (0..400).map(|i| format!("tag{i}")).collect::<Vec<_>>()});
        let (s, b) = api.req("POST", "/services", Some(big)).await;
        assert_eq!(s, 413, "{b}");
        assert!(b["message"].as_str().unwrap().contains("2048"), "{b}");
        // A certificate whose key is another's.
        let (c1, _, _) = certs();
        let (_, k2, _) = certs();
        let (s, b) = api
            .req(
                "POST",
                "/certificates",
                Some(json!({"cert": c1, "key": k2})),
            )
            .await;
        assert_eq!(s, 400, "{b}");
        assert!(
            b["fields"]["key"]
                .as_str()
                .unwrap()
                .contains("does not match"),
            "{b}"
        );
        // Route-level checks.
        let (s, b) = api
            .req("POST", "/routes", Some(json!({"protocols": ["http"]})))
            .await;
        assert_eq!(s, 400);
        assert!(
            b["message"]
                .as_str()
                .unwrap()
                .contains("must set one of 'methods', 'hosts', 'headers', 'paths'"),
            "{b}"
        );
        // Plugin config checked by the plugin's schema.
        let (s, b) = api
            .req(
                "POST",
                "/plugins",
                Some(json!({"name": "rate-limiting", "config": {"minute": -1, "bogus": 1}})),
            )
            .await;
        assert_eq!(s, 400);
        assert_eq!(
            b["fields"]["config"]["minute"],
            "value must be greater than 0"
        );
        assert_eq!(b["fields"]["config"]["bogus"], "unknown field");
        let (s, b) = api
            .req("POST", "/plugins", Some(json!({"name": "no-such-plugin"})))
            .await;
        assert_eq!(s, 400);
        assert!(b["fields"]["name"]
            .as_str()
            .unwrap()
            .contains("not enabled"));
        // Wrong method.
        let (s, b) = api.req("PATCH", "/services", None).await;
        assert_eq!((s, b), (405, json!({"message": "Method not allowed"})));
        // ... with the methods the path takes (RFC 9110).
        let r = api
            .http
            .patch(format!("{}/services", api.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["allow"], "GET, HEAD, OPTIONS, POST");
        let (s, _) = api.req("GET", "/no-such-collection", None).await;
        assert_eq!(s, 404);
        // Bad size and offset.
        assert_eq!(api.req("GET", "/services?size=0", None).await.0, 400);
        assert_eq!(api.req("GET", "/services?size=1001", None).await.0, 400);
        assert_eq!(api.req("GET", "/services?offset=%%%", None).await.0, 400);
        // Nothing stored, the version untouched.
        assert_eq!(api.version().await, v0);
        assert_eq!(count(&api).await, n0);
    }
}

#[tokio::test]
async fn form_bodies_and_deletes_as_kong() {
    for t in all_stores().await {
        let api = start(t, &[]).await;
        let form = |s: &str| s.as_bytes().to_vec();
        let ct = "application/x-www-form-urlencoded";
        let (s, svc) = api
            .raw(
                "POST",
                "/services",
                ct,
                form("name=f&url=http://f.example:81/p&retries=2&tags[]=a&tags[]=b"),
            )
            .await;
        assert_eq!(s, 201, "{svc}");
        assert_eq!(
            (
                svc["port"].clone(),
                svc["retries"].clone(),
                svc["tags"].clone()
            ),
            (json!(81), json!(2), json!(["a", "b"]))
        );
        let (s, r) = api
            .raw(
                "POST",
                "/services/f/routes",
                ct,
                form("paths[]=/a&paths[]=/b&methods=GET&strip_path=false"),
            )
            .await;
        assert_eq!(s, 201, "{r}");
        assert_eq!(r["paths"], json!(["/a", "/b"]));
        assert_eq!(r["methods"], json!(["GET"]));
        assert_eq!(r["strip_path"], json!(false));
        let rid = r["id"].as_str().unwrap().to_string();
        let (s, p) = api
            .raw(
                "POST",
                &format!("/routes/{rid}/plugins"),
                ct,
                form("name=rate-limiting&config.minute=5&config.policy=local"),
            )
            .await;
        assert_eq!(s, 201, "{p}");
        assert_eq!(p["config"]["minute"], json!(5));
        assert_eq!(p["route"]["id"], json!(rid));
        // Same plugin on the same route again: 409.
        let (s, _) = api
            .raw(
                "POST",
                &format!("/routes/{rid}/plugins"),
                ct,
                form("name=rate-limiting&config.minute=6"),
            )
            .await;
        assert_eq!(s, 409);
        // A service with routes cannot go; its routes first, then it can, and plugins go with routes.
        let (s, b) = api.req("DELETE", "/services/f", None).await;
        assert_eq!(s, 400);
        assert_eq!(b["fields"]["@referenced_by"], "routes");
        api.ok("DELETE", &format!("/routes/{rid}"), None).await;
        assert_eq!(api.t.store.count("plugins").await.unwrap(), 0);
        api.ok("DELETE", "/services/f", None).await;
        // Deleting a consumer takes its credentials.
        api.ok("POST", "/consumers", Some(json!({"username": "c"})))
            .await;
        api.ok("POST", "/consumers/c/key-auth", Some(json!({"key": "k"})))
            .await;
        api.ok("POST", "/consumers/c/acls", Some(json!({"group": "g"})))
            .await;
        api.ok("DELETE", "/consumers/c", None).await;
        assert_eq!(api.t.store.count("keyauth_credentials").await.unwrap(), 0);
        assert_eq!(api.t.store.count("acls").await.unwrap(), 0);
        // DELETE of what does not exist is 204, as Kong.
        assert_eq!(api.req("DELETE", "/services/none", None).await.0, 204);
    }
}

#[tokio::test]
async fn root_status_and_schemas() {
    let api = start(
        gantry_testkit::sqlite_store().await,
        &[("pg_password", "hunter2")],
    )
    .await;
    let root = api.ok("GET", "/", None).await;
    assert!(root["version"].as_str().unwrap().starts_with("3."));
    assert!(root["gantry_version"].is_string());
    assert_eq!(root["configuration"]["pg_password"], "******");
    assert!(root["plugins"]["available_on_server"]["key-auth"]["priority"].is_i64());
    let status = api.ok("GET", "/status", None).await;
    assert_eq!(status["database"]["reachable"], true);
    assert_eq!(
        status["configuration_hash"],
        "00000000000000000000000000000000"
    );
    api.ok("POST", "/services", Some(json!({"host": "a.example"})))
        .await;
    let status = api.ok("GET", "/status", None).await;
    assert_ne!(
        status["configuration_hash"],
        "00000000000000000000000000000000"
    );
    let s = api.ok("GET", "/schemas/services", None).await;
    let fields = s["fields"].as_array().unwrap();
    assert!(fields.iter().any(|f| f["retries"]["default"] == 5));
    let p = api.ok("GET", "/schemas/plugins/rate-limiting", None).await;
    assert!(p["fields"].to_string().contains("minute"));
    // Kong 3.9: 404 and "No plugin named 'nope'".
    assert_eq!(api.req("GET", "/schemas/plugins/nope", None).await.0, 404);
    let (s, _) = api
        .req(
            "POST",
            "/schemas/routes/validate",
            Some(json!({"paths": ["/ok"]})),
        )
        .await;
    assert_eq!(s, 200);
    let (s, b) = api
        .req(
            "POST",
            "/schemas/routes/validate",
            Some(json!({"paths": ["bad"]})),
        )
        .await;
    assert_eq!(s, 400, "{b}");
    let (s, _) = api
        .req(
            "POST",
            "/schemas/plugins/validate",
            Some(json!({"name": "cors"})),
        )
        .await;
    assert_eq!(s, 200);
    // Validation endpoints store nothing.
    assert_eq!(api.t.store.count("routes").await.unwrap(), 0);
}

#[tokio::test]
async fn dbless_config_endpoint_replaces_whole_or_not_at_all() {
    let api = start(gantry_testkit::sqlite_store().await, &[("database", "off")]).await;
    let good = "_format_version: \"3.0\"\nservices:\n- name: s\n  url: http://s.example\n  routes:\n  - name: r\n    paths: [/s]\n";
    let (s, b) = api
        .raw("POST", "/config", "text/yaml", good.as_bytes().to_vec())
        .await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(b["entities"]["services"], 1);
    let hash = b["configuration_hash"].clone();
    let bad = "_format_version: \"3.0\"\nservices:\n- name: s2\n  port: x\n";
    let (s, b) = api
        .raw("POST", "/config", "text/yaml", bad.as_bytes().to_vec())
        .await;
    assert_eq!(s, 400);
    assert_eq!(b["name"], "invalid declarative configuration");
    let flat = b["flattened_errors"].to_string();
    assert!(
        flat.contains("services[0].port: expected an integer"),
        "{flat}"
    );
    assert!(
        flat.contains("services[0].host: required field missing"),
        "{flat}"
    );
    // The running config is the good one.
    assert_eq!(
        api.ok("GET", "/status", None).await["configuration_hash"],
        hash
    );
    assert_eq!(
        api.ok("GET", "/services/s", None).await["host"],
        "s.example"
    );
    // Entity writes are refused in this mode.
    assert_eq!(
        api.req("POST", "/services", Some(json!({"host": "x"})))
            .await
            .0,
        405
    );
    assert_eq!(api.req("DELETE", "/services/s", None).await.0, 405);
    // JSON body with a `config` string works too.
    let (s, b) = api
        .req(
            "POST",
            "/config",
            Some(json!({"config": "{\"_format_version\": \"3.0\"}"})),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(b["configuration_hash"], "00000000000000000000000000000000");
}

/// Kong's plugins that Gantry does not run yet: each is refused, never stored and skipped.
const NOT_RUN: &[&str] = &["aws-lambda", "zipkin"];

/// A plugin the node does not run is refused with Kong's 400, at every scope and through
/// every write; `plugins` chooses what runs, and what is listed is what runs.
#[tokio::test]
async fn plugins_a_node_cannot_run_are_refused() {
    for t in all_stores().await {
        let api = start(t, &[]).await;
        let route = api
            .ok(
                "POST",
                "/routes",
                Some(json!({"name": "r", "paths": ["/r"]})),
            )
            .await;
        let rid = route["id"].as_str().unwrap().to_string();
        for name in NOT_RUN {
            for (path, body) in [
                ("/plugins".to_string(), json!({"name": name})),
                (format!("/routes/{rid}/plugins"), json!({"name": name})),
                (
                    "/schemas/plugins/validate".to_string(),
                    json!({"name": name}),
                ),
            ] {
                let (s, b) = api.req("POST", &path, Some(body)).await;
                assert_eq!(s, 400, "{name} {path}: {b}");
                assert_eq!(b["name"], "schema violation", "{b}");
                assert_eq!(b["fields"]["name"], not_enabled(name), "{b}");
            }
            let (s, _) = api
                .req(
                    "PUT",
                    "/plugins/7d3d6a51-6b0a-4d1c-9e43-2a3f5e6a7b8c",
                    Some(json!({"name": name})),
                )
                .await;
            assert_eq!(s, 400, "{name}");
            // Kong's 404 for a plugin the node does not load.
            let (s, b) = api
                .req("GET", &format!("/schemas/plugins/{name}"), None)
                .await;
            assert_eq!(s, 404, "{b}");
            assert_eq!(b, json!({"message": format!("No plugin named '{name}'")}));
        }
        assert_eq!(api.t.store.count("plugins").await.unwrap(), 0);
        let root = api.ok("GET", "/", None).await;
        let available = root["plugins"]["available_on_server"].as_object().unwrap();
        let enabled = api.ok("GET", "/plugins/enabled", None).await;
        let mut names: Vec<&str> = available.keys().map(String::as_str).collect();
        names.sort();
        assert_eq!(
            names,
            [
                "acl",
                "basic-auth",
                "correlation-id",
                "cors",
                "file-log",
                "hmac-auth",
                "http-log",
                "ip-restriction",
                "jwt",
                "key-auth",
                "oauth2",
                "opentelemetry",
                "prometheus",
                "proxy-cache",
                "rate-limiting",
                "request-size-limiting",
                "request-termination",
                "request-transformer",
                "response-ratelimiting",
                "response-transformer"
            ]
        );
        assert_eq!(enabled["enabled_plugins"], json!(names));

        // A configuration the schema takes but the runtime cannot enforce is refused too,
        // naming the field: a limit counted per node is not the one shared by all.
        let (s, b) = api
            .req(
                "POST",
                "/plugins",
                Some(
                    json!({"name": "rate-limiting", "config": {"minute": 5, "policy": "cluster"}}),
                ),
            )
            .await;
        assert_eq!(s, 400, "{b}");
        assert!(
            b["fields"]["config"]["policy"]
                .as_str()
                .is_some_and(|m| m.contains("'cluster' counts in Kong's database")),
            "{b}"
        );
        // Consumer-group limits (issue 12; Kong Enterprise's): taken, and any other value
        // refused with the list.
        let (s, b) = api
            .req(
                "POST",
                "/plugins",
                Some(json!({"name": "rate-limiting", "config": {"minute": 5, "limit_by": "nope"}})),
            )
            .await;
        assert_eq!(s, 400, "{b}");
        assert_eq!(
            b["fields"]["config"]["limit_by"],
            "expected one of: consumer, credential, ip, service, header, path, consumer-group",
            "{b}"
        );
        api.ok(
            "POST",
            "/plugins",
            Some(json!({"name": "rate-limiting", "config": {"minute": 5}})),
        )
        .await;
    }
}

#[tokio::test]
async fn the_plugins_setting_chooses_what_runs() {
    let api = start(
        gantry_testkit::sqlite_store().await,
        &[("plugins", "key-auth, cors")],
    )
    .await;
    assert_eq!(
        api.ok("GET", "/plugins/enabled", None).await["enabled_plugins"],
        json!(["cors", "key-auth"])
    );
    let root = api.ok("GET", "/", None).await;
    assert_eq!(
        root["plugins"]["available_on_server"]
            .as_object()
            .unwrap()
            .len(),
        2
    );
    api.ok("POST", "/plugins", Some(json!({"name": "key-auth"})))
        .await;
    for name in ["rate-limiting", "file-log", "basic-auth"] {
        let (s, b) = api
            .req(
                "POST",
                "/plugins",
                Some(json!({"name": name, "config": {"minute": 1, "path": "/tmp/x"}})),
            )
            .await;
        assert_eq!(s, 400, "{b}");
        assert_eq!(b["fields"]["name"], not_enabled(name), "{b}");
        assert_eq!(
            b["message"],
            format!("schema violation (name: {})", not_enabled(name)),
            "{b}"
        );
    }
    let off = start(gantry_testkit::sqlite_store().await, &[("plugins", "off")]).await;
    assert_eq!(
        off.ok("GET", "/plugins/enabled", None).await["enabled_plugins"],
        json!([])
    );
    let (s, _) = off
        .req("POST", "/plugins", Some(json!({"name": "cors"})))
        .await;
    assert_eq!(s, 400);
}

/// `POST /config` refuses a file with a plugin the node does not run, whole: nothing of it
/// is loaded.
#[tokio::test]
async fn dbless_config_refuses_plugins_a_node_cannot_run() {
    let api = start(gantry_testkit::sqlite_store().await, &[("database", "off")]).await;
    for name in NOT_RUN {
        let file = format!(
            "_format_version: \"3.0\"\nservices:\n- name: s\n  url: http://s.example\n  routes:\n  - name: r\n    paths: [/s]\n    plugins:\n    - name: {name}\n"
        );
        let (s, b) = api
            .raw("POST", "/config", "text/yaml", file.into_bytes())
            .await;
        assert_eq!(s, 400, "{name}: {b}");
        let flat = b["flattened_errors"].to_string();
        assert!(flat.contains(&not_enabled(name)), "{name}: {flat}");
        assert_eq!(api.t.store.count("services").await.unwrap(), 0);
    }
}

/// A route the proxy could not compile is refused before it is stored, naming the field: it
/// never reaches a node, where it would fail every later configuration.
#[tokio::test]
async fn routes_are_compiled_before_they_are_stored() {
    let api = start(gantry_testkit::sqlite_store().await, &[]).await;
    let (s, b) = api
        .req(
            "POST",
            "/routes",
            Some(json!({"name": "r", "paths": ["/x"], "headers": {"x": ["~*(unclosed"]}})),
        )
        .await;
    assert_eq!(s, 400, "{b}");
    assert_eq!(b["name"], "schema violation", "{b}");
    assert!(
        b["fields"]["headers"]
            .as_str()
            .is_some_and(|m| m.contains("unclosed")),
        "{b}"
    );
    assert_eq!(api.t.store.count("routes").await.unwrap(), 0);
    // Fixed, it is stored; a later PATCH that breaks it is refused and changes nothing.
    let r = api
        .ok(
            "POST",
            "/routes",
            Some(json!({"name": "r", "paths": ["/x"], "headers": {"x": ["~*(closed)"]}})),
        )
        .await;
    let (s, b) = api
        .req(
            "PATCH",
            &format!("/routes/{}", r["id"].as_str().unwrap()),
            Some(json!({"headers": {"x": ["~*(("]}})),
        )
        .await;
    assert_eq!(s, 400, "{b}");
    assert_eq!(
        api.ok("GET", "/routes/r", None).await["headers"]["x"],
        json!(["~*(closed)"])
    );
}

/// A browser on another site cannot change the gateway: a write whose `Origin` is neither
/// `admin_gui_origin` nor the Admin API's own is refused with 403 and changes nothing; reads,
/// clients that send no `Origin`, the console's origin and the API's own origin are served.
#[tokio::test]
async fn cross_site_writes_are_refused() {
    let api = start(
        gantry_testkit::sqlite_store().await,
        &[(
            "admin_gui_origin",
            "https://console.example:8445, http://localhost:8002",
        )],
    )
    .await;
    let post = |origin: Option<&str>, name: &str, form: bool| {
        let mut r = api.http.post(format!("{}/services", api.base));
        if let Some(o) = origin {
            r = r.header("origin", o);
        }
        r = if form {
            r.header("content-type", "application/x-www-form-urlencoded")
                .body(format!("name={name}&url=http://x.example"))
        } else {
            r.json(&json!({"name": name, "url": "http://x.example"}))
        };
        r.send()
    };
    for (origin, form) in [
        ("http://evil.example", true),
        ("http://evil.example", false),
        ("null", true),
        ("https://console.example", false),
    ] {
        let r = post(Some(origin), "evil", form).await.unwrap();
        assert_eq!(r.status(), 403, "{origin}");
        let b: Value = r.json().await.unwrap();
        assert!(
            b["message"]
                .as_str()
                .unwrap()
                .contains("cross-site request refused"),
            "{b}"
        );
    }
    assert_eq!(api.t.store.count("services").await.unwrap(), 0);
    let r = api
        .http
        .delete(format!("{}/services/anything", api.base))
        .header("origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // Served: no Origin (decK, curl), the console's origin, the API's own, and reads.
    let own = api.base.clone();
    for (i, origin) in [
        None,
        Some("https://console.example:8445"),
        Some("http://localhost:8002/"),
        Some(own.as_str()),
    ]
    .into_iter()
    .enumerate()
    {
        let r = post(origin, &format!("ok{i}"), false).await.unwrap();
        assert_eq!(r.status(), 201, "{origin:?}");
    }
    let r = api
        .http
        .get(format!("{}/services", api.base))
        .header("origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// A certificate this node cannot serve (a P-521 key, which rustls' ring provider does not
/// sign with) is refused when written, naming the field, instead of stored and then never
/// loadable (issue 17's item 1).
#[tokio::test]
async fn certificates_a_node_cannot_serve_are_refused() {
    if !gantry_testkit::have_tool("openssl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = gantry_testkit::pki::p521_pair(dir.path());
    let api = start(gantry_testkit::sqlite_store().await, &[]).await;
    let body = json!({"cert": cert, "key": key});
    let (s, b) = api.req("POST", "/certificates", Some(body)).await;
    assert_eq!(s, 400, "{b}");
    assert!(
        b["fields"]["key"].is_string() || b["fields"]["cert"].is_string(),
        "{b}"
    );
    assert_eq!(api.t.store.count("certificates").await.unwrap(), 0);
}

/// An ACL is found under its consumer by its group, as Kong allows
/// (`/consumers/{consumer}/acls/{group}`), and only under that consumer.
#[tokio::test]
async fn acls_are_found_by_group_under_their_consumer() {
    let api = start(gantry_testkit::sqlite_store().await, &[]).await;
    for who in ["alice", "bob"] {
        api.ok("POST", "/consumers", Some(json!({"username": who})))
            .await;
    }
    let acl = api
        .ok(
            "POST",
            "/consumers/alice/acls",
            Some(json!({"group": "admins"})),
        )
        .await;
    let got = api.ok("GET", "/consumers/alice/acls/admins", None).await;
    assert_eq!(got["id"], acl["id"]);
    assert_eq!(got["group"], "admins");
    let (s, _) = api.req("GET", "/consumers/bob/acls/admins", None).await;
    assert_eq!(s, 404);
    let (s, _) = api
        .req("DELETE", "/consumers/alice/acls/admins", None)
        .await;
    assert_eq!(s, 204);
    assert_eq!(api.t.store.count("acls").await.unwrap(), 0);
}

/// A reference given as the whole entity, as client libraries send the value they hold, is
/// taken by its id (or its name when it has no id); an unknown one is still refused.
#[tokio::test]
async fn references_given_as_whole_entities() {
    let api = start(gantry_testkit::sqlite_store().await, &[]).await;
    let svc = api
        .ok(
            "POST",
            "/services",
            Some(json!({"name": "s", "url": "http://s.example"})),
        )
        .await;
    let r = api
        .ok(
            "POST",
            "/routes",
            Some(json!({"name": "a", "paths": ["/a"], "service": svc.clone()})),
        )
        .await;
    assert_eq!(r["service"], json!({"id": svc["id"]}));
    let r = api
        .ok(
            "POST",
            "/routes",
            Some(json!({"name": "b", "paths": ["/b"], "service": {"name": "s", "port": 80}})),
        )
        .await;
    assert_eq!(r["service"], json!({"id": svc["id"]}));
    let (s, b) = api
        .req(
            "POST",
            "/routes",
            Some(json!({"name": "c", "paths": ["/c"], "service": {"name": "nope", "port": 80}})),
        )
        .await;
    assert_eq!(s, 400, "{b}");
}

/// A CA certificate's `cert_digest` is the certificate's own: a body that still carries the
/// old digest with a new `cert` gets the new one computed, as Kong (issue 13).
#[tokio::test]
async fn ca_certificate_digests_are_recomputed() {
    let api = start(gantry_testkit::sqlite_store().await, &[]).await;
    let (_, _, first) = certs();
    let (_, _, second) = certs();
    let ca = api
        .ok("POST", "/ca_certificates", Some(json!({"cert": first})))
        .await;
    let old = ca["cert_digest"].as_str().unwrap().to_string();
    let path = format!("/ca_certificates/{}", ca["id"].as_str().unwrap());
    let patched = api
        .ok(
            "PATCH",
            &path,
            Some(json!({"cert": second, "cert_digest": old})),
        )
        .await;
    let new = patched["cert_digest"].as_str().unwrap();
    assert_ne!(new, old);
    assert_eq!(new.len(), 64);
    // Given with the certificate it belongs to, the digest is the same either way.
    let again = api.ok("GET", &path, None).await;
    assert_eq!(again["cert_digest"], new);
}

/// Kong 3.9's deprecated `config.redis_*` fields: accepted either way, refused when they
/// disagree with `config.redis.*`, mirrored on every read (decK compares them).
#[tokio::test]
async fn rate_limiting_redis_shorthands_as_kong() {
    let api = start(gantry_testkit::sqlite_store().await, &[]).await;
    let p = api
        .ok(
            "POST",
            "/plugins",
            Some(json!({"name": "rate-limiting", "config": {"minute": 5, "policy": "redis", "redis_host": "127.0.0.1", "redis_port": 6380}})),
        )
        .await;
    let c = &p["config"];
    assert_eq!(c["redis"]["host"], "127.0.0.1", "{p}");
    assert_eq!(c["redis"]["port"], 6380, "{p}");
    assert_eq!(c["redis_host"], "127.0.0.1", "{p}");
    assert_eq!(c["redis_port"], 6380, "{p}");
    assert_eq!(c["redis_timeout"], 2000, "{p}");
    assert!(c["redis_password"].is_null(), "{p}");
    let id = p["id"].as_str().unwrap().to_string();
    let got = api.ok("GET", &format!("/plugins/{id}"), None).await;
    assert_eq!(got, p);
    let listed = api.ok("GET", "/plugins", None).await;
    assert_eq!(listed["data"][0], p);
    // What was read can be written back unchanged.
    let back = api
        .ok("PUT", &format!("/plugins/{id}"), Some(got.clone()))
        .await;
    assert_eq!(back["config"], got["config"]);
    // A shorthand in a patch replaces the stored field.
    let patched = api
        .ok(
            "PATCH",
            &format!("/plugins/{id}"),
            Some(json!({"config": {"redis_port": 6381}})),
        )
        .await;
    assert_eq!(patched["config"]["redis"]["port"], 6381, "{patched}");
    assert_eq!(patched["config"]["redis_port"], 6381, "{patched}");
    // Both given, and different: refused with Kong's message.
    let (s, b) = api
        .req(
            "POST",
            "/plugins",
            Some(json!({"name": "rate-limiting", "config": {"minute": 5, "redis_host": "a.example", "redis": {"host": "b.example"}}})),
        )
        .await;
    assert_eq!(s, 400, "{b}");
    assert_eq!(
        b["fields"]["config"]["redis_host"],
        "both deprecated and new field are used but their values mismatch: redis_host = a.example vs redis.host = b.example",
        "{b}"
    );
    let (s, b) = api
        .req(
            "POST",
            "/plugins",
            Some(json!({"name": "rate-limiting", "config": {"minute": 5, "redis_port": "x"}})),
        )
        .await;
    assert_eq!(s, 400, "{b}");
    assert!(b["fields"]["config"]["redis_port"].is_string(), "{b}");
    // Kong's own checks and messages.
    let (s, b) = api
        .req(
            "POST",
            "/plugins",
            Some(
                json!({"name": "rate-limiting", "config": {"second": 10, "minute": 20, "hour": 5}}),
            ),
        )
        .await;
    assert_eq!(s, 400, "{b}");
    assert_eq!(
        b["fields"]["config"],
        "The limit for hour(5.0) cannot be lower than the limit for second(10.0)",
        "{b}"
    );
    let (s, b) = api
        .req(
            "POST",
            "/plugins",
            Some(json!({"name": "rate-limiting", "config": {"minute": 5, "sync_rate": 1}})),
        )
        .await;
    assert_eq!(s, 400, "{b}");
    assert_eq!(
        b["fields"]["config"], "sync_rate can only be used with the redis policy",
        "{b}"
    );
    let (s, b) = api
        .req(
            "POST",
            "/plugins",
            Some(json!({"name": "rate-limiting", "config": {"minute": 5, "policy": "redis"}})),
        )
        .await;
    assert_eq!(s, 400, "{b}");
    assert_eq!(
        b["fields"]["@entity"][0],
        "failed conditional validation given value of field 'config.policy'",
        "{b}"
    );
    assert_eq!(
        b["fields"]["config"]["redis"]["host"], "required field missing",
        "{b}"
    );
}

/// `OPTIONS` on every path answers as Kong's: 204, the path's methods in `Allow` and
/// `Access-Control-Allow-Methods`, the headers a preflight asked for; `HEAD` answers as `GET`
/// without a body; an unknown schema name is a 404.
#[tokio::test]
async fn options_head_and_unknown_schemas_as_kong() {
    let t = gantry_testkit::sqlite_store().await;
    let api = start(t, &[]).await;
    api.ok(
        "POST",
        "/services",
        Some(json!({"name": "s", "host": "example.com"})),
    )
    .await;
    for (path, methods) in [
        ("/", "GET, HEAD, OPTIONS"),
        ("/status", "GET, HEAD, OPTIONS"),
        ("/services", "GET, HEAD, OPTIONS, POST"),
        ("/services/s", "DELETE, GET, HEAD, OPTIONS, PATCH, PUT"),
        ("/services/s/routes", "GET, HEAD, OPTIONS, POST"),
        ("/consumers/c/key-auth", "GET, HEAD, OPTIONS, POST"),
        ("/routes/r/service", "GET, HEAD, OPTIONS"),
        ("/endpoints", "GET, HEAD, OPTIONS"),
        ("/config", "GET, HEAD, OPTIONS, POST"),
        ("/schemas/services", "GET, HEAD, OPTIONS"),
        ("/schemas/services/validate", "OPTIONS, POST"),
    ] {
        let res = api
            .http
            .request(reqwest::Method::OPTIONS, format!("{}{path}", api.base))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 204, "{path}");
        assert_eq!(res.headers()["allow"], methods, "{path}");
        assert_eq!(
            res.headers()["access-control-allow-methods"],
            methods,
            "{path}"
        );
        assert_eq!(
            res.headers()["access-control-allow-headers"],
            "Content-Type"
        );
    }
    let res = api
        .http
        .request(reqwest::Method::OPTIONS, format!("{}/services", api.base))
        .header("Access-Control-Request-Headers", "X-Thing")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["access-control-allow-headers"], "X-Thing");
    let res = api
        .http
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/nothing-here", api.base),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let res = api
        .http
        .head(format!("{}/services/s", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.text().await.unwrap().is_empty());
    let (s, body) = api.req("GET", "/schemas/nothing", None).await;
    assert_eq!(
        (s, body),
        (404, json!({"message": "No entity named 'nothing'"}))
    );
    let (s, _) = api
        .req("POST", "/schemas/nothing/validate", Some(json!({})))
        .await;
    assert_eq!(s, 404);
    // `/endpoints` lists what is served, sorted segment by segment, as Kong's.
    let e = api.ok("GET", "/endpoints", None).await;
    let data: Vec<&str> = e["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for p in [
        "/",
        "/services/{services}/routes/{routes}",
        "/consumers/{consumers}/key-auth/{keyauth_credentials}",
        "/routes/{routes}/service",
        "/certificates/{certificates}/snis",
        "/schemas/plugins/{name}",
    ] {
        assert!(data.contains(&p), "{p} in {data:?}");
    }
    let pos = |p: &str| data.iter().position(|d| *d == p).unwrap();
    assert!(pos("/services") < pos("/services/{services}"));
    assert!(pos("/services/{services}/routes") < pos("/snis"));
}

/// Kong's certificates take their SNIs inline (`snis`: names), show them sorted on every read,
/// and are found by one of those names (`/certificates/{sni}`).
#[tokio::test]
async fn certificates_take_snis_inline_and_are_found_by_name() {
    for t in all_stores().await {
        let api = start(t, &[]).await;
        let (cert, key, _) = certs();
        let c = api
            .ok(
                "POST",
                "/certificates",
                Some(json!({"cert": cert, "key": key, "snis": ["b.example", "a.example"]})),
            )
            .await;
        assert_eq!(c["snis"], json!(["a.example", "b.example"]));
        let id = c["id"].as_str().unwrap().to_string();
        let snis = api.ok("GET", "/snis", None).await;
        assert_eq!(snis["data"].as_array().unwrap().len(), 2);
        assert_eq!(snis["data"][0]["certificate"]["id"], id.as_str());
        // Found by a name; shown with its names on every read.
        let by_name = api.ok("GET", "/certificates/b.example", None).await;
        assert_eq!(by_name["id"], id.as_str());
        assert_eq!(by_name["snis"], json!(["a.example", "b.example"]));
        let list = api.ok("GET", "/certificates", None).await;
        assert_eq!(list["data"][0]["snis"], json!(["a.example", "b.example"]));
        let (s, e) = api.req("GET", "/certificates/nowhere.example", None).await;
        assert_eq!((s, e), (404, json!({"message": "SNI not found"})));
        // A name twice, or one another certificate holds: Kong's schema violations.
        let (s, e) = api
            .req(
                "POST",
                "/certificates",
                Some(json!({"cert": cert, "key": key, "snis": ["x.example", "x.example"]})),
            )
            .await;
        assert_eq!(s, 400, "{e}");
        assert_eq!(e["fields"]["snis"], "x.example is duplicated");
        let (s, e) = api
            .req(
                "POST",
                "/certificates",
                Some(json!({"cert": cert, "key": key, "snis": ["a.example"]})),
            )
            .await;
        assert_eq!(s, 400, "{e}");
        assert_eq!(
            e["fields"]["snis"],
            format!("a.example already associated with existing certificate '{id}'")
        );
        assert_eq!(
            api.ok("GET", "/certificates", None).await["data"]
                .as_array()
                .unwrap()
                .len(),
            1,
            "nothing written by a refused request"
        );
        // PATCH replaces the names; without `snis` it keeps them; PUT without them clears them.
        let p = api
            .ok(
                "PATCH",
                &format!("/certificates/{id}"),
                Some(json!({"snis": ["c.example", "a.example"]})),
            )
            .await;
        assert_eq!(p["snis"], json!(["a.example", "c.example"]));
        let names: Vec<Value> = api.ok("GET", "/snis", None).await["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].clone())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(!names.contains(&json!("b.example")));
        let p = api
            .ok(
                "PATCH",
                &format!("/certificates/{id}"),
                Some(json!({"tags": ["t"]})),
            )
            .await;
        assert_eq!(p["snis"], json!(["a.example", "c.example"]));
        let p = api
            .ok(
                "PUT",
                &format!("/certificates/{id}"),
                Some(json!({"cert": cert, "key": key})),
            )
            .await;
        assert_eq!(p["snis"], json!([]));
        // PUT to a name no certificate holds creates one holding it.
        let n = api
            .ok(
                "PUT",
                "/certificates/new.example",
                Some(json!({"cert": cert, "key": key, "snis": []})),
            )
            .await;
        assert_eq!(n["snis"], json!(["new.example"]));
        assert_ne!(n["id"], id.as_str());
    }
}

/// A `multipart/form-data` body of `(name, filename, content)` parts; its content type.
fn multipart(parts: &[(&str, Option<&str>, &str)]) -> (String, Vec<u8>) {
    let b = "gantryBOUNDARY7";
    let mut out = String::new();
    for (name, file, content) in parts {
        out.push_str(&format!(
            "--{b}\r\nContent-Disposition: form-data; name=\"{name}\""
        ));
        if let Some(f) = file {
            out.push_str(&format!(
                "; filename=\"{f}\"\r\nContent-Type: application/octet-stream"
            ));
        }
        out.push_str(&format!("\r\n\r\n{content}\r\n"));
    }
    out.push_str(&format!("--{b}--\r\n"));
    (
        format!("multipart/form-data; boundary={b}"),
        out.into_bytes(),
    )
}

/// `multipart/form-data` bodies on the entity endpoints (fields as form fields, files as
/// their content) and on `POST /config`, as Kong takes them.
#[tokio::test]
async fn multipart_bodies_as_kong() {
    let api = start(gantry_testkit::sqlite_store().await, &[]).await;
    let (ct, body) = multipart(&[
        ("name", None, "mp"),
        ("host", None, "mp.example"),
        ("port", None, "8080"),
        ("tags[1]", None, "a"),
        ("tags[2]", None, "b"),
    ]);
    let (s, svc) = api.raw("POST", "/services", &ct, body).await;
    assert_eq!(s, 201, "{svc}");
    assert_eq!(
        (&svc["port"], &svc["tags"]),
        (&json!(8080), &json!(["a", "b"]))
    );
    let (cert, key, _) = certs();
    let (ct, body) = multipart(&[
        ("cert", Some("cert.pem"), &cert),
        ("key", Some("key.pem"), &key),
        ("snis[]", None, "mp.example"),
    ]);
    let (s, c) = api.raw("POST", "/certificates", &ct, body).await;
    assert_eq!(s, 201, "{c}");
    assert_eq!(c["snis"], json!(["mp.example"]));
    // A bad field is named, as from any other body.
    let (ct, body) = multipart(&[("name", None, "x"), ("port", None, "eighty")]);
    let (s, e) = api.raw("POST", "/services", &ct, body).await;
    assert_eq!(s, 400);
    assert!(e["fields"]["port"].is_string(), "{e}");
    let (s, e) = api
        .raw("POST", "/services", "multipart/form-data", b"x".to_vec())
        .await;
    assert_eq!(s, 400, "{e}");

    let off = start(gantry_testkit::sqlite_store().await, &[("database", "off")]).await;
    let yaml = "_format_version: \"3.0\"\nservices:\n- name: from-file\n  url: http://f.example\n";
    let (ct, body) = multipart(&[("config", Some("kong.yml"), yaml)]);
    let (s, b) = off.raw("POST", "/config", &ct, body).await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(b["entities"]["services"], 1);
    let got = off.ok("GET", "/services/from-file", None).await;
    assert_eq!(got["host"], "f.example");
}

/// Kong's `keys` and `key-sets`: JWK and PEM keys with Kong's checks, keys under their set,
/// found by name, and gone with their set.
#[tokio::test]
async fn keys_and_key_sets_as_kong() {
    use base64::Engine;
    let api = start(gantry_testkit::sqlite_store().await, &[]).await;
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let set = api
        .ok("POST", "/key-sets", Some(json!({"name": "signing"})))
        .await;
    let jwk =
        json!({"kty": "EC", "crv": "P-256", "kid": "k1", "x": b64(&[7; 32]), "y": b64(&[9; 32])});
    let k = api
        .ok(
            "POST",
            "/key-sets/signing/keys",
            Some(json!({"name": "one", "kid": "k1", "jwk": jwk.to_string()})),
        )
        .await;
    assert_eq!(k["set"]["id"], set["id"]);
    assert_eq!(k["pem"], Value::Null);
    let pair = rcgen::KeyPair::generate().unwrap();
    let pem = json!({"private_key": pair.serialize_pem(), "public_key": pair.public_key_pem()});
    let k2 = api
        .ok(
            "POST",
            "/keys",
            Some(json!({"name": "two", "kid": "k2", "pem": pem, "set": {"name": "signing"}})),
        )
        .await;
    assert_eq!(k2["pem"]["public_key"], pair.public_key_pem());
    assert_eq!(api.ok("GET", "/keys/two", None).await["kid"], "k2");
    let listed = api.ok("GET", "/key-sets/signing/keys", None).await;
    assert_eq!(listed["data"].as_array().map(Vec::len), Some(2));
    // Kong's checks.
    let other = rcgen::KeyPair::generate().unwrap();
    for (body, field, message) in [
        (
            json!({"kid": "x"}),
            "@entity",
            json!(["at least one of these fields must be non-empty: 'jwk', 'pem'"]),
        ),
        (
            json!({"kid": "k1", "jwk": jwk.to_string(), "pem": pem}),
            "@entity",
            json!(["only one or none of these fields must be set: 'jwk', 'pem'"]),
        ),
        (
            json!({"kid": "other", "jwk": jwk.to_string()}),
            "@entity",
            json!(["kid in jwk.kid must be equal to keys.kid"]),
        ),
        (
            json!({"kid": "k1", "jwk": "{nope"}),
            "@entity",
            json!(["could not json decode jwk string"]),
        ),
        (
            json!({"kid": "k9", "jwk": json!({"kty": "EC", "crv": "P-256", "kid": "k9", "x": "AA"}).to_string()}),
            "@entity",
            json!(["could not load JWK, likely not a valid key"]),
        ),
        (
            json!({"kid": "k3", "pem": {"private_key": pair.serialize_pem(), "public_key": other.public_key_pem()}}),
            "pem",
            json!("public key does not match private key"),
        ),
        (
            json!({"kid": "k4", "pem": {"public_key": "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"}}),
            "pem",
            json!("could not load public key"),
        ),
    ] {
        let (s, b) = api.req("POST", "/keys", Some(body.clone())).await;
        assert_eq!(s, 400, "{body} -> {b}");
        assert_eq!(b["fields"][field], message, "{body} -> {b}");
    }
    // A set deleted takes its keys.
    api.ok("DELETE", "/key-sets/signing", None).await;
    let left = api.ok("GET", "/keys", None).await;
    assert_eq!(left["data"], json!([]));
}

/// Nothing lossy is stored and every answer is Kong's JSON (issue 17's item 10): a NUL in any
/// text is refused naming the field; names take UTF-8 beyond ASCII as Kong's `utf8_name`, with
/// its message for what they refuse; a path that is not UTF-8 once decoded is Kong's JSON 404.
#[tokio::test]
async fn no_lossy_input_and_only_json_answers() {
    let api = start(gantry_testkit::sqlite_store().await, &[]).await;
    let (s, b) = api
        .req("POST", "/consumers", Some(json!({"username": "a\u{0}b"})))
        .await;
    assert_eq!(s, 400, "{b}");
    assert_eq!(b["fields"]["username"], "must not contain a NUL character");
    let (s, b) = api
        .req(
            "POST",
            "/services",
            Some(json!({"name": "x", "url": "http://x.example", "tags": ["ok", "a\u{0}"]})),
        )
        .await;
    assert_eq!(s, 400, "{b}");
    assert_eq!(b["fields"]["tags"][1], "must not contain a NUL character");
    assert_eq!(api.t.store.count("consumers").await.unwrap(), 0);
    assert_eq!(api.t.store.count("services").await.unwrap(), 0);

    let (s, b) = api
        .req(
            "POST",
            "/services",
            Some(json!({"name": "сервис-1", "url": "http://x.example"})),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let (s, b) = api
        .req(
            "GET",
            "/services/%D1%81%D0%B5%D1%80%D0%B2%D0%B8%D1%81-1",
            None,
        )
        .await;
    assert_eq!((s, b["name"].clone()), (200, json!("сервис-1")));
    let (s, b) = api
        .req(
            "POST",
            "/services",
            Some(json!({"name": "a b", "url": "http://x.example"})),
        )
        .await;
    assert_eq!(s, 400, "{b}");
    assert_eq!(
        b["fields"]["name"],
        "invalid value 'a b': the only accepted ascii characters are alphanumerics or ., -, _, and ~"
    );

    let (s, b) = api.req("GET", "/services/%FF%FE", None).await;
    assert_eq!((s, b), (404, json!({"message": "Not found"})));
    let (s, b) = api.req("DELETE", "/consumers/%C3%28/acls/x", None).await;
    assert_eq!((s, b), (404, json!({"message": "Not found"})));
}
