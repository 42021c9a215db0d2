//! Kong's log plugins through real `gantry` processes: http-log to a local sink (single
//! entries and batches, retries, a sink that hangs or is gone, drops counted).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use gantry_testkit::http::eventually;
use gantry_testkit::process::{admin, proxy_until, refused, route_with, Node};
use gantry_testkit::upstream::echo;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::trace::v1::{span, Span};
use prost::Message;
use serde_json::{json, Value};

/// One request the sink received.
#[derive(Debug, Clone)]
struct Got {
    method: String,
    target: String,
    headers: HashMap<String, String>,
    body: Value,
    raw: Bytes,
}

/// A log sink: records what it gets and answers `status` (0: never answers). Dropped, it
/// closes its listener and every connection.
struct Sink {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<Got>>>,
    status: Arc<AtomicU16>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Sink {
    async fn start() -> Sink {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let got: Arc<Mutex<Vec<Got>>> = Arc::default();
        let status = Arc::new(AtomicU16::new(200));
        let (g, s) = (got.clone(), status.clone());
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = l.accept().await else {
                    continue;
                };
                let (g, s) = (g.clone(), s.clone());
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let (g, s) = (g.clone(), s.clone());
                            async move {
                                let (parts, body) = req.into_parts();
                                let body = body
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                let headers = parts
                                    .headers
                                    .iter()
                                    .map(|(k, v)| {
                                        (k.to_string(), v.to_str().unwrap_or("").to_string())
                                    })
                                    .collect();
                                g.lock().unwrap().push(Got {
                                    method: parts.method.to_string(),
                                    target: parts.uri.to_string(),
                                    headers,
                                    body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                                    raw: body,
                                });
                                let code = s.load(Ordering::SeqCst);
                                if code == 0 {
                                    std::future::pending::<()>().await;
                                }
                                let mut r =
                                    hyper::Response::new(Full::new(Bytes::from("sink says no")));
                                *r.status_mut() = hyper::StatusCode::from_u16(code).unwrap();
                                Ok::<_, std::convert::Infallible>(r)
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Sink {
            addr,
            got,
            status,
            task,
        }
    }

    fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }
}

/// A node (with `env`) with the service `s` on an echo upstream, a client, and a sink.
async fn logging_node(
    env: &[(String, String)],
) -> (tempfile::TempDir, Node, reqwest::Client, String, Sink) {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), env);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let up = echo().await;
    gantry_testkit::process::service(&http, &node, &up).await;
    let sink = Sink::start().await;
    (dir, node, http, up, sink)
}

/// A metric's value in a Prometheus text exposition.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// http-log, as Kong 3.9's: one entry per POST with the endpoint's user info as basic
/// authentication and the configured headers; batches as JSON arrays; failed sends retried;
/// a sink that hangs or is gone never holds a request; a full queue drops its oldest entries,
/// counted in `/metrics`; bad configurations refused naming the field.
#[tokio::test]
async fn http_log_as_kong() {
    let (_dir, node, http, _up, sink) = logging_node(&[]).await;
    let one = json!({"name": "http-log", "config": {
        "http_endpoint": format!("http://logger:s3cret@{}/in?src=gantry", sink.addr),
        "headers": {"X-Token": "t0k"},
    }});
    let created = route_with(&http, &node, "one", &[one]).await;
    let c = &created[0]["config"];
    assert_eq!(c["method"], "POST");
    assert_eq!(c["content_type"], "application/json");
    assert_eq!(c["timeout"], 10000);
    assert_eq!(c["keepalive"], 60000);
    assert_eq!(c["retry_count"], Value::Null);
    assert_eq!(
        c["queue"],
        json!({"max_batch_size": 1, "max_coalescing_delay": 1, "max_entries": 10000,
               "max_bytes": null, "max_retry_time": 60, "initial_retry_delay": 0.01,
               "max_retry_delay": 60, "concurrency_limit": 1})
    );
    let batched = json!({"name": "http-log", "config": {
        "http_endpoint": format!("http://{}/batch", sink.addr),
        "method": "PUT",
        "queue": {"max_batch_size": 5, "max_coalescing_delay": 2},
    }});
    route_with(&http, &node, "batched", &[batched]).await;
    proxy_until(&http, &node, "/one", 200).await;
    let proxy = node.proxy.clone().unwrap();

    // One entry per request, as Kong's serializer writes it.
    for i in 0..3 {
        let r = http
            .get(format!("{proxy}/one?n={i}"))
            .header("authorization", "Bearer hidden")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    // Entries of these requests (proxy_until's are logged too).
    let numbered = || -> Vec<Got> {
        sink.got()
            .into_iter()
            .filter(|g| !g.body["request"]["querystring"]["n"].is_null())
            .collect()
    };
    eventually(Duration::from_secs(10), "three entries", || async {
        numbered().len() >= 3
    })
    .await;
    let got = numbered();
    let g = &got[0];
    assert_eq!(
        (g.method.as_str(), g.target.as_str()),
        ("POST", "/in?src=gantry")
    );
    // base64("logger:s3cret")
    assert_eq!(g.headers["authorization"], "Basic bG9nZ2VyOnMzY3JldA==");
    assert_eq!(g.headers["x-token"], "t0k");
    assert_eq!(g.headers["content-type"], "application/json");
    assert_eq!(g.headers["host"], sink.addr.to_string());
    let e = &g.body;
    assert!(e.is_object(), "{e}");
    assert_eq!(e["request"]["method"], "GET");
    assert_eq!(e["request"]["headers"]["authorization"], "REDACTED", "{e}");
    assert_eq!(e["response"]["status"], 200);
    assert_eq!(e["source"], "upstream");
    let route = admin(&http, &node, "GET", "/routes/one", json!({})).await;
    assert_eq!(e["route"]["id"], route["id"]);
    let ns: Vec<Value> = got
        .iter()
        .map(|g| g.body["request"]["querystring"]["n"].clone())
        .collect();
    assert_eq!(ns, vec![json!("0"), json!("1"), json!("2")]);

    // Batches: five requests in one PUT of a JSON array.
    for _ in 0..5 {
        let r = http.get(format!("{proxy}/batched")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    eventually(Duration::from_secs(10), "a batch of five", || async {
        sink.got().iter().any(|g| g.target == "/batch")
    })
    .await;
    let batches: Vec<Got> = sink
        .got()
        .into_iter()
        .filter(|g| g.target == "/batch")
        .collect();
    assert_eq!(batches.len(), 1, "{batches:?}");
    assert_eq!(batches[0].method, "PUT");
    assert_eq!(batches[0].body.as_array().map(Vec::len), Some(5));

    // A sink that fails: the entry is sent again until it takes it.
    sink.status.store(500, Ordering::SeqCst);
    let before = sink.got().len();
    http.get(format!("{proxy}/one?n=retried"))
        .send()
        .await
        .unwrap();
    eventually(Duration::from_secs(10), "two refused tries", || async {
        sink.got().len() >= before + 2
    })
    .await;
    sink.status.store(200, Ordering::SeqCst);
    eventually(Duration::from_secs(10), "the entry taken", || async {
        let got = sink.got();
        let tries = got[before..]
            .iter()
            .filter(|g| g.body["request"]["querystring"]["n"] == "retried")
            .count();
        tries >= 3 && sink.got().len() == got.len()
    })
    .await;

    // A sink that hangs, then one that is gone: requests do not wait for it.
    let stuck = Sink::start().await;
    stuck.status.store(0, Ordering::SeqCst);
    let hang = json!({"name": "http-log", "config": {
        "http_endpoint": format!("http://{}/", stuck.addr),
        "timeout": 60000,
        "queue": {"max_entries": 2},
    }});
    route_with(&http, &node, "stuck", &[hang]).await;
    proxy_until(&http, &node, "/stuck", 200).await;
    let started = std::time::Instant::now();
    for _ in 0..20 {
        let r = http.get(format!("{proxy}/stuck")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    // 20 requests while the sink holds its first batch for a minute: none waited for it.
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(stuck);
    for _ in 0..5 {
        let r = http.get(format!("{proxy}/stuck")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let status = node.status.clone().unwrap();
    let metrics = gantry_testkit::http::get_text(&http, &format!("{status}/metrics")).await;
    let full = metric(
        &metrics,
        "gantry_plugin_queue_dropped_total{plugin=\"http-log\",reason=\"full\"}",
    );
    // At most two wait and one is being sent; the rest of the 21 or more were dropped.
    assert!(full >= 18.0, "{metrics}");

    // Refused when written, naming the field.
    for (config, field) in [
        (
            json!({"http_endpoint": "http://h/", "headers": {"Host": "x"}}),
            json!({"headers": "cannot contain 'Host' header"}),
        ),
        (
            json!({"http_endpoint": "http://h/", "method": "GET"}),
            json!({"method": "expected one of: POST, PUT, PATCH"}),
        ),
        (
            json!({"http_endpoint": "ftp://h/"}),
            json!({"http_endpoint": "invalid url 'ftp://h/': scheme must be http or https"}),
        ),
        (
            json!({"http_endpoint": "http://h/", "queue": {"max_batch_size": 0}}),
            json!({"queue": {"max_batch_size": "value should be between 1 and 1000000"}}),
        ),
        (
            json!({"http_endpoint": "http://u:p@h/", "headers": {"authorization": "x"}}),
            json!("specifying both an 'Authorization' header and user info in 'http_endpoint' is not allowed"),
        ),
    ] {
        let p = json!({"name": "http-log", "config": config});
        let b = refused(&http, &node, "/plugins", &p).await;
        assert_eq!(b["fields"]["config"], field, "{config}: {b}");
    }
}

/// A metric sample: its name, labels and value.
type Sample = (String, HashMap<String, String>, f64);

/// The samples of a Prometheus text exposition, as the reference parser (Python's
/// `prometheus_client`) reads them: (name, labels, value). None (the test skips) where the
/// parser is absent outside CI.
fn parse_exposition(text: &str) -> Option<Vec<Sample>> {
    const SCRIPT: &str = "import json,sys\nfrom prometheus_client.parser import text_string_to_metric_families as f\nprint(json.dumps([[s.name, s.labels, s.value] for m in f(sys.stdin.read()) for s in m.samples]))";
    let has = std::process::Command::new("python3")
        .args(["-c", "import prometheus_client"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has {
        assert!(
            !gantry_testkit::ci(),
            "prometheus_client is required in CI (.ci/run installs it)"
        );
        eprintln!(
            "skipped: python3 with prometheus_client not found (pip install prometheus_client)"
        );
        return None;
    }
    let out = gantry_testkit::process::feed(
        std::process::Command::new("python3").args(["-c", SCRIPT]),
        text,
    );
    assert!(
        out.status.success(),
        "the parser refused the exposition: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(serde_json::from_slice(&out.stdout).unwrap())
}

/// The value of the sample `name` whose labels include `labels`.
fn sample(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.2)
}

/// prometheus, as Kong 3.9's: Kong's metric names and labels on the status listener's
/// `/metrics`, read by the reference parser; only requests the plugin applies to counted; the
/// consumer's username with `per_consumer`; `source` kong for a plugin's answer; the
/// per-request series gone once no instance is configured, the node's still there.
#[tokio::test]
async fn prometheus_as_kong() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let http = reqwest::Client::new();
    let up = echo().await;
    gantry_testkit::process::service(&http, &node, &up).await;
    let prom = json!({"name": "prometheus", "config": {
        "per_consumer": true, "status_code_metrics": true, "latency_metrics": true,
        "bandwidth_metrics": true, "upstream_health_metrics": true,
    }});
    let created = route_with(
        &http,
        &node,
        "counted",
        &[prom, json!({"name": "key-auth"})],
    )
    .await;
    assert_eq!(
        created[0]["config"],
        json!({"per_consumer": true, "status_code_metrics": true, "ai_metrics": false,
               "latency_metrics": true, "bandwidth_metrics": true, "upstream_health_metrics": true})
    );
    route_with(&http, &node, "quiet", &[]).await;
    admin(
        &http,
        &node,
        "POST",
        "/consumers",
        json!({"username": "alice"}),
    )
    .await;
    admin(
        &http,
        &node,
        "POST",
        "/consumers/alice/key-auth",
        json!({"key": "alice-key"}),
    )
    .await;
    proxy_until(&http, &node, "/quiet", 200).await;
    let proxy = node.proxy.clone().unwrap();
    eventually(Duration::from_secs(10), "alice's key works", || async {
        http.get(format!("{proxy}/counted"))
            .header("apikey", "alice-key")
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    let r = http
        .get(format!("{proxy}/counted"))
        .header("apikey", "alice-key")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http.get(format!("{proxy}/counted")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    for _ in 0..3 {
        http.get(format!("{proxy}/quiet")).send().await.unwrap();
    }
    let status = node.status.clone().unwrap();
    let scrape =
        || async { gantry_testkit::http::get_text(&http, &format!("{status}/metrics")).await };
    let text = scrape().await;
    let Some(samples) = parse_exposition(&text) else {
        return;
    };
    let route = [
        ("service", "s"),
        ("route", "counted"),
        ("workspace", "default"),
    ];
    let with = |extra: &[(&'static str, &'static str)]| -> Vec<(&'static str, &'static str)> {
        route.iter().chain(extra).copied().collect()
    };
    // prometheus_client names counter samples with `_total`.
    let ok = sample(
        &samples,
        "kong_http_requests_total",
        &with(&[
            ("code", "200"),
            ("source", "service"),
            ("consumer", "alice"),
        ]),
    );
    assert_eq!(ok, Some(2.0), "{text}");
    let denied = sample(
        &samples,
        "kong_http_requests_total",
        &with(&[("code", "401"), ("source", "kong"), ("consumer", "")]),
    );
    assert_eq!(denied, Some(1.0), "{text}");
    assert!(
        !samples
            .iter()
            .any(|(_, l, _)| l.get("route").is_some_and(|r| r == "quiet")),
        "{text}"
    );
    assert_eq!(
        sample(&samples, "kong_request_latency_ms_count", &route),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(&samples, "kong_kong_latency_ms_count", &route),
        Some(3.0)
    );
    // The 401 never reached the upstream.
    assert_eq!(
        sample(&samples, "kong_upstream_latency_ms_count", &route),
        Some(2.0)
    );
    assert_eq!(
        sample(
            &samples,
            "kong_request_latency_ms_bucket",
            &with(&[("le", "+Inf")])
        ),
        Some(3.0)
    );
    for dir in ["ingress", "egress"] {
        let b = sample(
            &samples,
            "kong_bandwidth_bytes_total",
            &with(&[("direction", dir), ("consumer", "alice")]),
        );
        assert!(b.is_some_and(|b| b > 100.0), "{dir}: {text}");
    }
    let node_id = std::fs::read_to_string(dir.path().join("node_id")).unwrap();
    assert_eq!(
        sample(
            &samples,
            "kong_node_info",
            &[("node_id", node_id.trim()), ("version", "3.9.0")]
        ),
        Some(1.0),
        "{text}"
    );
    assert!(sample(&samples, "gantry_http_requests_total", &[("class", "2xx")]).is_some());
    // The connection states Kong's dashboards read, and the datastore this node uses.
    let conns = |state: &str| {
        sample(
            &samples,
            "kong_nginx_connections_total",
            &[
                ("node_id", node_id.trim()),
                ("subsystem", "http"),
                ("state", state),
            ],
        )
        .unwrap_or_else(|| panic!("no {state} connections: {text}"))
    };
    assert!(conns("accepted") >= 1.0 && conns("accepted") == conns("handled"));
    assert!(conns("total") >= 3.0, "{text}");
    assert!(
        conns("active") >= conns("reading") + conns("writing"),
        "{text}"
    );
    assert_eq!(
        conns("active"),
        conns("reading") + conns("writing") + conns("waiting")
    );
    assert_eq!(
        sample(&samples, "kong_datastore_reachable", &[]),
        Some(1.0),
        "{text}"
    );

    // No instance left: the node's metrics stay, the per-request ones go.
    let pid = created[0]["id"].as_str().unwrap();
    let r = http
        .delete(format!("{}/plugins/{pid}", node.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    eventually(Duration::from_secs(10), "the series gone", || async {
        !scrape().await.contains("kong_http_requests_total")
    })
    .await;
    let samples = parse_exposition(&scrape().await).unwrap();
    assert!(sample(&samples, "kong_node_info", &[("version", "3.9.0")]).is_some());

    // Kong's AI metrics need AI plugins, which Gantry does not run: refused, naming the field.
    let ai = json!({"name": "prometheus", "config": {"ai_metrics": true}});
    let b = refused(&http, &node, "/plugins", &ai).await;
    assert!(b["fields"]["config"]["ai_metrics"].is_string(), "{b}");
}

/// Every span the sink received, decoded from OTLP protobuf, with the resource attributes and
/// scope name of its batch.
fn spans(sink: &Sink) -> Vec<(Span, HashMap<String, String>, String)> {
    let mut out = Vec::new();
    for g in sink.got().into_iter().filter(|g| g.target == "/v1/traces") {
        let req = ExportTraceServiceRequest::decode(g.raw.as_ref()).expect("OTLP protobuf");
        for rs in req.resource_spans {
            let resource: HashMap<String, String> = rs
                .resource
                .map(|r| r.attributes)
                .unwrap_or_default()
                .into_iter()
                .filter_map(|kv| match kv.value?.value? {
                    any_value::Value::StringValue(s) => Some((kv.key, s)),
                    _ => None,
                })
                .collect();
            for ss in rs.scope_spans {
                let scope = ss.scope.map(|s| s.name).unwrap_or_default();
                for span in ss.spans {
                    out.push((span, resource.clone(), scope.clone()));
                }
            }
        }
    }
    out
}

fn attr(span: &Span, key: &str) -> Option<any_value::Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.clone()?.value)
}

fn text(span: &Span, key: &str) -> String {
    match attr(span, key) {
        Some(any_value::Value::StringValue(s)) => s,
        other => panic!("{key}: {other:?} in {span:?}"),
    }
}

/// opentelemetry, as Kong 3.9's: W3C and b3 context extracted and injected (the upstream is
/// told its balancer span), the trace id in a response header, a parent's "not sampled"
/// obeyed, and the spans of a sampled request (`kong`, `kong.router`, the plugins' phases,
/// `kong.balancer`) sent as OTLP protobuf with Kong's names, kinds and attributes, under the
/// configured resource; the deprecated `endpoint` accepted, `logs_endpoint` refused.
#[tokio::test]
async fn opentelemetry_as_kong() {
    let env = [(
        "KONG_TRACING_INSTRUMENTATIONS".to_string(),
        "all".to_string(),
    )];
    let (_dir, node, http, up, sink) = logging_node(&env).await;
    let otel = json!({"name": "opentelemetry", "config": {
        "traces_endpoint": format!("http://{}/v1/traces", sink.addr),
        "headers": {"X-Key": "k"},
        "resource_attributes": {"service.name": "edge"},
        "http_response_header_for_traceid": "x-trace-id",
        "sampling_rate": 1,
        "queue": {"max_batch_size": 50, "max_coalescing_delay": 0.1},
    }});
    let log = json!({"name": "http-log", "config": {"http_endpoint": format!("http://{}/log", sink.addr)}});
    let created = route_with(&http, &node, "otel", &[otel, log]).await;
    let c = &created[0]["config"];
    assert_eq!(
        (
            c["connect_timeout"].clone(),
            c["send_timeout"].clone(),
            c["read_timeout"].clone()
        ),
        (json!(1000), json!(5000), json!(5000))
    );
    assert_eq!(c["header_type"], "preserve");
    assert_eq!(
        c["propagation"],
        json!({"extract": null, "clear": null, "inject": null, "default_format": "w3c"})
    );
    assert_eq!(c["logs_endpoint"], Value::Null);
    assert_eq!(c["batch_span_count"], Value::Null);
    assert!(c.get("endpoint").is_none(), "{c}");
    // The deprecated `endpoint` stands for traces_endpoint and is not returned.
    let old = json!({"name": "opentelemetry", "config": {"endpoint": format!("http://{}/old", sink.addr)}});
    let made = route_with(&http, &node, "old", &[old]).await;
    assert_eq!(
        made[0]["config"]["traces_endpoint"],
        format!("http://{}/old", sink.addr)
    );
    assert_eq!(
        made[0]["config"]["queue"]["max_batch_size"], 200,
        "{}",
        made[0]
    );
    assert!(made[0]["config"].get("endpoint").is_none());
    let b3 = json!({"name": "opentelemetry", "config": {
        "traces_endpoint": format!("http://{}/v1/traces", sink.addr),
        "sampling_rate": 1,
        "propagation": {"extract": ["b3"], "inject": ["datadog", "w3c"], "clear": ["x-b3-traceid"], "default_format": "w3c"},
    }});
    route_with(&http, &node, "b3", &[b3]).await;
    // Refused, naming what is wrong.
    let e = refused(&http, &node, "/plugins", &json!({"name": "opentelemetry", "config": {"logs_endpoint": "http://127.0.0.1:1/logs", "traces_endpoint": "http://127.0.0.1:1/t"}})).await;
    assert!(e["fields"]["config"]["logs_endpoint"].is_string(), "{e}");
    let e = refused(
        &http,
        &node,
        "/plugins",
        &json!({"name": "opentelemetry", "config": {}}),
    )
    .await;
    assert_eq!(
        e["fields"]["config"]["@entity"],
        json!([
            "at least one of these fields must be non-empty: 'traces_endpoint', 'logs_endpoint'"
        ]),
        "{e}"
    );
    let e = refused(&http, &node, "/plugins", &json!({"name": "opentelemetry", "config": {"traces_endpoint": "http://127.0.0.1:1/t", "sampling_rate": 2}})).await;
    assert!(e["fields"]["config"]["sampling_rate"].is_string(), "{e}");
    proxy_until(&http, &node, "/b3", 200).await;
    let proxy = node.proxy.clone().unwrap();

    // W3C in, W3C out: the same trace, the balancer span as the upstream's parent.
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let parent = "b7ad6b7169203331";
    let r = http
        .get(format!("{proxy}/otel?x=1"))
        .header("traceparent", format!("00-{trace}-{parent}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-trace-id"], trace);
    let request_id = r.headers()["x-kong-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let echoed: Value = r.json().await.unwrap();
    let out = echoed["headers"]["traceparent"]
        .as_str()
        .unwrap()
        .to_string();
    let parts: Vec<&str> = out.split('-').collect();
    assert_eq!((parts[0], parts[1], parts[3]), ("00", trace, "01"), "{out}");
    assert_ne!(parts[2], parent);
    let upstream_parent = parts[2].to_string();

    // A parent that did not sample: not sampled here either, and nothing is sent.
    let unsampled = "1bf7651916cd43dd8448eb211c80319d";
    let r = http
        .get(format!("{proxy}/otel"))
        .header("traceparent", format!("00-{unsampled}-{parent}-00"))
        .send()
        .await
        .unwrap();
    let echoed: Value = r.json().await.unwrap();
    assert!(
        echoed["headers"]["traceparent"]
            .as_str()
            .unwrap()
            .ends_with("-00"),
        "{echoed}"
    );

    // b3 in (64-bit trace id): datadog and W3C out, the b3 trace id header cleared.
    let r = http
        .get(format!("{proxy}/b3"))
        .header("x-b3-traceid", "a3ce929d0e0e4736")
        .header("x-b3-spanid", "00f067aa0ba902b7")
        .header("x-b3-sampled", "1")
        .send()
        .await
        .unwrap();
    let echoed: Value = r.json().await.unwrap();
    let h = &echoed["headers"];
    assert!(h["x-b3-traceid"].is_null(), "{h}");
    assert_eq!(
        h["x-datadog-trace-id"],
        0xa3ce929d0e0e4736u64.to_string(),
        "{h}"
    );
    assert_eq!(h["x-datadog-sampling-priority"], "1");
    assert!(
        h["traceparent"]
            .as_str()
            .unwrap()
            .starts_with("00-0000000000000000a3ce929d0e0e4736-"),
        "{h}"
    );

    // The spans of the sampled request, decoded from OTLP protobuf.
    let of_trace = |t: &str| -> Vec<(Span, HashMap<String, String>, String)> {
        spans(&sink)
            .into_iter()
            .filter(|(s, _, _)| hex(&s.trace_id) == t)
            .collect()
    };
    eventually(Duration::from_secs(10), "the request's spans", || async {
        of_trace(trace)
            .iter()
            .any(|(s, _, _)| s.name == "kong.balancer")
            && !of_trace("0000000000000000a3ce929d0e0e4736").is_empty()
    })
    .await;
    let got = of_trace(trace);
    let g = sink
        .got()
        .into_iter()
        .find(|g| g.target == "/v1/traces")
        .unwrap();
    assert_eq!(g.method, "POST");
    assert_eq!(g.headers["content-type"], "application/x-protobuf");
    assert_eq!(g.headers["x-key"], "k");
    let names: Vec<&str> = got.iter().map(|(s, _, _)| s.name.as_str()).collect();
    for n in [
        "kong",
        "kong.router",
        "kong.access.plugin.opentelemetry",
        "kong.header_filter.plugin.opentelemetry",
        "kong.balancer",
    ] {
        assert!(names.contains(&n), "{n} in {names:?}");
    }
    let (root, resource, scope) = got.iter().find(|(s, _, _)| s.name == "kong").unwrap();
    assert_eq!(resource["service.name"], "edge");
    assert_eq!(resource["service.version"], "3.9.0");
    assert!(!resource["service.instance.id"].is_empty());
    assert_eq!(scope, "kong-internal");
    assert_eq!(hex(&root.parent_span_id), parent);
    assert_eq!(root.kind, span::SpanKind::Server as i32);
    assert_eq!(text(root, "http.method"), "GET");
    // nginx's $host: the Host header's host, without its port.
    assert_eq!(text(root, "http.url"), "http://127.0.0.1/otel?x=1");
    assert_eq!(text(root, "http.host"), "127.0.0.1");
    assert_eq!(text(root, "http.flavor"), "1.1");
    assert_eq!(text(root, "http.route"), "/otel");
    assert_eq!(text(root, "kong.request.id"), request_id);
    assert_eq!(text(root, "net.peer.ip"), "127.0.0.1");
    assert_eq!(
        attr(root, "http.status_code"),
        Some(any_value::Value::IntValue(200))
    );
    let balancer = &got
        .iter()
        .find(|(s, _, _)| s.name == "kong.balancer")
        .unwrap()
        .0;
    assert_eq!(hex(&balancer.span_id), upstream_parent);
    assert_eq!(balancer.parent_span_id, root.span_id);
    assert_eq!(balancer.kind, span::SpanKind::Client as i32);
    assert_eq!(
        attr(balancer, "try_count"),
        Some(any_value::Value::DoubleValue(1.0))
    );
    assert_eq!(text(balancer, "net.peer.ip"), "127.0.0.1");
    let port: u16 = up.rsplit(':').next().unwrap().parse().unwrap();
    assert_eq!(
        attr(balancer, "net.peer.port"),
        Some(any_value::Value::DoubleValue(port as f64))
    );
    for (s, _, _) in &got {
        assert!(s.start_time_unix_nano <= s.end_time_unix_nano, "{s:?}");
        assert!(s.start_time_unix_nano >= root.start_time_unix_nano, "{s:?}");
        assert!(s.end_time_unix_nano <= root.end_time_unix_nano, "{s:?}");
        if s.name != "kong" {
            assert_eq!(s.parent_span_id, root.span_id, "{}", s.name);
        }
    }
    assert!(
        of_trace(unsampled).is_empty(),
        "a parent's 'not sampled' is obeyed"
    );
    // Log entries carry the trace id as it went upstream (Kong's `trace_id`).
    let entry = sink
        .got()
        .into_iter()
        .find(|g| g.target == "/log" && g.body["request"]["querystring"]["x"] == "1")
        .expect("the request's log entry");
    assert_eq!(
        entry.body["trace_id"],
        json!({"w3c": trace}),
        "{}",
        entry.body
    );
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
