//! An Admin API on a real socket (127.0.0.1:0) over a test store, a small client, and the
//! certificates tests store through it.

use std::sync::Arc;

use crate::TestStore;
use gantry_admin::AdminState;
use gantry_conf::{Settings, Sources};
use serde_json::Value;
use tokio::sync::watch;

pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
    pub t: TestStore,
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Api {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

pub async fn start(t: TestStore, overrides: &[(&str, &str)]) -> Api {
    let mut o: Vec<(String, String)> = overrides
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    o.push(("admin_listen".into(), "127.0.0.1:0".into()));
    let settings = Settings::load(&Sources {
        file: None,
        env: vec![],
        overrides: o,
    })
    .expect("settings")
    .settings;
    // The store of `t` is shared by reopening nothing: wrap the same pool.
    let store = Arc::new(gantry_store::Store::open(&t.backend).await.expect("store"));
    let plugins =
        gantry_proxy::plugins::Registry::from_setting(settings.get("plugins").unwrap_or_default())
            .expect("plugins")
            .catalog();
    let state = Arc::new(AdminState::new(
        store,
        Arc::new(settings),
        "node".into(),
        "host".into(),
        plugins,
    ));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    let (stop, rx) = watch::channel(false);
    let task = tokio::spawn(async move {
        let _ = gantry_admin::serve(state, vec![l], rx).await;
    });
    Api {
        base,
        http: reqwest::Client::new(),
        t,
        stop,
        task: Some(task),
    }
}

impl Api {
    pub async fn req(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut r = self.http.request(m, format!("{}{}", self.base, path));
        if let Some(b) = body {
            r = r.json(&b);
        }
        let res = r.send().await.expect("request");
        let status = res.status().as_u16();
        let text = res.text().await.unwrap();
        let v = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, v)
    }
    pub async fn raw(&self, method: &str, path: &str, ctype: &str, body: Vec<u8>) -> (u16, Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let res = self
            .http
            .request(m, format!("{}{}", self.base, path))
            .header("content-type", ctype)
            .body(body)
            .send()
            .await
            .expect("request");
        let status = res.status().as_u16();
        let text = res.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }
    pub async fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (s, v) = self.req(method, path, body).await;
        assert!((200..300).contains(&s), "{method} {path} -> {s} {v}");
        v
    }
    pub async fn version(&self) -> i64 {
        self.t.store.version().await.unwrap()
    }
}

/// A self-signed certificate and key, and a CA certificate.
pub fn certs() -> (String, String, String) {
    let ck = rcgen::generate_simple_self_signed(vec!["example.com".to_string()]).unwrap();
    let mut params = rcgen::CertificateParams::new(vec![]).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let key = rcgen::KeyPair::generate().unwrap();
    let ca = params.self_signed(&key).unwrap();
    (ck.cert.pem(), ck.signing_key.serialize_pem(), ca.pem())
}
