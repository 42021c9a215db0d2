//! oauth2 as Kong 3.9's, through real nodes: every grant end to end, token checks, expiry and
//! refresh, PKCE, the Admin API's entities, tokens surviving a restart, and on a data plane
//! tokens issued and checked with the control plane holding them.

use base64::Engine;
use gantry_testkit::http::eventually;
use gantry_testkit::process::{admin, synced, Node};
use gantry_testkit::upstream::echo;
use serde_json::{json, Value};
use std::time::Duration;

const WITHIN: Duration = Duration::from_secs(20);

/// A node whose proxy believes a peer's `X-Forwarded-Proto` (for
/// `accept_http_if_already_terminated`), with a TLS listener too.
fn node(dir: &std::path::Path) -> Node {
    let env = gantry_testkit::process::env(&[
        ("KONG_PROXY_LISTEN", "127.0.0.1:0, 127.0.0.1:0 ssl"),
        ("KONG_TRUSTED_IPS", "0.0.0.0/0,::/0"),
    ]);
    Node::start(dir, &env)
}

struct Api<'a> {
    http: &'a reqwest::Client,
    proxy: String,
}

impl Api<'_> {
    /// A form POST to the proxy, as behind a proxy that ended TLS.
    async fn post(&self, path: &str, form: &[(&str, &str)]) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.proxy))
            .header("x-forwarded-proto", "https")
            .form(form)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str, token: Option<&str>) -> reqwest::Response {
        let mut r = self.http.get(format!("{}{path}", self.proxy));
        if let Some(t) = token {
            r = r.header("authorization", format!("Bearer {t}"));
        }
        r.send().await.unwrap()
    }

    async fn status(&self, path: &str, token: Option<&str>) -> u16 {
        self.get(path, token).await.status().as_u16()
    }
}

fn query_of(uri: &str, sep: char) -> std::collections::HashMap<String, String> {
    let q = uri.split_once(sep).map(|(_, q)| q).unwrap_or_default();
    form_urlencoded::parse(q.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn s256(verifier: &str) -> String {
    use sha2::Digest;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier))
}

/// Every grant through one node, as Kong 3.9 answers them.
#[tokio::test]
async fn oauth2_as_kong() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = node(dir.path());
    let http = reqwest::Client::new();
    let up = echo().await;
    admin(
        &http,
        &n,
        "POST",
        "/services",
        json!({"name": "s", "url": format!("http://{up}")}),
    )
    .await;
    let oauth2 = |extra: Value| {
        let mut c = json!({
            "scopes": ["email", "profile"],
            "provision_key": "pk",
            "enable_authorization_code": true,
            "enable_implicit_grant": true,
            "enable_client_credentials": true,
            "enable_password_grant": true,
            "accept_http_if_already_terminated": true,
        });
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        json!({"name": "oauth2", "config": c})
    };
    for (route, extra) in [
        ("api", json!({})),
        ("short", json!({"token_expiration": 1})),
        ("hidden", json!({"hide_credentials": true})),
        ("anon", json!({"anonymous": "guest"})),
        (
            "strict",
            json!({"pkce": "strict", "reuse_refresh_token": true, "realm": "kingdom"}),
        ),
    ] {
        let r = json!({"name": route, "paths": [format!("/{route}")]});
        admin(&http, &n, "POST", "/services/s/routes", r).await;
        admin(
            &http,
            &n,
            "POST",
            &format!("/routes/{route}/plugins"),
            oauth2(extra),
        )
        .await;
    }
    for who in ["alice", "guest"] {
        admin(&http, &n, "POST", "/consumers", json!({"username": who})).await;
    }
    let app = admin(
        &http,
        &n,
        "POST",
        "/consumers/alice/oauth2",
        json!({
            "name": "app", "client_id": "cid", "client_secret": "secret",
            "redirect_uris": ["https://app.example/cb", "myapp://done"],
        }),
    )
    .await;
    assert_eq!(app["client_type"], "confidential");
    assert_eq!(app["hash_secret"], false);
    let public = json!({"name": "spa", "client_id": "pub", "client_type": "public", "redirect_uris": ["https://spa.example/cb"]});
    admin(&http, &n, "POST", "/consumers/alice/oauth2", public).await;
    // A hashed secret is stored as Kong stores it, and still authenticates.
    let hashed = json!({"name": "h", "client_id": "hid", "client_secret": "hs", "hash_secret": true, "redirect_uris": ["https://h.example/"]});
    let h = admin(&http, &n, "POST", "/consumers/alice/oauth2", hashed).await;
    assert!(
        h["client_secret"]
            .as_str()
            .unwrap()
            .starts_with("$pbkdf2-sha512$i=10000,l=32$"),
        "{h}"
    );
    // Generated ids and secrets, and the generated provision key.
    let gen = admin(
        &http,
        &n,
        "POST",
        "/oauth2",
        json!({"name": "g", "consumer": {"username": "guest"}}),
    )
    .await;
    assert_eq!(gen["client_id"].as_str().map(str::len), Some(32), "{gen}");
    assert_eq!(
        gen["client_secret"].as_str().map(str::len),
        Some(32),
        "{gen}"
    );
    let p = admin(&http, &n, "POST", "/plugins", json!({"name": "oauth2", "service": {"name": "s"}, "config": {"enable_password_grant": true}})).await;
    assert_eq!(
        p["config"]["provision_key"].as_str().map(str::len),
        Some(32),
        "{p}"
    );
    assert_eq!(p["config"]["refresh_token_ttl"], 1_209_600);
    assert_eq!(p["config"]["pkce"], "lax");
    admin(
        &http,
        &n,
        "DELETE",
        &format!("/plugins/{}", p["id"].as_str().unwrap()),
        json!(null),
    )
    .await;

    // Kong's validation.
    for (body, field, message) in [
        (json!({"name": "oauth2", "config": {}}), "@entity", json!(["at least one of these fields must be true: enable_authorization_code, enable_implicit_grant, enable_client_credentials, enable_password_grant"])),
        (json!({"name": "oauth2", "config": {"enable_password_grant": true, "mandatory_scope": true}}), "config", json!({"scopes": "required field missing"})),
        (json!({"name": "oauth2", "consumer": {"username": "alice"}, "config": {"enable_password_grant": true}}), "consumer", json!("value must be null")),
    ] {
        let r = http.post(format!("{}/plugins", n.admin)).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 400);
        let b: Value = r.json().await.unwrap();
        assert_eq!(b["fields"][field], message, "{b}");
    }
    let bad = json!({"name": "x", "redirect_uris": ["https://a.example/cb#frag"]});
    let r = http
        .post(format!("{}/consumers/alice/oauth2", n.admin))
        .json(&bad)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let b: Value = r.json().await.unwrap();
    assert_eq!(
        b["fields"]["redirect_uris"],
        json!(["fragment not allowed in 'https://a.example/cb#frag'"]),
        "{b}"
    );

    synced(&http, &n).await;
    let api = Api {
        http: &http,
        proxy: n.proxy.clone().unwrap(),
    };

    // Only POST, only over HTTPS.
    let r = api.get("/api/oauth2/token", None).await;
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["www-authenticate"], "Bearer error=\"invalid_method\" error_description=\"The HTTP method GET is invalid for the token endpoint\"");
    assert_eq!(r.headers()["cache-control"], "no-store");
    let plain = http
        .post(format!("{}/api/oauth2/token", api.proxy))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), 400);
    assert_eq!(
        plain.json::<Value>().await.unwrap(),
        json!({"error": "access_denied", "error_description": "You must use HTTPS"})
    );

    // client_credentials: a token without a refresh token; the consumer upstream.
    let cc = [
        ("grant_type", "client_credentials"),
        ("client_id", "cid"),
        ("client_secret", "secret"),
        ("scope", "email"),
    ];
    let (s, t) = api.post("/api/oauth2/token", &cc).await;
    assert_eq!(s, 200, "{t}");
    assert_eq!(t["token_type"], "bearer");
    assert_eq!(t["expires_in"], 7200);
    assert!(t.get("refresh_token").is_none(), "{t}");
    let token = t["access_token"].as_str().unwrap().to_string();
    // Used at once: this node answers with what it issued before the change comes back.
    let r = api.get("/api/x", Some(&token)).await;
    assert_eq!(r.status(), 200);
    let seen: Value = r.json().await.unwrap();
    let h = &seen["headers"];
    assert_eq!(
        (&h["x-consumer-username"], &h["x-credential-identifier"]),
        (&json!("alice"), &json!("cid")),
        "{seen}"
    );
    assert_eq!(h["x-authenticated-scope"], "email");
    assert!(
        h.get("x-authenticated-userid").is_none() && h.get("x-anonymous-consumer").is_none(),
        "{seen}"
    );
    // The token as a query parameter or in a form body works too.
    assert_eq!(
        api.status(&format!("/api/x?access_token={token}"), None)
            .await,
        200
    );
    // The client in a Basic header; a wrong secret is 401 with Basic there, 400 elsewhere.
    let basic = base64::engine::general_purpose::STANDARD.encode("cid:secret");
    let r = http
        .post(format!("{}/api/oauth2/token", api.proxy))
        .header("x-forwarded-proto", "https")
        .header("authorization", format!("Basic {basic}"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let wrong = base64::engine::general_purpose::STANDARD.encode("cid:nope");
    let r = http
        .post(format!("{}/api/oauth2/token", api.proxy))
        .header("x-forwarded-proto", "https")
        .header("authorization", format!("Basic {wrong}"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Basic realm=\"OAuth2.0\"");
    let (s, b) = api
        .post(
            "/api/oauth2/token",
            &[
                ("grant_type", "client_credentials"),
                ("client_id", "cid"),
                ("client_secret", "nope"),
            ],
        )
        .await;
    assert_eq!(
        (s, b),
        (
            400,
            json!({"error": "invalid_client", "error_description": "Invalid client authentication"})
        )
    );
    let (s, b) = api
        .post(
            "/api/oauth2/token",
            &[
                ("grant_type", "client_credentials"),
                ("client_id", "hid"),
                ("client_secret", "hs"),
            ],
        )
        .await;
    assert_eq!(s, 200, "a hashed secret: {b}");
    let (s, b) = api
        .post(
            "/api/oauth2/token",
            &[
                ("grant_type", "client_credentials"),
                ("client_id", "cid"),
                ("client_secret", "secret"),
                ("scope", "admin"),
            ],
        )
        .await;
    assert_eq!(
        (s, b),
        (
            400,
            json!({"error": "invalid_scope", "error_description": "\"admin\" is an invalid scope"})
        )
    );
    let (s, b) = api
        .post(
            "/api/oauth2/token",
            &[
                ("grant_type", "magic"),
                ("client_id", "cid"),
                ("client_secret", "secret"),
                ("state", "xyz"),
            ],
        )
        .await;
    assert_eq!(
        (s, b),
        (
            400,
            json!({"error": "unsupported_grant_type", "error_description": "Invalid grant_type", "state": "xyz"})
        )
    );

    // Token checks: missing, unknown, Kong's bodies and WWW-Authenticate.
    let r = api.get("/api/x", None).await;
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"error": "invalid_request", "error_description": "The access token is missing"})
    );
    let r = api.get("/strict/x", Some("nope")).await;
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer realm=\"kingdom\" error=\"invalid_token\" error_description=\"The access token is invalid or has expired\"");
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"error": "invalid_token", "error_description": "The access token is invalid or has expired"})
    );

    // password: provision key and user; a refresh token; refresh, and the old pair gone.
    let pw = [
        ("grant_type", "password"),
        ("client_id", "cid"),
        ("client_secret", "secret"),
        ("provision_key", "pk"),
        ("authenticated_userid", "u1"),
        ("scope", "email profile"),
    ];
    let (s, t) = api.post("/api/oauth2/token", &pw).await;
    assert_eq!(s, 200, "{t}");
    let (access, refresh) = (
        t["access_token"].as_str().unwrap().to_string(),
        t["refresh_token"].as_str().unwrap().to_string(),
    );
    let seen: Value = api.get("/api/x", Some(&access)).await.json().await.unwrap();
    assert_eq!(
        (
            &seen["headers"]["x-authenticated-userid"],
            &seen["headers"]["x-authenticated-scope"]
        ),
        (&json!("u1"), &json!("email profile"))
    );
    let (s, b) = api
        .post(
            "/api/oauth2/token",
            &[
                ("grant_type", "password"),
                ("client_id", "cid"),
                ("client_secret", "secret"),
                ("provision_key", "bad"),
                ("authenticated_userid", "u1"),
            ],
        )
        .await;
    assert_eq!(
        (s, b),
        (
            400,
            json!({"error": "invalid_provision_key", "error_description": "Invalid provision_key"})
        )
    );
    let (s, b) = api
        .post(
            "/api/oauth2/token",
            &[
                ("grant_type", "password"),
                ("client_id", "cid"),
                ("client_secret", "secret"),
                ("provision_key", "pk"),
            ],
        )
        .await;
    assert_eq!(
        (s, b),
        (
            400,
            json!({"error": "invalid_authenticated_userid", "error_description": "Missing authenticated_userid parameter"})
        )
    );
    let rf = [
        ("grant_type", "refresh_token"),
        ("client_id", "cid"),
        ("client_secret", "secret"),
        ("refresh_token", refresh.as_str()),
    ];
    let (s, t2) = api.post("/api/oauth2/token", &rf).await;
    assert_eq!(s, 200, "{t2}");
    assert_ne!(t2["refresh_token"], t["refresh_token"]);
    let access2 = t2["access_token"].as_str().unwrap().to_string();
    assert_eq!(api.status("/api/x", Some(&access2)).await, 200);
    assert_eq!(
        api.status("/api/x", Some(&access)).await,
        401,
        "the refreshed token is gone"
    );
    let (s, b) = api.post("/api/oauth2/token", &rf).await;
    assert_eq!(
        (s, b),
        (
            400,
            json!({"error": "invalid_request", "error_description": "Invalid refresh_token"})
        )
    );

    // authorization_code: the code in the redirect, one token for it, once.
    let authz = [
        ("client_id", "cid"),
        ("response_type", "code"),
        ("provision_key", "pk"),
        ("authenticated_userid", "u2"),
        ("scope", "profile"),
        ("state", "st8"),
    ];
    let (s, b) = api.post("/api/oauth2/authorize", &authz).await;
    assert_eq!(s, 200, "{b}");
    let redirect = b["redirect_uri"].as_str().unwrap();
    assert!(
        redirect.starts_with("https://app.example/cb?"),
        "{redirect}"
    );
    let q = query_of(redirect, '?');
    assert_eq!(q["state"], "st8");
    let code = q["code"].clone();
    let ex = [
        ("grant_type", "authorization_code"),
        ("client_id", "cid"),
        ("client_secret", "secret"),
        ("code", code.as_str()),
    ];
    let (s, t) = api.post("/api/oauth2/token", &ex).await;
    assert_eq!(s, 200, "{t}");
    assert!(t["refresh_token"].is_string(), "{t}");
    let seen: Value = api
        .get("/api/x", Some(t["access_token"].as_str().unwrap()))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(seen["headers"]["x-authenticated-userid"], "u2");
    let (s, b) = api.post("/api/oauth2/token", &ex).await;
    assert_eq!(
        (s, b),
        (
            400,
            json!({"error": "invalid_request", "error_description": "Invalid code"})
        ),
        "a code serves once"
    );
    // A redirect_uri not registered: the error goes to the first registered one.
    let (s, b) = api
        .post(
            "/api/oauth2/authorize",
            &[
                ("client_id", "cid"),
                ("response_type", "code"),
                ("provision_key", "pk"),
                ("authenticated_userid", "u2"),
                ("redirect_uri", "https://evil.example/"),
            ],
        )
        .await;
    assert_eq!(s, 400);
    let q = query_of(b["redirect_uri"].as_str().unwrap(), '?');
    assert_eq!(q["error"], "invalid_request", "{b}");
    // Another registered redirect, with another scheme.
    let (s, b) = api
        .post(
            "/api/oauth2/authorize",
            &[
                ("client_id", "cid"),
                ("response_type", "code"),
                ("provision_key", "pk"),
                ("authenticated_userid", "u2"),
                ("redirect_uri", "myapp://done"),
            ],
        )
        .await;
    assert_eq!(s, 200);
    assert!(
        b["redirect_uri"]
            .as_str()
            .unwrap()
            .starts_with("myapp://done?code="),
        "{b}"
    );

    // PKCE: a public client must send a challenge, and the verifier redeems the code.
    let (s, b) = api
        .post(
            "/api/oauth2/authorize",
            &[
                ("client_id", "pub"),
                ("response_type", "code"),
                ("provision_key", "pk"),
                ("authenticated_userid", "u3"),
            ],
        )
        .await;
    assert_eq!(s, 400);
    let q = query_of(b["redirect_uri"].as_str().unwrap(), '?');
    assert_eq!(
        q["error_description"], "code_challenge is required for public clients",
        "{b}"
    );
    let verifier = "a".repeat(43) + "-verifier";
    let challenge = s256(&verifier);
    let (s, b) = api
        .post(
            "/api/oauth2/authorize",
            &[
                ("client_id", "pub"),
                ("response_type", "code"),
                ("provision_key", "pk"),
                ("authenticated_userid", "u3"),
                ("code_challenge", challenge.as_str()),
                ("code_challenge_method", "S256"),
            ],
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let code = query_of(b["redirect_uri"].as_str().unwrap(), '?')["code"].clone();
    let (s, b) = api
        .post(
            "/api/oauth2/token",
            &[
                ("grant_type", "authorization_code"),
                ("client_id", "pub"),
                ("code", code.as_str()),
                ("code_verifier", &"b".repeat(43)),
            ],
        )
        .await;
    assert_eq!(
        (s, b),
        (
            400,
            json!({"error": "invalid_grant", "error_description": "Invalid code"})
        )
    );
    let (s, b) = api
        .post(
            "/api/oauth2/token",
            &[
                ("grant_type", "authorization_code"),
                ("client_id", "pub"),
                ("code", code.as_str()),
                ("code_verifier", verifier.as_str()),
            ],
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = api
        .post(
            "/api/oauth2/token",
            &[
                ("grant_type", "authorization_code"),
                ("client_id", "pub"),
                ("client_secret", "x"),
                ("code", code.as_str()),
            ],
        )
        .await;
    assert_eq!(
        (s, b),
        (
            400,
            json!({"error": "invalid_request", "error_description": "client_secret is disallowed for public clients"})
        )
    );
    // strict: a confidential client needs a challenge too.
    let (s, b) = api
        .post(
            "/strict/oauth2/authorize",
            &[
                ("client_id", "cid"),
                ("response_type", "code"),
                ("provision_key", "pk"),
                ("authenticated_userid", "u3"),
            ],
        )
        .await;
    assert_eq!(s, 400, "{b}");

    // implicit: the token in the redirect's fragment, without a refresh token.
    let (s, b) = api
        .post(
            "/api/oauth2/authorize",
            &[
                ("client_id", "cid"),
                ("response_type", "token"),
                ("provision_key", "pk"),
                ("authenticated_userid", "u4"),
                ("state", "s"),
            ],
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let redirect = b["redirect_uri"].as_str().unwrap();
    let f = query_of(redirect, '#');
    assert_eq!(
        (f["token_type"].as_str(), f["state"].as_str()),
        ("bearer", "s"),
        "{redirect}"
    );
    assert!(!f.contains_key("refresh_token"), "{redirect}");
    assert_eq!(f["expires_in"], "7200", "{redirect}");
    assert_eq!(api.status("/api/x", Some(&f["access_token"])).await, 200);

    // Expiry: a token of one second, refused after it.
    let (s, t) = api.post("/short/oauth2/token", &cc).await;
    assert_eq!(s, 200, "{t}");
    let short = t["access_token"].as_str().unwrap().to_string();
    assert_eq!(t["expires_in"], 1);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(api.status("/short/x", Some(&short)).await, 401);

    // reuse_refresh_token: the refresh token stays, the access token changes.
    let (s, t) = api.post("/strict/oauth2/token", &pw).await;
    assert_eq!(s, 200, "{t}");
    let rf2 = [
        ("grant_type", "refresh_token"),
        ("client_id", "cid"),
        ("client_secret", "secret"),
        ("refresh_token", t["refresh_token"].as_str().unwrap()),
    ];
    let (s, t3) = api.post("/strict/oauth2/token", &rf2).await;
    assert_eq!(s, 200, "{t3}");
    assert_eq!(t3["refresh_token"], t["refresh_token"]);
    assert_ne!(t3["access_token"], t["access_token"]);
    assert_eq!(
        api.status("/strict/x", Some(t3["access_token"].as_str().unwrap()))
            .await,
        200
    );
    assert_eq!(
        api.status("/strict/x", Some(t["access_token"].as_str().unwrap()))
            .await,
        401
    );

    // hide_credentials: the token does not reach the upstream, from the header or the query.
    let seen: Value = api
        .get("/hidden/x", Some(&token))
        .await
        .json()
        .await
        .unwrap();
    assert!(seen["headers"].get("authorization").is_none(), "{seen}");
    let r = api
        .get(&format!("/hidden/x?access_token={token}&keep=1"), None)
        .await;
    assert_eq!(r.status(), 200);
    let seen: Value = r.json().await.unwrap();
    assert_eq!(seen["uri"], "/x?keep=1", "{seen}");
    // anonymous: no token is the anonymous consumer; a token is its own.
    let seen: Value = api.get("/anon/x", None).await.json().await.unwrap();
    assert_eq!(
        (
            &seen["headers"]["x-anonymous-consumer"],
            &seen["headers"]["x-consumer-username"]
        ),
        (&json!("true"), &json!("guest")),
        "{seen}"
    );
    let seen: Value = api.get("/anon/x", Some(&token)).await.json().await.unwrap();
    assert_eq!(seen["headers"]["x-consumer-username"], "alice");

    // Over real TLS (no forwarding header needed).
    let tls = n.proxy_tls.clone().unwrap();
    let out = std::process::Command::new("curl")
        .args([
            "-sSk",
            "-d",
            "grant_type=client_credentials&client_id=cid&client_secret=secret",
            &format!("{tls}/api/oauth2/token"),
        ])
        .output()
        .unwrap();
    let b: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(b["access_token"].is_string(), "{said}");

    // The Admin API: tokens listed and found by access token; codes are not served; a token
    // deleted is refused.
    synced(&http, &n).await;
    let list = admin(&http, &n, "GET", "/oauth2_tokens", json!(null)).await;
    assert!(list["data"].as_array().unwrap().len() >= 5, "{list}");
    let one = admin(
        &http,
        &n,
        "GET",
        &format!("/oauth2_tokens/{token}"),
        json!(null),
    )
    .await;
    assert_eq!(one["scope"], "email");
    assert_eq!(one["credential"]["id"], app["id"]);
    let r = http
        .get(format!("{}/oauth2_authorization_codes", n.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let creds = admin(
        &http,
        &n,
        "GET",
        &format!("/oauth2/{}/oauth2_tokens", app["id"].as_str().unwrap()),
        json!(null),
    )
    .await;
    assert!(!creds["data"].as_array().unwrap().is_empty());
    // A refresh token lives refresh_token_ttl: shown as what is left.
    let with_refresh = admin(
        &http,
        &n,
        "GET",
        &format!("/oauth2_tokens/{access2}"),
        json!(null),
    )
    .await;
    let left = with_refresh["ttl"].as_i64().unwrap();
    assert!((1_209_500..=1_209_600).contains(&left), "{with_refresh}");

    // Tokens are in the store: they survive a restart.
    n.kill9();
    drop(n);
    let n = node(dir.path());
    let api = Api {
        http: &http,
        proxy: n.proxy.clone().unwrap(),
    };
    eventually(WITHIN, "the token did not survive a restart", || async {
        api.status("/api/x", Some(&token)).await == 200
    })
    .await;
    let r = http
        .delete(format!("{}/oauth2_tokens/{token}", n.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    synced(&http, &n).await;
    assert_eq!(api.status("/api/x", Some(&token)).await, 401);
}

/// In hybrid mode: a data plane issues tokens (the control plane stores them) and checks
/// them; another data plane accepts them once the change reaches it. Kong cannot do this.
#[tokio::test]
async fn oauth2_on_data_planes() {
    let dir = tempfile::tempdir().unwrap();
    use gantry_testkit::process::{cp_env, dp_env, gen_cert};
    let cert = gen_cert(dir.path(), "cluster");
    let cp = Node::start(&dir.path().join("cp"), &cp_env(&cert, &[]));
    let addr = cp.cluster.clone().unwrap();
    let trust = [("KONG_TRUSTED_IPS", "0.0.0.0/0,::/0")];
    let dp = Node::start(&dir.path().join("dp"), &dp_env(&addr, &cert, &trust));
    let dp2 = Node::start(&dir.path().join("dp2"), &dp_env(&addr, &cert, &trust));
    let http = reqwest::Client::new();
    let up = echo().await;
    gantry_testkit::process::service_and_route(&http, &cp, &up, "/a").await;
    let plugin = json!({"name": "oauth2", "config": {"enable_client_credentials": true, "accept_http_if_already_terminated": true, "scopes": ["read"]}});
    admin(&http, &cp, "POST", "/routes/r/plugins", plugin).await;
    admin(
        &http,
        &cp,
        "POST",
        "/consumers",
        json!({"username": "alice"}),
    )
    .await;
    let cred = json!({"name": "app", "client_id": "cid", "client_secret": "secret", "redirect_uris": ["https://app.example/cb"]});
    admin(&http, &cp, "POST", "/consumers/alice/oauth2", cred).await;
    let one = Api {
        http: &http,
        proxy: dp.dp_proxy(),
    };
    let two = Api {
        http: &http,
        proxy: dp2.dp_proxy(),
    };
    // Both data planes hold the plugin and the credential before a token is asked for.
    gantry_testkit::process::dps_synced(&http, &cp, 2).await;
    assert_eq!(one.status("/a", None).await, 401);
    assert_eq!(two.status("/a", None).await, 401);
    let cc = [
        ("grant_type", "client_credentials"),
        ("client_id", "cid"),
        ("client_secret", "secret"),
        ("scope", "read"),
    ];
    let (s, t) = one.post("/a/oauth2/token", &cc).await;
    assert_eq!(s, 200, "{t}");
    let token = t["access_token"].as_str().unwrap().to_string();
    let r = one.get("/a", Some(&token)).await;
    assert_eq!(
        r.status(),
        200,
        "the issuing data plane takes its token at once"
    );
    eventually(
        WITHIN,
        "the token never reached the other data plane",
        || async { two.status("/a", Some(&token)).await == 200 },
    )
    .await;
    // The control plane holds it; deleted there, it is refused everywhere.
    let t = admin(
        &http,
        &cp,
        "GET",
        &format!("/oauth2_tokens/{token}"),
        json!(null),
    )
    .await;
    assert_eq!(t["scope"], "read");
    let r = http
        .delete(format!("{}/oauth2_tokens/{token}", cp.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    eventually(WITHIN, "the deleted token still works", || async {
        one.status("/a", Some(&token)).await == 401 && two.status("/a", Some(&token)).await == 401
    })
    .await;
}

/// Without a database, oauth2 is refused when written, naming why.
#[tokio::test]
async fn oauth2_needs_a_database() {
    let dir = tempfile::tempdir().unwrap();
    let env = gantry_testkit::process::env(&[("KONG_DATABASE", "off")]);
    let n = Node::start(dir.path(), &env);
    let http = reqwest::Client::new();
    let config = json!({"_format_version": "3.0", "plugins": [{"name": "oauth2", "config": {"enable_client_credentials": true}}]});
    let r = http
        .post(format!("{}/config", n.admin))
        .json(&config)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let b = r.text().await.unwrap();
    assert!(b.contains("database = off"), "{b}");
}
