//! Konnect in a box: many control planes in one Gantry, reached through Konnect's v2 API
//! (`/v2/control-planes`, and each control plane's Kong Admin API under
//! `/v2/control-planes/{id}/core-entities`), with access tokens on every endpoint.
//!
//! The default control plane is the one Kong's Admin API at `/` configures; it is also
//! `/v2/control-planes/{its id}`. Every other control plane has an Admin API of its own, the
//! same code over the store's handle on it ([`gantry_store::Store::scoped`]).

pub mod api;
pub mod dp;
pub mod error;
pub mod groups;
pub mod tokens;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use gantry_admin::AdminState;
use gantry_conf::Settings;
use gantry_model::plugins::Catalog;
use gantry_store::{ControlPlaneRow, Store, DEFAULT_CP};
use tokio::sync::broadcast;

pub use error::KonnectError;
pub use tokens::{Principal, Role, Verifier};

/// One control plane's Admin API.
#[derive(Clone)]
pub struct Plane {
    pub state: Arc<AdminState>,
    router: Router,
}

/// A change to the set of control planes, for the cluster layer.
#[derive(Debug, Clone, PartialEq)]
pub enum PlaneEvent {
    Created(i64),
    Deleted(i64),
    /// Its pinned data plane certificates changed: data planes connected with one no longer
    /// pinned must go.
    CertsChanged(i64),
    /// A group's members changed.
    MembersChanged(i64),
}

/// The control planes of this Gantry and what reaches them.
pub struct Konnect {
    store: Store,
    settings: Arc<Settings>,
    node_id: String,
    hostname: String,
    plugins: Catalog,
    /// The default control plane's Admin API: Kong's at `/`.
    default: Plane,
    planes: Mutex<HashMap<i64, Plane>>,
    pub verifier: Verifier,
    events: broadcast::Sender<PlaneEvent>,
    /// A control plane group's status, from the cluster service that computes it.
    pub group_status: std::sync::OnceLock<GroupStatusFn>,
    /// The default control plane's id, read once: it never changes.
    default_id: tokio::sync::OnceCell<String>,
    /// The addresses the cluster and telemetry listeners got (ports the kernel may have
    /// chosen), once they listen.
    listeners: std::sync::OnceLock<(std::net::SocketAddr, std::net::SocketAddr)>,
}

/// A group's status: `(state, conflicts as Konnect's GroupConflict objects, updated_at)`.
pub type GroupStatusFn =
    Arc<dyn Fn(i64) -> Option<(String, Vec<serde_json::Value>, i64)> + Send + Sync>;

impl Konnect {
    /// `default` is the Admin API state of the default control plane (Kong's at `/`).
    pub fn new(default: Arc<AdminState>) -> Arc<Konnect> {
        let store = default.store.scoped(DEFAULT_CP);
        Arc::new(Konnect {
            settings: default.settings.clone(),
            node_id: default.node_id.clone(),
            hostname: default.hostname.clone(),
            plugins: default.plugins.clone(),
            default: Plane {
                router: gantry_admin::router(default.clone()),
                state: default,
            },
            store,
            planes: Mutex::new(HashMap::new()),
            verifier: Verifier::new(),
            events: broadcast::channel(64).0,
            group_status: std::sync::OnceLock::new(),
            default_id: tokio::sync::OnceCell::new(),
            listeners: std::sync::OnceLock::new(),
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Control planes created or deleted through this process.
    pub fn subscribe(&self) -> broadcast::Receiver<PlaneEvent> {
        self.events.subscribe()
    }

    pub(crate) fn announce(&self, e: PlaneEvent) {
        if let PlaneEvent::Deleted(key) = &e {
            self.forget(*key);
        }
        let _ = self.events.send(e);
    }

    /// Drop the Admin API of a control plane deleted (here or through another process).
    pub fn forget(&self, key: i64) {
        if let Ok(mut p) = self.planes.lock() {
            p.remove(&key);
        }
    }

    /// The Admin API of the control plane with key `key`.
    pub fn plane(&self, key: i64) -> Plane {
        if key == DEFAULT_CP {
            return self.default.clone();
        }
        let Ok(mut planes) = self.planes.lock() else {
            return self.new_plane(key);
        };
        planes
            .entry(key)
            .or_insert_with(|| self.new_plane(key))
            .clone()
    }

    fn new_plane(&self, key: i64) -> Plane {
        let state = Arc::new(AdminState::new(
            Arc::new(self.store.scoped(key)),
            self.settings.clone(),
            self.node_id.clone(),
            self.hostname.clone(),
            self.plugins.clone(),
        ));
        Plane {
            router: gantry_admin::router(state.clone()),
            state,
        }
    }

    /// The default control plane's id (read from the store once).
    pub async fn default_id(&self) -> Option<String> {
        self.default_id
            .get_or_try_init(|| async {
                match self.store.control_plane_by_key(DEFAULT_CP).await {
                    Ok(Some(row)) => Ok(row.id),
                    _ => Err(()),
                }
            })
            .await
            .ok()
            .cloned()
    }

    /// Check a request's token.
    pub async fn principal(
        &self,
        headers: &HeaderMap,
        client: IpAddr,
    ) -> Result<Principal, KonnectError> {
        Ok(self
            .verifier
            .check(&self.store, tokens::presented(headers), client)
            .await?)
    }

    /// Record where the cluster and telemetry listeners listen, for the endpoints shown.
    pub fn set_listeners(&self, cluster: std::net::SocketAddr, telemetry: std::net::SocketAddr) {
        let _ = self.listeners.set((cluster, telemetry));
    }

    /// The host data planes dial a listener at `addr` by: its address, or this machine's
    /// name when it listens on every address.
    pub fn dial_host(&self, addr: std::net::SocketAddr) -> String {
        match addr.ip() {
            ip if ip.is_unspecified() => self.hostname.clone(),
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        }
    }

    /// Control plane `row`'s endpoints, as Konnect shows them: the listeners' ports (as bound,
    /// else as set), at the control plane's names under `cluster_endpoint_domain`, else at the
    /// listeners' host.
    pub fn endpoints(&self, row: &ControlPlaneRow) -> (String, String) {
        let port = |l: &[gantry_conf::Listen], default: u16| {
            l.first()
                .and_then(|l| l.addr.rsplit_once(':'))
                .and_then(|(_, p)| p.parse::<u16>().ok())
                .unwrap_or(default)
        };
        let (cp_port, tp_port, host) = match self.listeners.get() {
            Some((c, t)) => (c.port(), t.port(), self.dial_host(*c)),
            None => (
                port(&self.settings.cluster_listen, 8005),
                port(&self.settings.cluster_telemetry_listen, 8006),
                self.hostname.clone(),
            ),
        };
        match &self.settings.cluster_endpoint_domain {
            Some(domain) => {
                let prefix = endpoint_prefix(&row.id);
                (
                    format!("https://{prefix}.cp.{domain}:{cp_port}"),
                    format!("https://{prefix}.tp.{domain}:{tp_port}"),
                )
            }
            None => (
                format!("https://{host}:{cp_port}"),
                format!("https://{host}:{tp_port}"),
            ),
        }
    }
}

pub use gantry_model::endpoint_prefix;

/// The Kong Admin API's check of access tokens: a token with a role on the default control
/// plane (admin to write). Set on the default control plane's Admin API when it must require
/// tokens (see `gantry_admin::Authorize`).
pub struct KongApiTokens {
    pub konnect: std::sync::Weak<Konnect>,
}

impl gantry_admin::Authorize for KongApiTokens {
    fn authorize<'a>(
        &'a self,
        headers: &'a HeaderMap,
        client: IpAddr,
        write: bool,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<Response>> + Send + 'a>> {
        Box::pin(async move {
            let message = |status: StatusCode, m: &str| {
                Some((status, axum::Json(serde_json::json!({ "message": m }))).into_response())
            };
            let Some(k) = self.konnect.upgrade() else {
                return message(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
            };
            let p = match k.principal(headers, client).await {
                Ok(p) => p,
                Err(KonnectError::Unauthorized(tokens::Denied::TooManyFailures)) => {
                    return message(
                        StatusCode::TOO_MANY_REQUESTS,
                        "Too many failed authentication attempts; retry later",
                    )
                }
                Err(KonnectError::Unauthorized(d)) => {
                    let mut r = message(
                        StatusCode::UNAUTHORIZED,
                        &format!("Invalid credentials. Token required ({d})"),
                    );
                    if let Some(r) = &mut r {
                        r.headers_mut().insert(
                            axum::http::header::WWW_AUTHENTICATE,
                            axum::http::HeaderValue::from_static("Bearer"),
                        );
                    }
                    return r;
                }
                Err(e) => return Some(e.into_response()),
            };
            let Some(cp_id) = k.default_id().await else {
                return message(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "An unexpected error occurred",
                );
            };
            match p.role_on(&cp_id) {
                Some(Role::Admin) => None,
                Some(Role::Viewer) if !write => None,
                Some(Role::Viewer) => message(
                    StatusCode::FORBIDDEN,
                    "Forbidden: this token may read the default control plane, not change it",
                ),
                None => message(
                    StatusCode::FORBIDDEN,
                    "Forbidden: this token has no role on the default control plane",
                ),
            }
        })
    }
}

/// Whether an `admin_listen` address is reachable only from this host.
pub fn loopback_only(listen: &[gantry_conf::Listen]) -> bool {
    listen.iter().all(|l| {
        let host = l
            .addr
            .rsplit_once(':')
            .map(|(h, _)| h)
            .unwrap_or(&l.addr)
            .trim_start_matches('[')
            .trim_end_matches(']');
        host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
    })
}
