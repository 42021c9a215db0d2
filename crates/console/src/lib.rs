//! The web console, served on `admin_gui_listen` (docs/console.md).
//!
//! The console holds no state of its own beyond its sessions: it is a client of the v2 API
//! (`/api/v2/...` is that API, called with the session's access token, so every request is
//! authorised by the token's roles exactly as a direct call would be) and of a few read-mostly
//! endpoints of its own under `/api/console/` (a control plane's overview, its data planes as
//! the registry knows them, the versions the New Data Plane Node wizard offers, the wizard's
//! certificate, analytics), which check the same token. Its files are embedded (`assets`).

pub mod api;
pub mod assets;
pub mod session;
pub mod wizard;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use gantry_konnect::{Konnect, Principal};
use serde_json::json;
use tower::ServiceExt;

use session::{CookieStyle, Session, Sessions};

/// The Content-Security-Policy of every answer: the console's own files only; no inline
/// script or style, no frames, no other origin.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// One console: the v2 API it is a client of, and its sessions.
pub struct Console {
    konnect: Arc<Konnect>,
    v2: Router,
    sessions: Sessions,
    wizard: Option<wizard::Wizard>,
}

impl Console {
    /// `v2` is the v2 API as the Admin API serves it (`gantry_konnect::api::router_with`);
    /// `wizard` what the New Data Plane Node wizard needs, on a node with cluster listeners.
    pub fn new(konnect: Arc<Konnect>, v2: Router, wizard: Option<wizard::Wizard>) -> Arc<Console> {
        Arc::new(Console {
            konnect,
            v2,
            sessions: Sessions::default(),
            wizard,
        })
    }

    pub fn konnect(&self) -> &Arc<Konnect> {
        &self.konnect
    }
}

/// A listener's console: `tls` when it serves HTTPS.
#[derive(Clone)]
pub struct Served {
    console: Arc<Console>,
    tls: bool,
    cookie: CookieStyle,
}

/// What a request with a live session carries into its handler.
#[derive(Clone)]
pub struct Current {
    pub id: String,
    pub session: Session,
    pub principal: Principal,
}

/// A console error: its status and a message, as `{"message"}`.
#[derive(Debug)]
pub struct Refusal(pub StatusCode, pub String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"message": self.1}))).into_response()
    }
}

impl From<gantry_konnect::KonnectError> for Refusal {
    fn from(e: gantry_konnect::KonnectError) -> Refusal {
        let (status, m) = gantry_konnect::api::status_of(&e);
        Refusal(status, m)
    }
}

impl From<gantry_store::StoreError> for Refusal {
    fn from(e: gantry_store::StoreError) -> Refusal {
        tracing::error!(error = %e, "console: the store failed");
        Refusal(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }
}

/// The console's routes for one listener. `tls`: it serves HTTPS; `loopback`: it listens on
/// loopback only. The session cookie is `Secure` on both (browsers treat loopback as a secure
/// context); on a plain listener reachable from other hosts it cannot be, and the binary warns.
pub fn router(console: Arc<Console>, tls: bool, loopback: bool) -> Router {
    let served = Served {
        console,
        tls,
        cookie: CookieStyle {
            secure: tls || loopback,
        },
    };
    Router::new()
        .route(
            "/api/session",
            get(session_get).post(session_post).delete(session_delete),
        )
        .route("/api/v2", any(forward_v2))
        .route("/api/v2/{*rest}", any(forward_v2))
        .route("/api/console/control-planes/{id}", get(api::overview))
        .route("/api/console/control-planes/{id}/nodes", get(api::nodes))
        .route(
            "/api/console/control-planes/{id}/versions",
            get(api::versions),
        )
        .route(
            "/api/console/control-planes/{id}/data-plane-certificates",
            post(api::new_node),
        )
        .route(
            "/api/console/control-planes/{id}/analytics",
            get(api::analytics),
        )
        .route("/api", any(api_unknown))
        .route("/api/{*rest}", any(api_unknown))
        .layer(axum::middleware::from_fn_with_state(
            served.clone(),
            require_session,
        ))
        .fallback(files)
        .layer(axum::middleware::from_fn(headers))
        .with_state(served)
}

/// Security headers on every answer; `/api` answers are never cached.
async fn headers(req: Request, next: Next) -> Response {
    let api = req.uri().path().starts_with("/api");
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if api {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    res
}

/// The embedded files; any other GET is the application's page (it routes in the browser).
async fn files(method: Method, uri: Uri, headers: HeaderMap) -> Response {
    if !matches!(method, Method::GET | Method::HEAD) {
        return Refusal(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed".into())
            .into_response();
    }
    match assets::find(uri.path()) {
        Some(a) => a.respond(&headers),
        None if uri.path().starts_with("/assets/") => {
            Refusal(StatusCode::NOT_FOUND, "Not found".into()).into_response()
        }
        None => assets::INDEX.respond(&headers),
    }
}

async fn api_unknown() -> Refusal {
    Refusal(StatusCode::NOT_FOUND, "Not found".into())
}

fn client(req: &Request) -> IpAddr {
    gantry_admin::client_ip(req)
}

/// The headers a v2 request made on the user's behalf carries: their token.
fn bearer(token: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&format!("Bearer {token}")) {
        h.insert(header::AUTHORIZATION, v);
    }
    h
}

/// Every `/api` request but login needs a live session whose token still holds; one that
/// changes something must also come from the console's origin and carry the session's CSRF
/// token. Login must come from the console's origin.
async fn require_session(State(s): State<Served>, mut req: Request, next: Next) -> Response {
    let unsafe_method = session::unsafe_method(req.method());
    if unsafe_method {
        if let Some(why) = session::cross_site(req.headers(), s.tls) {
            return Refusal(
                StatusCode::FORBIDDEN,
                format!("cross-site request refused: {why}"),
            )
            .into_response();
        }
    }
    if req.method() == Method::POST && req.uri().path() == "/api/session" {
        return next.run(req).await;
    }
    // `GET /api/session` answers whether there is a session: without one, that is an answer,
    // not an error (the page asks before anyone logged in).
    let asks = req.method() == Method::GET && req.uri().path() == "/api/session";
    let logged_out = |why: &str| {
        if asks {
            Json(json!({"authenticated": false})).into_response()
        } else {
            Refusal(StatusCode::UNAUTHORIZED, why.to_string()).into_response()
        }
    };
    let Some(id) = s.cookie.read(req.headers()) else {
        return logged_out("Log in first.");
    };
    let Some(session) = s.console.sessions.touch(&id) else {
        return logged_out("The session has ended: log in again.");
    };
    if unsafe_method {
        let sent = req
            .headers()
            .get("x-csrf-token")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !session::same(sent, &session.csrf) {
            return Refusal(
                StatusCode::FORBIDDEN,
                "missing or wrong X-CSRF-Token: reload the console".into(),
            )
            .into_response();
        }
    }
    let principal = match s
        .console
        .konnect
        .principal(&bearer(&session.token), client(&req))
        .await
    {
        Ok(p) => p,
        Err(e) => {
            // The token was revoked or expired: its sessions end.
            s.console.sessions.close_token(&session.token);
            let (_, m) = gantry_konnect::api::status_of(&e);
            return logged_out(&format!(
                "The session's token no longer holds ({m}): log in again."
            ));
        }
    };
    req.extensions_mut().insert(Current {
        id,
        session,
        principal,
    });
    next.run(req).await
}

fn session_body(s: &Session) -> serde_json::Value {
    json!({
        "authenticated": true,
        "csrf_token": s.csrf,
        "expires_at": s.expires_at(),
        "org_admin": s.org_admin,
        "name": s.name,
    })
}

async fn session_get(axum::Extension(cur): axum::Extension<Current>) -> Response {
    Json(session_body(&cur.session)).into_response()
}

#[derive(serde::Deserialize)]
struct Login {
    token: String,
}

/// `POST /api/session` `{"token"}`: check the token as the v2 API would, and open a session.
async fn session_post(State(s): State<Served>, req: Request) -> Response {
    let ip = client(&req);
    let bytes = match axum::body::to_bytes(req.into_body(), 64 * 1024).await {
        Ok(b) => b,
        Err(_) => {
            return Refusal(StatusCode::BAD_REQUEST, "the body is too large".into()).into_response()
        }
    };
    let login: Login = match serde_json::from_slice(&bytes) {
        Ok(l) => l,
        Err(e) => {
            return Refusal(
                StatusCode::BAD_REQUEST,
                format!("expected {{\"token\": \"...\"}}: {e}"),
            )
            .into_response()
        }
    };
    let token = login.token.trim().to_string();
    match s.console.konnect.principal(&bearer(&token), ip).await {
        Ok(p) => {
            let (id, session) = s
                .console
                .sessions
                .open(token, p.name.clone(), p.org_admin());
            tracing::info!(token = %p.name, client = %ip, "console login");
            let mut res = (StatusCode::CREATED, Json(session_body(&session))).into_response();
            res.headers_mut()
                .insert(header::SET_COOKIE, s.cookie.set(&id));
            res
        }
        Err(e) => {
            let (status, m) = gantry_konnect::api::status_of(&e);
            let status = if status == StatusCode::TOO_MANY_REQUESTS {
                status
            } else {
                StatusCode::UNAUTHORIZED
            };
            Refusal(status, m).into_response()
        }
    }
}

async fn session_delete(
    State(s): State<Served>,
    axum::Extension(cur): axum::Extension<Current>,
) -> Response {
    s.console.sessions.close(&cur.id);
    let mut res = StatusCode::NO_CONTENT.into_response();
    res.headers_mut()
        .insert(header::SET_COOKIE, s.cookie.clear());
    res
}

/// `/api/v2/...`: the v2 API, called with the session's token.
async fn forward_v2(
    State(s): State<Served>,
    axum::Extension(cur): axum::Extension<Current>,
    req: Request,
) -> Response {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().strip_prefix("/api").unwrap_or("/v2");
    let target = match parts.uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    let Ok(uri) = target.parse::<Uri>() else {
        return api_unknown().await.into_response();
    };
    let mut inner = Request::new(body);
    *inner.method_mut() = parts.method;
    *inner.uri_mut() = uri;
    let mut headers = bearer(&cur.session.token);
    for name in [header::CONTENT_TYPE, header::ACCEPT, header::CONTENT_LENGTH] {
        if let Some(v) = parts.headers.get(&name) {
            headers.insert(name, v.clone());
        }
    }
    *inner.headers_mut() = headers;
    if let Some(c) = parts.extensions.get::<ConnectInfo<SocketAddr>>() {
        inner.extensions_mut().insert(*c);
    }
    match s.console.v2.clone().oneshot(inner.map(Body::new)).await {
        Ok(r) => r,
        Err(never) => match never {},
    }
}
