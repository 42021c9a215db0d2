//! The targets and the promises each checks.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};

use gantry_model::declarative::{self, LoadOptions};
use gantry_model::document::{self, Secrets};
use gantry_model::hash::Digests;
use gantry_model::{Config, Doc};
use serde_json::Value;

const NOW: i64 = 1_700_000_000;

/// Pieces of each target's grammar, spliced into inputs by the mutator.
pub fn tokens(target: &str) -> &'static [&'static [u8]] {
    match target {
        "declarative" => &[
            b"services:\n",
            b"routes:\n",
            b"- name: ",
            b"  paths: [",
            b"]\n",
            b"plugins:\n",
            b"upstreams:\n",
            b"targets:\n",
            b"certificates:\n",
            b"&a ",
            b"*a",
            b"<<: *a\n",
            b"~*(",
            b"headers:\n",
            b"hosts: [",
            b"\"",
            b"'",
            b"{",
            b"}",
            b": ",
            b"\n  ",
            b"consumers:\n",
            b"keyauth_credentials:\n",
            b"_format_version: \"3.0\"\n",
            b"\0",
            b"\xff",
            b"null",
            b"1e999",
            b"-1",
            b"[[[[[[[[",
            b"*.example.com",
        ],
        "admin_body" => &[
            b"=",
            b"&",
            b"%",
            b"%ff",
            b"%00",
            b"[]",
            b"[0]",
            b"[99999999]",
            b".",
            b"a.b.c",
            b"{\"",
            b"\":",
            b"--B\r\n",
            b"Content-Disposition: form-data; name=\"",
            b"\r\n\r\n",
            b"\r\n--B--\r\n",
            b"; filename=\"f\"",
            b"+",
            b"[]=",
            b"\xc3\x28",
        ],
        "schema" => &[
            b"\"name\":",
            b"\"paths\":[",
            b"\"~/(a",
            b"\"hosts\":[\"",
            b"\"tags\":[",
            b"null",
            b"\"protocols\":[\"grpc\"]",
            b"\"url\":\"http://",
            b"\"port\":",
            b"65536",
            b"-1",
            b"\"headers\":{\"x\":[\"~*",
            b"\"algorithm\":\"consistent-hashing\"",
            b"\"hash_on\":\"header\"",
            b"\"healthchecks\":{",
            b"\"snis\":[\"",
            b"\\u0000",
            b"\"regex_priority\":",
            b"1e308",
            b"\"strip_path\":true",
            b"\"methods\":[\"",
        ],
        "cluster_frame" => &[
            b"\x1f\x8b\x08\x00\x00\x00\x00\x00",
            b"{\"type\":\"",
            b"reconfigure",
            b"\"}",
            b"\x00\x00\xff\xff",
            b"\"config\":{",
        ],
        "router" => &[
            b"\n", b"|", b"/", b"~/", b"(?<n>", b")", b"*.", b".*", b"[", b"]", b"{", b"}", b"%2F",
            b"..", b"//", b"\\", b"a", b"~", b"^", b"$", b".+", b"(?i)",
        ],
        "http1_head" => &[
            b"\r\n",
            b"\n",
            b"GET ",
            b"POST ",
            b" HTTP/1.1",
            b" HTTP/1.0",
            b"Host: a\r\n",
            b"Content-Length: ",
            b"Transfer-Encoding: chunked\r\n",
            b"Transfer-Encoding: ",
            b"0\r\n\r\n",
            b"5\r\nhello\r\n",
            b"Connection: ",
            b"Upgrade: websocket\r\n",
            b"Expect: 100-continue\r\n",
            b"apikey: k3y\r\n",
            b"/private",
            b"/open",
            b"http://",
            b" ",
            b"\t",
            b":",
            b"\0",
            b"\x7f",
            b";ext=1",
            b"ffffffffffffffff",
        ],
        _ => &[],
    }
}

fn plugins() -> &'static gantry_model::plugins::Catalog {
    static CATALOG: OnceLock<gantry_model::plugins::Catalog> = OnceLock::new();
    CATALOG.get_or_init(|| gantry_proxy::plugins::Registry::default().catalog())
}

fn load(v: Value) -> Result<Config, declarative::DeclarativeError> {
    declarative::load(
        v,
        LoadOptions {
            now: NOW,
            plugins: plugins().clone(),
        },
    )
}

/// A proxy running `config` whole, as a node is given it.
fn running(config: &Config) -> Result<Arc<gantry_proxy::Proxy>, gantry_proxy::SnapshotError> {
    let digests = Digests::of(config);
    let proxy = gantry_proxy::Proxy::new();
    proxy.apply_update(&gantry_model::delta::Update {
        config,
        digests: &digests,
        version: 1,
        changes: None,
    })?;
    Ok(proxy)
}

/// A declarative file (YAML or JSON): what loads also compiles as the proxy will run it (no
/// poison pill gets past `config parse`, `db_import` or `POST /config`), and its export loads
/// again to as many entities.
pub fn declarative(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(v) = declarative::parse_text(text) else {
        return;
    };
    let Ok(config) = load(v) else {
        return;
    };
    if let Err(e) = running(&config) {
        panic!("a file that loads does not run: {e}");
    }
    let again = load(declarative::export(&config))
        .unwrap_or_else(|e| panic!("an export does not load: {:?}", e.flattened()));
    assert_eq!(
        declarative::counts(&config),
        declarative::counts(&again),
        "an export loads to other entities"
    );
}

/// An Admin API body as JSON, form or multipart (the first byte picks): decoding never panics,
/// and JSON agrees with a JSON parser.
pub fn admin_body(data: &[u8]) {
    use gantry_admin::body::decode;
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    let ctype = match kind % 4 {
        0 => "application/json",
        1 => "application/x-www-form-urlencoded",
        2 => "multipart/form-data; boundary=B",
        _ => "text/plain",
    };
    let mut headers = hyper::HeaderMap::new();
    headers.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(ctype),
    );
    let decoded = decode(&headers, body);
    if kind % 4 == 0 {
        let parsed = serde_json::from_slice::<serde_json::Map<String, Value>>(body);
        if let (Ok((m, _)), Ok(p)) = (&decoded, &parsed) {
            assert_eq!(
                m, p,
                "the Admin API reads JSON otherwise than a JSON parser"
            );
        }
    }
}

/// An entity (the first byte picks its type) as the Admin API validates it: what is accepted
/// is accepted again as stored (PUT and PATCH round trips, decK), and compiles.
pub fn schema(data: &[u8]) {
    const TYPES: &[&str] = &[
        "services",
        "routes",
        "upstreams",
        "targets",
        "consumers",
        "plugins",
        "certificates",
        "snis",
        "ca_certificates",
        "keyauth_credentials",
        "vaults",
        "keys",
    ];
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    let name = TYPES[kind as usize % TYPES.len()];
    let Some(schema) = gantry_model::entities::entity(name) else {
        panic!("no schema for {name}");
    };
    let Ok(input) = serde_json::from_slice::<Doc>(body) else {
        return;
    };
    let Ok(doc) = document::prepare(schema, input, Secrets::Clear, NOW, plugins()) else {
        return;
    };
    if let Err(e) = document::prepare(schema, doc.clone(), Secrets::MaybeHashed, NOW, plugins()) {
        panic!(
            "{name}: a stored entity does not validate again: {:?}\n{}",
            e,
            Value::Object(doc)
        );
    }
}

/// A cluster message as a data plane receives it (the first byte says whether compressed):
/// never a panic, and never more than the bound once decompressed, however the gzip stream is
/// built.
pub fn cluster_frame(data: &[u8]) {
    use std::io::Write;
    const LIMIT: usize = 4096;
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    let compressed = kind & 1 == 1;
    let _ = gantry_protocol::decode::<Value>(compressed, body, LIMIT);
    // The bytes compressed: decoded whole when within the bound, refused when past it.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let _ = gz.write_all(body);
    let packed = gz.finish().unwrap_or_default();
    match gantry_protocol::decode::<Value>(true, &packed, LIMIT) {
        Err(gantry_protocol::ProtoError::TooLarge { .. }) => {
            assert!(
                body.len() > LIMIT,
                "{} bytes refused as too large",
                body.len()
            )
        }
        Ok(_) => assert!(
            body.len() <= LIMIT,
            "{} bytes taken past the bound",
            body.len()
        ),
        Err(_) => assert!(
            serde_json::from_slice::<Value>(body).is_err() || body.len() > LIMIT,
            "valid JSON refused"
        ),
    }
}

/// Routes and a request, one per line (`paths|hosts` for a route, `host|path` last): the
/// router never panics, matches the same way twice, and a plain path only matches its prefix.
pub fn router(data: &[u8]) {
    use gantry_proxy::router::{RequestInfo, Router};
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines: Vec<&str> = text.lines().collect();
    let Some(request) = lines.pop() else {
        return;
    };
    let schema = gantry_model::entities::entity("routes").expect("the routes schema");
    let mut routes = Vec::new();
    for (i, line) in lines.iter().take(32).enumerate() {
        let (paths, hosts) = line.split_once('|').unwrap_or((line, ""));
        let list = |s: &str| -> Vec<Value> {
            s.split(',')
                .filter(|p| !p.is_empty())
                .map(|p| Value::String(p.to_string()))
                .collect()
        };
        let mut input = Doc::new();
        input.insert("name".into(), Value::String(format!("r{i}")));
        let (paths, hosts) = (list(paths), list(hosts));
        if !paths.is_empty() {
            input.insert("paths".into(), Value::Array(paths));
        }
        if !hosts.is_empty() {
            input.insert("hosts".into(), Value::Array(hosts));
        }
        if let Ok(doc) = document::prepare(schema, input, Secrets::Clear, NOW, plugins()) {
            routes.push(gantry_model::Entity::new(&doc));
        }
    }
    let router = match Router::build(routes.iter()) {
        Ok(r) => r,
        Err(e) => panic!("routes the Admin API accepts do not build: {e:?}"),
    };
    let (host, path) = request.split_once('|').unwrap_or(("a", request));
    // The proxy hands the router normalised paths, which start with a slash.
    if !path.starts_with('/') {
        return;
    }
    let headers = hyper::HeaderMap::new();
    let req = RequestInfo {
        method: "GET",
        host,
        port: 80,
        path,
        headers: &headers,
        sni: None,
        https: false,
    };
    let first = router
        .find(&req)
        .map(|m| (m.route.id.clone(), m.prefix.clone()));
    let second = router
        .find(&req)
        .map(|m| (m.route.id.clone(), m.prefix.clone()));
    assert_eq!(first, second, "the router matched one request two ways");
    if let Some((_, prefix)) = first {
        assert!(
            path.starts_with(&*prefix) || prefix.is_empty(),
            "matched prefix {prefix:?} is not the path's {path:?}"
        );
    }
}

/// What the upstream of [`http1_head`] saw.
#[derive(Default)]
struct Seen {
    /// Requests the upstream's HTTP parser refused: the proxy sent something malformed.
    malformed: Vec<String>,
    /// Requests for the key-auth route's service (paths under `/p`) without the key.
    unauthenticated: Vec<String>,
    /// Every request that reached the upstream.
    requests: u64,
}

/// How many requests reached [`http1_head`]'s upstream so far: the harness's own check.
pub fn http1_upstream_requests() -> u64 {
    harness().seen.lock().map(|s| s.requests).unwrap_or(0)
}

struct Harness {
    rt: tokio::runtime::Runtime,
    proxy: Arc<gantry_proxy::Proxy>,
    seen: Arc<Mutex<Seen>>,
    lock: Mutex<()>,
}

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime");
        let seen = Arc::new(Mutex::new(Seen::default()));
        let upstream = rt.block_on(upstream(seen.clone()));
        let file = format!(
            "_format_version: \"3.0\"\nservices:\n- name: open\n  url: http://{upstream}/o\n  routes:\n  - name: open\n    paths: [/open]\n- name: private\n  url: http://{upstream}/p\n  routes:\n  - name: private\n    paths: [/private]\n    plugins:\n    - name: key-auth\nconsumers:\n- username: alice\n  keyauth_credentials:\n  - key: k3y\n"
        );
        let config = load(declarative::parse_text(&file).expect("the harness file"))
            .expect("the harness configuration");
        let proxy = running(&config).expect("the harness configuration builds");
        Harness {
            rt,
            proxy,
            seen,
            lock: Mutex::new(()),
        }
    })
}

/// An upstream that checks every request the proxy sends it.
async fn upstream(seen: Arc<Mutex<Seen>>) -> SocketAddr {
    use hyper::service::service_fn;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let addr = l.local_addr().expect("its address");
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let seen2 = seen.clone();
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let seen = seen2.clone();
                    async move {
                        if let Ok(mut s) = seen.lock() {
                            s.requests += 1;
                        }
                        // Only the key-auth route's service has paths under /p.
                        if req.uri().path().starts_with("/p")
                            && req.headers().get("apikey").is_none_or(|k| k != "k3y")
                        {
                            if let Ok(mut s) = seen.lock() {
                                s.unauthenticated.push(format!("{req:?}"));
                            }
                        }
                        use http_body_util::BodyExt;
                        let _ = req.into_body().collect().await;
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from_static(b"ok")),
                        ))
                    }
                });
                // Room for any head the proxy forwards: what is checked is its framing.
                let r = hyper::server::conn::http1::Builder::new()
                    .max_headers(4096)
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
                if let Err(e) = r {
                    if e.is_parse() {
                        if let Ok(mut s) = seen.lock() {
                            s.malformed.push(e.to_string());
                        }
                    }
                }
            });
        }
    });
    addr
}

/// Bytes as a client sends them to the proxy, over one connection to a node with an open route
/// and a key-auth route: whatever they are, the upstream never receives a request its HTTP
/// parser refuses, and never a request for the key-auth route without the key (no smuggling),
/// and the client gets HTTP/1.1 responses or nothing.
pub fn http1_head(data: &[u8]) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = harness();
    // One input at a time. What the upstream saw is taken after each: an upstream connection
    // that ends after its client was answered is still checked, with the next input.
    let _one = h.lock.lock().unwrap_or_else(|e| e.into_inner());
    let out = h.rt.block_on(async {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let peer: SocketAddr = ([127, 0, 0, 1], 40000).into();
        let served = tokio::spawn(h.proxy.clone().serve_stream(server, peer));
        let mut out = Vec::new();
        // Pipelined requests are answered while the client's side is open: read until the
        // answers stop coming for a moment, then close it and read what is left.
        let exchange = async {
            client.write_all(data).await?;
            let mut buf = [0u8; 8192];
            loop {
                let idle = std::time::Duration::from_millis(10);
                match tokio::time::timeout(idle, client.read(&mut buf)).await {
                    Ok(Ok(0)) => return Ok(()),
                    Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
                    Ok(Err(e)) => return Err(e),
                    Err(_) => break,
                }
            }
            client.shutdown().await?;
            client.read_to_end(&mut out).await.map(drop)
        };
        let _: Result<_, _> =
            tokio::time::timeout(std::time::Duration::from_secs(2), exchange).await;
        served.abort();
        // Let the upstream finish with what reached it.
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        out
    });
    if std::env::var_os("GANTRY_FUZZ_SHOW").is_some() {
        eprintln!("{}", String::from_utf8_lossy(&out));
    }
    let seen = {
        let mut all = h.seen.lock().unwrap_or_else(|e| e.into_inner());
        let requests = all.requests;
        let taken = std::mem::take(&mut *all);
        all.requests = requests;
        taken
    };
    assert!(
        seen.malformed.is_empty(),
        "the upstream got a malformed request: {:?}",
        seen.malformed
    );
    assert!(
        seen.unauthenticated.is_empty(),
        "a request reached the key-auth route without its key: {:?}",
        seen.unauthenticated
    );
    assert!(
        out.is_empty() || out.starts_with(b"HTTP/1.1 ") || out.starts_with(b"HTTP/1.0 "),
        "not an HTTP response: {:?}",
        String::from_utf8_lossy(&out[..out.len().min(200)])
    );
}
