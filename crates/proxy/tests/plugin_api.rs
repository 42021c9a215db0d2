//! The plugin API, through a plugin that exists only in this test: one descriptor gives the
//! schema the configuration is validated with and the runtime the proxy runs. Its rewrite hook
//! changes the request before routing; its access hook waits on a real HTTP service (an
//! authorizer on loopback) without blocking the proxy; it keeps per-request state that its
//! log hook reads back once the response has gone. A second one reads and replaces request
//! bodies, edits the upstream request with what it kept, and stops retries after a failed
//! connection.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gantry_model::plugins::{CompileError, PluginSchema};
use gantry_model::schema::{string, Field};
use gantry_proxy::plugins::{
    error, BoxFuture, Ctx, Descriptor, Flow, Instance, Plugin, Registry, Shared,
};
use gantry_proxy::{Proxy, RequestLog};
use hyper::header::HeaderValue;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Who the authorizer said the caller is: kept from the access phase to the log phase.
#[derive(Clone, Debug, PartialEq)]
struct Caller(String);

/// What the log phase saw: status, and the caller the access phase kept.
static LOGGED: Mutex<Vec<(u16, Option<Caller>)>> = Mutex::new(Vec::new());

struct Authz {
    url: String,
    http: reqwest::Client,
}

impl Plugin for Authz {
    fn rewrite<'a>(&'a self, ctx: &'a mut Ctx<'_>) -> Flow<'a> {
        // Before routing: an old path is moved to the one the routes know.
        if ctx.req.uri.path() == "/old" {
            ctx.req.uri = hyper::Uri::from_static("/guarded");
        }
        Flow::Next
    }

    fn access<'a>(&'a self, ctx: &'a mut Ctx<'_>) -> Flow<'a> {
        let token = ctx
            .req
            .headers
            .get("x-token")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        Flow::later(async move {
            let res = self
                .http
                .get(format!("{}?token={token}", self.url))
                .send()
                .await;
            let res = match res {
                Ok(r) => r,
                Err(_) => return Some(error(502, "authorizer unreachable")),
            };
            if res.status() != 200 {
                return Some(error(403, "denied by the authorizer"));
            }
            let who = res.text().await.unwrap_or_default();
            if let Ok(v) = HeaderValue::from_str(&who) {
                ctx.req.headers.insert("x-caller", v);
            }
            ctx.state.insert(Caller(who));
            None
        })
    }

    fn logs(&self) -> bool {
        true
    }

    fn log(&self, entry: &RequestLog<'_>) -> Option<BoxFuture<'static, ()>> {
        let seen = (entry.status, entry.state.get::<Caller>().cloned());
        // Work that would wait on I/O goes in the returned future, run after the response.
        Some(Box::pin(async move {
            LOGGED.lock().unwrap().push(seen);
        }))
    }
}

fn schema() -> PluginSchema {
    PluginSchema::new("authz-test", 1500, vec![Field::new("url", string()).req()])
}

fn build(_: &Instance, c: &Value, _: &Shared) -> Result<Arc<dyn Plugin>, CompileError> {
    let url = c["url"].as_str().unwrap_or_default();
    if !url.starts_with("http://") {
        return Err(CompileError::field("url", "expected an http:// URL"));
    }
    Ok(Arc::new(Authz {
        url: url.to_string(),
        http: reqwest::Client::new(),
    }))
}

static AUTHZ: Descriptor = Descriptor::new(schema, build);

/// Lets the authorizer answer `token=slow`: it holds that answer until the test says so.
static RELEASE: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// An authorizer: `token=good` is alice, `token=slow` too once released, anything else is
/// refused.
async fn authorizer() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).to_string();
                let slow = head.contains("token=slow");
                if slow {
                    RELEASE.notified().await;
                }
                let reply = if head.contains("token=good") || slow {
                    "HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nalice"
                } else {
                    "HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                };
                let _ = s.write_all(reply.as_bytes()).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_test_plugin_waits_on_io_and_keeps_state_for_the_log_phase() {
    let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_addr = upstream.local_addr().unwrap();
    tokio::spawn(gantry_proxy::echo::serve(upstream));
    let authz = authorizer().await;

    let registry = Registry::default().with(&AUTHZ);
    // The configuration is validated by the same descriptor the proxy runs: a value its
    // builder refuses is refused here, naming the field.
    let load = |url: String| {
        gantry_model::declarative::load(
            json!({
                "_format_version": "3.0",
                "services": [{"name": "s", "url": format!("http://{upstream_addr}"),
                              "routes": [{"name": "r", "paths": ["/guarded"]}]}],
                "plugins": [{"name": "authz-test", "config": {"url": url}}],
            }),
            gantry_model::declarative::LoadOptions {
                now: 1,
                plugins: registry.catalog(),
            },
        )
    };
    let e = load("ftp://nope".into()).unwrap_err();
    assert!(
        e.flattened()
            .iter()
            .any(|l| l.contains("plugins[0].config.url") && l.contains("http:// URL")),
        "{:?}",
        e.flattened()
    );
    let config = load(format!("http://{authz}/check")).expect("valid");
    // Without the plugin in its registry, a proxy refuses the configuration.
    let plain = Proxy::new();
    assert!(plain.apply(&config, 1).is_err());

    let proxy = Proxy::new();
    proxy.set_registry(registry.clone());
    proxy.apply(&config, 1).expect("applies");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let serving = tokio::spawn(proxy.clone().serve(listener, None, false, stopped));

    let http = reqwest::Client::new();
    let get = |path: &str, token: &str| {
        http.get(format!("{base}{path}"))
            .header("x-token", token)
            .send()
    };
    let denied = get("/guarded", "bad").await.unwrap();
    assert_eq!(denied.status(), 403);
    let ok = get("/guarded", "good").await.unwrap();
    assert_eq!(ok.status(), 200);
    let echoed: Value = ok.json().await.unwrap();
    assert_eq!(echoed["headers"]["x-caller"], "alice", "{echoed}");
    // The rewrite phase ran before routing: /old reaches the /guarded route.
    let moved = get("/old", "good").await.unwrap();
    assert_eq!(moved.status(), 200);
    let echoed: Value = moved.json().await.unwrap();
    assert_eq!(
        echoed["headers"]["x-forwarded-path"], "/guarded",
        "{echoed}"
    );

    // A request waiting on the authorizer holds up no other: one is answered while it waits,
    // and it is answered once the authorizer is.
    let slow = tokio::spawn(get("/guarded", "slow"));
    assert_eq!(get("/guarded", "bad").await.unwrap().status(), 403);
    assert!(!slow.is_finished());
    RELEASE.notify_one();
    assert_eq!(slow.await.unwrap().unwrap().status(), 200);

    // The log phase read the state the access phase kept, per request.
    let deadline = Instant::now() + Duration::from_secs(5);
    let logged = loop {
        let l = LOGGED.lock().unwrap().clone();
        if l.len() >= 5 || Instant::now() > deadline {
            break l;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let alice = Some(Caller("alice".into()));
    let mut seen = logged.clone();
    seen.sort_by_key(|(s, _)| *s);
    assert_eq!(
        seen,
        [
            (200, alice.clone()),
            (200, alice.clone()),
            (200, alice.clone()),
            (403, None),
            (403, None)
        ],
        "{logged:?}"
    );
    let _ = stop.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), serving).await;
}

/// Reads and rewrites request bodies, edits the upstream request, and stops retries: the
/// hooks around the upstream exchange.
struct Body {
    retry: bool,
}

/// How many connection failures `upstream_failed` saw.
static FAILURES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl Plugin for Body {
    fn reads_body(&self) -> bool {
        true
    }

    fn request_body<'a>(&'a self, ctx: &'a mut Ctx<'_>, body: &'a mut bytes::Bytes) -> Flow<'a> {
        if body.windows(9).any(|w| w == b"forbidden") {
            return Flow::Respond(error(403, "the body says no"));
        }
        // Waits like any hook may, then replaces the body.
        Flow::later(async move {
            tokio::task::yield_now().await;
            ctx.state.insert(Caller(format!("{} bytes", body.len())));
            *body = bytes::Bytes::from(body.to_ascii_uppercase());
            None
        })
    }

    fn upstream_request(&self, req: &mut gantry_proxy::plugins::UpstreamRequest<'_>) {
        let kept = req.state.get::<Caller>().map(|c| c.0.clone());
        req.headers.insert(
            "x-kept",
            HeaderValue::from_str(&kept.unwrap_or_default()).unwrap(),
        );
        req.headers
            .insert("x-target", HeaderValue::from_str(req.target).unwrap());
    }

    fn upstream_failed(
        &self,
        f: &gantry_proxy::plugins::UpstreamFailure<'_>,
    ) -> gantry_proxy::plugins::Retry {
        FAILURES.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        assert!(!f.timed_out, "{}", f.error);
        if self.retry {
            gantry_proxy::plugins::Retry::Allow
        } else {
            gantry_proxy::plugins::Retry::Stop
        }
    }
}

fn body_schema() -> PluginSchema {
    PluginSchema::new(
        "body-test",
        900,
        vec![Field::new("retry", gantry_model::schema::boolean()).def(json!(true))],
    )
}

fn body_build(_: &Instance, c: &Value, _: &Shared) -> Result<Arc<dyn Plugin>, CompileError> {
    Ok(Arc::new(Body {
        retry: c["retry"].as_bool().unwrap_or(true),
    }))
}

static BODY: Descriptor = Descriptor::new(body_schema, body_build);

#[tokio::test]
async fn a_test_plugin_reads_the_body_edits_the_upstream_request_and_stops_retries() {
    let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_addr = upstream.local_addr().unwrap();
    tokio::spawn(gantry_proxy::echo::serve(upstream));
    // A port nothing listens on: every connection to it is refused.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let registry = Registry::default().with(&BODY);
    let config = gantry_model::declarative::load(
        json!({
            "_format_version": "3.0",
            "services": [
                {"name": "s", "url": format!("http://{upstream_addr}"),
                 "routes": [{"name": "r", "paths": ["/body"]}]},
                {"name": "down", "url": format!("http://{closed}"), "retries": 3,
                 "routes": [{"name": "retried", "paths": ["/retried"],
                             "plugins": [{"name": "body-test"}]},
                            {"name": "once", "paths": ["/once"],
                             "plugins": [{"name": "body-test", "config": {"retry": false}}]}]},
            ],
            "plugins": [{"name": "body-test", "route": "r"}],
        }),
        gantry_model::declarative::LoadOptions {
            now: 1,
            plugins: registry.catalog(),
        },
    )
    .expect("valid");
    let proxy = Proxy::new();
    proxy.set_registry(registry);
    proxy.apply(&config, 1).expect("applies");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let serving = tokio::spawn(proxy.clone().serve(listener, None, false, stopped));
    let http = reqwest::Client::new();

    // The body is read whole, replaced, and sent with its new length; the upstream request
    // carries what the body phase kept in the request's state.
    let res = http
        .post(format!("{base}/body"))
        .body("hello body")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let echoed: Value = res.json().await.unwrap();
    assert_eq!(echoed["body"], "HELLO BODY", "{echoed}");
    assert_eq!(echoed["headers"]["content-length"], "10", "{echoed}");
    assert_eq!(echoed["headers"]["x-kept"], "10 bytes", "{echoed}");
    assert_eq!(
        echoed["headers"]["x-target"],
        upstream_addr.to_string(),
        "{echoed}"
    );
    // A chunked body too: the upstream gets it with a Content-Length.
    let mut raw = tokio::net::TcpStream::connect(base.trim_start_matches("http://"))
        .await
        .unwrap();
    raw.write_all(
        b"POST /body HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n4\r\nchun\r\n3\r\nked\r\n0\r\n\r\n",
    )
    .await
    .unwrap();
    let mut answer = String::new();
    raw.read_to_string(&mut answer).await.unwrap();
    let json_at = answer.find('{').expect("a JSON body");
    let echoed: Value = serde_json::from_str(answer[json_at..].trim()).unwrap();
    assert_eq!(echoed["body"], "CHUNKED", "{echoed}");
    assert_eq!(echoed["headers"]["content-length"], "7", "{echoed}");
    assert!(
        echoed["headers"].get("transfer-encoding").is_none(),
        "{echoed}"
    );
    // The body phase may answer.
    let res = http
        .post(format!("{base}/body"))
        .body("this is forbidden")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    // A body larger than the proxy reads for plugins is refused, not passed unread.
    let big = vec![b'x'; gantry_proxy::plugins::BODY_LIMIT + 1];
    let res = http
        .post(format!("{base}/body"))
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);

    // Connection failures: retried up to `retries` (1 + 3 tries) unless the plugin stops them.
    FAILURES.store(0, std::sync::atomic::Ordering::SeqCst);
    let res = http.get(format!("{base}/retried")).send().await.unwrap();
    assert_eq!(res.status(), 502);
    assert_eq!(FAILURES.load(std::sync::atomic::Ordering::SeqCst), 4);
    FAILURES.store(0, std::sync::atomic::Ordering::SeqCst);
    let res = http.get(format!("{base}/once")).send().await.unwrap();
    assert_eq!(res.status(), 502);
    assert_eq!(FAILURES.load(std::sync::atomic::Ordering::SeqCst), 1);

    let _ = stop.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), serving).await;
}
