//! Router build and match times with 10,000 routes (`cargo bench -p gantry-proxy --bench router`).

use criterion::{criterion_group, criterion_main, Criterion};
use gantry_proxy::router::{RequestInfo, Router};
use serde_json::json;

fn routes(n: usize) -> Vec<gantry_model::Entity> {
    (0..n)
        .map(|i| {
            let mut d = json!({
                "id": format!("00000000-0000-4000-8000-{i:012}"),
                "protocols": ["http", "https"],
                "paths": [format!("/svc/{i}")],
                "methods": ["GET", "POST"],
            });
            // A tenth of the routes also match on a host, a hundredth on a regex path.
            if i % 10 == 0 {
                d["hosts"] = json!([format!("tenant{i}.example.com")]);
            }
            if i % 100 == 0 {
                d["paths"] = json!([format!("~/api/{i}/items/(?<item>\\d+)$")]);
            }
            gantry_model::Entity::new(d.as_object().unwrap_or(&Default::default()))
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let docs = routes(10_000);
    c.bench_function("build 10,000 routes", |b| {
        b.iter(|| Router::build(&docs).map(|r| r.len()))
    });
    let router = Router::build(&docs).expect("routes build");
    let headers = hyper::HeaderMap::new();
    let req = |host: &'static str, path: &'static str| RequestInfo {
        method: "GET",
        host,
        port: 8000,
        path,
        headers: &headers,
        sni: None,
        https: false,
    };
    let (prefix, hosted, regex, miss) = (
        req("api.example.com", "/svc/7777/orders"),
        req("tenant5550.example.com", "/svc/5550"),
        req("api.example.com", "/api/4200/items/17"),
        req("api.example.com", "/nowhere"),
    );
    c.bench_function("match a prefix route among 10,000", |b| {
        b.iter(|| router.find(&prefix).is_some())
    });
    c.bench_function("match a host + prefix route among 10,000", |b| {
        b.iter(|| router.find(&hosted).is_some())
    });
    c.bench_function("match a regex route among 10,000", |b| {
        b.iter(|| router.find(&regex).is_some())
    });
    c.bench_function("miss among 10,000", |b| {
        b.iter(|| router.find(&miss).is_none())
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
