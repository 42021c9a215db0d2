//! The upstream `healthchecks` record, with Kong's defaults.

use serde_json::json;

use crate::schema::*;

fn statuses() -> Ty {
    array(int(100, 999))
}

fn counter() -> Ty {
    int(0, 255)
}

fn interval() -> Ty {
    Ty::Num {
        min: Some(0.0),
        max: Some(65535.0),
        gt: None,
    }
}

/// `healthchecks = { active = {...}, passive = {...}, threshold = 0 }`.
pub fn healthchecks() -> Ty {
    record(vec![
        Field::new(
            "active",
            record(vec![
                Field::new("type", one_of(&["tcp", "http", "https", "grpc", "grpcs"]))
                    .def(json!("http")),
                Field::new("timeout", number()).def(json!(1)),
                Field::new("concurrency", int(1, 2_147_483_648)).def(json!(10)),
                Field::new("http_path", str_of(StrKind::Path)).def(json!("/")),
                Field::new("https_sni", str_of(StrKind::Host)),
                Field::new("https_verify_certificate", boolean()).def(json!(true)),
                Field::new("headers", map(array(string()))),
                Field::new(
                    "healthy",
                    record(vec![
                        Field::new("interval", interval()).def(json!(0)),
                        Field::new("http_statuses", statuses()).def(json!([200, 302])),
                        Field::new("successes", counter()).def(json!(0)),
                    ]),
                ),
                Field::new(
                    "unhealthy",
                    record(vec![
                        Field::new("interval", interval()).def(json!(0)),
                        Field::new("http_statuses", statuses())
                            .def(json!([429, 404, 500, 501, 502, 503, 504, 505])),
                        Field::new("tcp_failures", counter()).def(json!(0)),
                        Field::new("timeouts", counter()).def(json!(0)),
                        Field::new("http_failures", counter()).def(json!(0)),
                    ]),
                ),
            ]),
        ),
        Field::new(
            "passive",
            record(vec![
                Field::new("type", one_of(&["tcp", "http", "https", "grpc", "grpcs"]))
                    .def(json!("http")),
                Field::new(
                    "healthy",
                    record(vec![
                        Field::new("http_statuses", statuses()).def(json!([
                            200, 201, 202, 203, 204, 205, 206, 207, 208, 226, 300, 301, 302, 303,
                            304, 305, 306, 307, 308
                        ])),
                        Field::new("successes", counter()).def(json!(0)),
                    ]),
                ),
                Field::new(
                    "unhealthy",
                    record(vec![
                        Field::new("http_statuses", statuses()).def(json!([429, 500, 503])),
                        Field::new("tcp_failures", counter()).def(json!(0)),
                        Field::new("timeouts", counter()).def(json!(0)),
                        Field::new("http_failures", counter()).def(json!(0)),
                    ]),
                ),
            ]),
        ),
        Field::new(
            "threshold",
            Ty::Num {
                min: Some(0.0),
                max: Some(100.0),
                gt: None,
            },
        )
        .def(json!(0)),
    ])
}
