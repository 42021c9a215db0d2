//! The console's built files (`console/`, built by `npm run build` into `assets/`), embedded in
//! the binary: `cargo build` needs no Node.js, and nothing is fetched at run time. Each is
//! gzipped once, on first use, for clients that accept it.

use std::io::Write;
use std::sync::OnceLock;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// One embedded file.
pub struct Asset {
    pub path: &'static str,
    pub content_type: &'static str,
    pub body: &'static [u8],
    gzipped: OnceLock<Vec<u8>>,
}

impl Asset {
    const fn new(path: &'static str, content_type: &'static str, body: &'static [u8]) -> Asset {
        Asset {
            path,
            content_type,
            body,
            gzipped: OnceLock::new(),
        }
    }

    /// The body gzipped (best compression).
    pub fn gzipped(&'static self) -> &'static [u8] {
        self.gzipped.get_or_init(|| {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            // Writing to a Vec cannot fail.
            let _ = e.write_all(self.body);
            e.finish().unwrap_or_default()
        })
    }

    /// The response to a GET, gzipped when the client accepts it.
    pub fn respond(&'static self, req: &HeaderMap) -> Response {
        let gzip = req
            .get_all(header::ACCEPT_ENCODING)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|e| e.trim().starts_with("gzip")));
        let body = if gzip { self.gzipped() } else { self.body };
        let mut res = (StatusCode::OK, body).into_response();
        let h = res.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(self.content_type),
        );
        h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
        // Not hashed names: a new binary may serve new files under the same names.
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        if gzip {
            h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        res
    }
}

pub static INDEX: Asset = Asset::new(
    "/index.html",
    "text/html; charset=utf-8",
    include_bytes!("../assets/index.html"),
);

pub static FILES: [Asset; 2] = [
    Asset::new(
        "/assets/app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/app.js"),
    ),
    Asset::new(
        "/assets/app.css",
        "text/css; charset=utf-8",
        include_bytes!("../assets/app.css"),
    ),
];

/// The embedded file at `path`, if any.
pub fn find(path: &str) -> Option<&'static Asset> {
    FILES.iter().find(|a| a.path == path)
}
