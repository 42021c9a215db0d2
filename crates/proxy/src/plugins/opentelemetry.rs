//! opentelemetry, as Kong 3.9's: trace context propagation and spans exported over OTLP/HTTP
//! (protobuf) to `traces_endpoint`.
//!
//! **Propagation** (access phase). The incoming context is read with the first of `extract`'s
//! formats whose headers the request carries (`w3c`, `b3` (single or multiple headers),
//! `jaeger`, `ot`, `datadog`, `aws`, `gcp`), the `clear` headers are removed, and the context
//! is written in each of `inject`'s formats (`preserve`: the format it came in, else
//! `default_format`). Without a `propagation` setting, the deprecated `header_type` decides as
//! in Kong (its default `preserve` extracts every format and injects the one found). The
//! upstream is told the span of its try (`kong.balancer`) as the parent, or the request's span
//! when the balancer is not instrumented. `http_response_header_for_traceid` names a response
//! header that carries the trace id.
//!
//! **Sampling**, as Kong's: nothing is sampled unless the node records spans
//! (`tracing_instrumentations` names `request`); a parent that said "not sampled" is obeyed;
//! otherwise the trace id's first eight bytes, read as a little-endian integer, are compared
//! with `sampling_rate` (or the node's `tracing_sampling_rate`) times 2^64.
//!
//! **Spans** (log phase): those the node recorded ([`crate::spans`]), with Kong's names, kinds
//! and attributes, queued one entry per span in Kong's plugin queue (batches of
//! `queue.max_batch_size`, 200 by default) and sent as one `ExportTraceServiceRequest` per
//! batch, under a resource of `service.name` (`kong`), `service.instance.id` (the node id) and
//! `service.version`, overridden by `resource_attributes`, and the scope `kong-internal`.
//!
//! Kong 3.9 can also send the node's logs to `logs_endpoint`; Gantry does not, and refuses
//! that field when it is set rather than accept it and send nothing.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use hyper::header::{HeaderName, HeaderValue};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status,
};
use prost::Message;
use serde_json::{json, Value};

use gantry_model::plugins::*;
use gantry_model::schema::*;

use super::queue::{self, Handler, Queues, SendFailed};
use super::sink::{Endpoint, Sender};
use super::{BoxFuture, Ctx, Descriptor, Flow, Instance, Plugin, Shared};
use crate::server::RequestLog;
use crate::spans::{self, Trace, Tracing};
use crate::upstream_tls::Connectors;

pub static DESCRIPTOR: Descriptor = Descriptor::new(schema, build);

/// The formats Kong reads and writes trace context in.
const EXTRACTORS: &[&str] = &["w3c", "b3", "jaeger", "ot", "aws", "gcp", "datadog"];
/// `inject`'s values: `preserve`, then every format ([`INJECTORS`]).
const INJECT: &[&str] = &[
    "preserve",
    "w3c",
    "b3",
    "b3-single",
    "jaeger",
    "ot",
    "aws",
    "gcp",
    "datadog",
];
const INJECTORS: &[&str] = INJECT.split_at(1).1;
/// `header_type`'s extraction order (Kong's `get_plugin_params`).
const EVERY_FORMAT: &[&str] = &["b3", "w3c", "jaeger", "ot", "datadog", "aws", "gcp"];

fn timeout(default: i64) -> Field {
    Field::new("", int(0, 2_147_483_646)).def(json!(default))
}

fn schema() -> PluginSchema {
    let named = |name: &'static str, f: Field| Field { name, ..f };
    PluginSchema::new(
        "opentelemetry",
        14,
        vec![
            Field::new("traces_endpoint", str_of(StrKind::Url)),
            Field::new("logs_endpoint", str_of(StrKind::Url)),
            Field::new("headers", map(string())),
            Field::new("resource_attributes", map(string())),
            queue::schema().def(json!({"max_batch_size": 200})),
            Field::new("batch_span_count", integer()),
            Field::new("batch_flush_delay", integer()),
            named("connect_timeout", timeout(1000)),
            named("send_timeout", timeout(5000)),
            named("read_timeout", timeout(5000)),
            Field::new("http_response_header_for_traceid", string()),
            Field::new(
                "header_type",
                one_of(&[
                    "preserve", "ignore", "b3", "b3-single", "w3c", "jaeger", "ot", "aws", "gcp",
                    "datadog",
                ]),
            )
            .def(json!("preserve")),
            Field::new("sampling_rate", number_between(0.0, 1.0)),
            Field::new(
                "propagation",
                record(vec![
                    Field::new("extract", array(one_of(EXTRACTORS))),
                    Field::new("clear", array(string())),
                    Field::new("inject", array(one_of(INJECT))),
                    Field::new("default_format", one_of(INJECTORS)).req(),
                ]),
            )
            .def(json!({"default_format": "w3c"})),
        ],
    )
    .hidden_shorthands(&[("endpoint", &["traces_endpoint"])])
    .checks(|c, e| {
        let set = |k: &str| c.get(k).is_some_and(|v| !v.is_null());
        if !set("traces_endpoint") && !set("logs_endpoint") {
            e.add_record_entity(
                "at least one of these fields must be non-empty: 'traces_endpoint', 'logs_endpoint'",
            );
        }
        if set("logs_endpoint") {
            e.add(
                "logs_endpoint",
                "Gantry does not send logs over OTLP: set traces_endpoint only",
            );
        }
        if let Some(attrs) = c.get("resource_attributes").and_then(Value::as_object) {
            if attrs.values().any(|v| v.as_str() == Some("")) {
                e.add("resource_attributes", "required field missing");
            }
        }
        if let Some(h) = c.get("headers").and_then(Value::as_object) {
            for name in h.keys() {
                if HeaderName::from_bytes(name.as_bytes()).is_err() {
                    e.add(
                        "headers",
                        format!("bad header name '{name}', allowed characters are A-Z, a-z, 0-9, '_', and '-'"),
                    );
                }
            }
        }
        if let Some(clear) = c
            .get("propagation")
            .and_then(|p| p.get("clear"))
            .and_then(Value::as_array)
        {
            for name in clear.iter().filter_map(Value::as_str) {
                if HeaderName::from_bytes(name.as_bytes()).is_err() {
                    e.add(
                        "propagation",
                        format!("clear: bad header name '{name}', allowed characters are A-Z, a-z, 0-9, '_', and '-'"),
                    );
                }
            }
        }
    })
}

/// Where the context is read from and written to, after `header_type` is applied.
#[derive(Debug, Clone, PartialEq)]
struct Propagation {
    extract: Vec<&'static str>,
    clear: Vec<HeaderName>,
    inject: Vec<&'static str>,
    default_format: &'static str,
}

/// A format's name as one of ours (validated by the schema already).
fn format_name(v: &str) -> Option<&'static str> {
    INJECT.iter().copied().find(|f| *f == v)
}

impl Propagation {
    /// Kong's `get_plugin_params`: `propagation` when any of its lists is set, otherwise what
    /// the deprecated `header_type` stands for.
    fn from_config(c: &Value) -> Propagation {
        let p = c.get("propagation").cloned().unwrap_or(Value::Null);
        let list = |k: &str| -> Option<Vec<&'static str>> {
            p.get(k)
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(|v| format_name(v.as_str()?)).collect())
        };
        let default_format = p
            .get("default_format")
            .and_then(Value::as_str)
            .and_then(format_name)
            .unwrap_or("w3c");
        let clear: Vec<HeaderName> = p
            .get("clear")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| HeaderName::from_bytes(v.as_str()?.as_bytes()).ok())
                    .collect()
            })
            .unwrap_or_default();
        let any_set = ["extract", "clear", "inject"]
            .iter()
            .any(|k| p.get(*k).is_some_and(|v| !v.is_null()));
        if any_set {
            return Propagation {
                extract: list("extract").unwrap_or_default(),
                clear,
                inject: list("inject").unwrap_or_default(),
                default_format,
            };
        }
        let (extract, inject) = match c.get("header_type").and_then(Value::as_str) {
            None => (Vec::new(), Vec::new()),
            Some("preserve") => (EVERY_FORMAT.to_vec(), vec!["preserve"]),
            Some("ignore") => (Vec::new(), vec![default_format]),
            Some(other) => (
                EVERY_FORMAT.to_vec(),
                vec!["preserve", format_name(other).unwrap_or("w3c")],
            ),
        };
        Propagation {
            extract,
            clear,
            inject,
            default_format,
        }
    }
}

/// A trace context read from a request (ids already at Kong's sizes: 16 and 8 bytes).
#[derive(Debug, Clone, Default, PartialEq)]
struct Extracted {
    trace_id: Option<[u8; 16]>,
    /// The length the trace id came in (b3 and others also take 8 bytes).
    trace_id_size: Option<usize>,
    span_id: Option<[u8; 8]>,
    parent_id: Option<[u8; 8]>,
    sampled: Option<bool>,
    /// b3's debug flag (`x-b3-flags: 1`, or `d` in the single header).
    debug: bool,
    /// b3 came as the single `b3` header.
    single: bool,
}

/// Bytes from hex, an odd length padded with a leading zero (Kong's `from_hex`).
fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let padded;
    let s = if s.len() % 2 == 1 {
        padded = format!("0{s}");
        padded.as_str()
    } else {
        s
    };
    hex::decode(s).ok()
}

/// An id at `N` bytes: the last `N`, or left-padded with zeros (Kong's `to_id_size`).
fn sized<const N: usize>(id: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    if id.len() >= N {
        out.copy_from_slice(&id[id.len() - N..]);
    } else {
        out[N - id.len()..].copy_from_slice(id);
    }
    out
}

/// A decimal id as big-endian bytes (datadog's and gcp's ids are unsigned 64-bit numbers).
fn from_dec(s: &str) -> Option<Vec<u8>> {
    s.parse::<u64>().ok().map(|n| n.to_be_bytes().to_vec())
}

fn header<'h>(h: &'h hyper::HeaderMap, name: &str) -> Option<&'h str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

fn is_zero(hex: &str) -> bool {
    hex.bytes().all(|b| b == b'0')
}

/// Hex digits, of one of these lengths.
fn hex_of(s: &str, lengths: &[usize]) -> bool {
    lengths.contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Exactly four non-empty runs of hex digits, separated by `sep` (W3C's and Jaeger's form).
fn four_hex(v: &str, sep: char) -> Option<[&str; 4]> {
    let mut parts = v.split(sep);
    let four = [parts.next()?, parts.next()?, parts.next()?, parts.next()?];
    let hex = |p: &&str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_hexdigit());
    (parts.next().is_none() && four.iter().all(hex)).then_some(four)
}

impl Extracted {
    fn new(
        trace_id: Option<Vec<u8>>,
        span_id: Option<Vec<u8>>,
        parent_id: Option<Vec<u8>>,
        sampled: Option<bool>,
    ) -> Extracted {
        Extracted {
            trace_id_size: trace_id.as_ref().map(Vec::len),
            trace_id: trace_id.as_deref().map(sized::<16>),
            span_id: span_id.as_deref().map(sized::<8>),
            parent_id: parent_id.as_deref().map(sized::<8>),
            sampled,
            ..Extracted::default()
        }
    }

    /// Read the context in `format`: `None` when the request carries none of its headers or
    /// they are invalid (Kong logs a warning and goes on with the next format).
    fn read(format: &str, h: &hyper::HeaderMap) -> Option<Extracted> {
        match format {
            "w3c" => Self::w3c(h),
            "b3" => Self::b3(h),
            "jaeger" => Self::jaeger(h),
            "ot" => Self::ot(h),
            "aws" => Self::aws(h),
            "gcp" => Self::gcp(h),
            "datadog" => Self::datadog(h),
            _ => None,
        }
    }

    fn w3c(h: &hyper::HeaderMap) -> Option<Extracted> {
        let v = header(h, "traceparent")?;
        let Some([version, trace, parent, flags]) = four_hex(v, '-') else {
            return Self::invalid("W3C traceparent header");
        };
        if version != "00" {
            return Self::invalid("W3C Trace Context version");
        }
        if trace.len() != 32 || is_zero(trace) {
            return Self::invalid("W3C trace context trace ID");
        }
        if parent.len() != 16 || is_zero(parent) {
            return Self::invalid("W3C trace context parent ID");
        }
        if flags.len() != 2 {
            return Self::invalid("W3C trace context flags");
        }
        let sampled = u8::from_str_radix(flags, 16).ok()? % 2 == 1;
        Some(Extracted::new(
            from_hex(trace),
            from_hex(parent),
            None,
            Some(sampled),
        ))
    }

    fn b3(h: &hyper::HeaderMap) -> Option<Extracted> {
        const NAMES: &[&str] = &[
            "b3",
            "tracestate",
            "x-b3-traceid",
            "x-b3-spanid",
            "x-b3-parentspanid",
            "x-b3-sampled",
            "x-b3-flags",
        ];
        if !NAMES.iter().any(|n| h.contains_key(*n)) {
            return None;
        }
        let hexes = hex_of;
        let (mut trace, mut span, mut parent) = (None, None, None);
        let (mut sampled, mut debug, mut single) = (None, false, false);
        // The single header, or `b3=` in tracestate.
        let single_value = header(h, "b3").map(str::to_string).or_else(|| {
            h.get_all("tracestate")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .find_map(|v| v.strip_prefix("b3=").map(str::to_string))
        });
        if let Some(v) = single_value {
            single = true;
            match v.as_str() {
                "1" => sampled = Some(true),
                "d" => (sampled, debug) = (Some(true), true),
                "0" => sampled = Some(false),
                _ => {
                    let parts: Vec<&str> = v.split('-').collect();
                    let (t, s, flag, p) = match parts[..] {
                        [t, s] => (t, s, "", ""),
                        [t, s, f] if f.len() <= 1 => (t, s, f, ""),
                        [t, s, p] => (t, s, "", p),
                        [t, s, f, p] => (t, s, f, p),
                        _ => ("", "", "", ""),
                    };
                    if hexes(t, &[16, 32])
                        && hexes(s, &[16])
                        && matches!(flag, "" | "0" | "1" | "d")
                        && (p.is_empty() || hexes(p, &[16]))
                    {
                        trace = Some(t.to_string());
                        span = Some(s.to_string());
                        parent = (!p.is_empty()).then(|| p.to_string());
                        match flag {
                            "1" => sampled = Some(true),
                            "d" => (sampled, debug) = (Some(true), true),
                            "0" => sampled = Some(false),
                            _ => {}
                        }
                    } else {
                        tracing::warn!("b3 single header invalid; ignoring.");
                    }
                }
            }
        }
        // The multiple headers fill what the single one left.
        let multi_sampled = match header(h, "x-b3-sampled") {
            Some("1" | "true") => Some(true),
            Some("0" | "false") => Some(false),
            _ => None,
        };
        let multi_debug = header(h, "x-b3-flags") == Some("1");
        if sampled.is_none() {
            sampled = if multi_debug {
                Some(true)
            } else {
                multi_sampled
            };
        }
        debug = debug || multi_debug;
        let t = header(h, "x-b3-traceid");
        let s = header(h, "x-b3-spanid");
        let p = header(h, "x-b3-parentspanid");
        let invalid = t.is_some_and(|t| !hexes(t, &[16, 32]))
            || s.is_some_and(|s| !hexes(s, &[16]))
            || p.is_some_and(|p| !hexes(p, &[16]));
        if invalid {
            tracing::warn!("x-b3 headers invalid; ignoring.");
        } else {
            trace = trace.or(t.map(str::to_string));
            span = span.or(s.map(str::to_string));
            parent = parent.or(p.map(str::to_string));
        }
        if trace.is_none() {
            (span, parent) = (None, None);
        }
        let mut x = Extracted::new(
            trace.as_deref().and_then(from_hex),
            span.as_deref().and_then(from_hex),
            parent.as_deref().and_then(from_hex),
            sampled,
        );
        x.debug = debug;
        x.single = single;
        Some(x)
    }

    fn jaeger(h: &hyper::HeaderMap) -> Option<Extracted> {
        let v = header(h, "uber-trace-id").filter(|v| !v.is_empty())?;
        let Some([trace, span, parent, flags]) = four_hex(v, ':') else {
            return Self::invalid("jaeger uber-trace-id header");
        };
        if trace.len() > 32 || is_zero(trace) {
            return Self::invalid("jaeger trace ID");
        }
        if span.len() > 16 || is_zero(span) {
            return Self::invalid("jaeger span ID");
        }
        if flags.len() > 2 {
            return Self::invalid("jaeger flags");
        }
        let sampled = u8::from_str_radix(flags, 16).ok()? % 2 == 1;
        Some(Extracted::new(
            from_hex(trace),
            from_hex(span),
            from_hex(parent),
            Some(sampled),
        ))
    }

    fn ot(h: &hyper::HeaderMap) -> Option<Extracted> {
        let names = ["ot-tracer-sampled", "ot-tracer-traceid", "ot-tracer-spanid"];
        if !names.iter().any(|n| h.contains_key(*n)) {
            return None;
        }
        let sampled = match header(h, "ot-tracer-sampled") {
            Some("1" | "true") => Some(true),
            Some("0" | "false") => Some(false),
            _ => None,
        };
        let hexes = hex_of;
        let t = header(h, "ot-tracer-traceid");
        let s = header(h, "ot-tracer-spanid");
        let invalid =
            t.is_some_and(|t| !hexes(t, &[16, 32])) || s.is_some_and(|s| !hexes(s, &[16]));
        let (t, s) = if invalid || t.is_none() {
            (None, None)
        } else {
            (t, s)
        };
        Some(Extracted::new(
            t.and_then(from_hex),
            s.and_then(from_hex),
            None,
            sampled,
        ))
    }

    fn aws(h: &hyper::HeaderMap) -> Option<Extracted> {
        let v = header(h, "x-amzn-trace-id")?;
        let (mut trace, mut parent, mut sampled) = (None, None, None);
        for pair in v.split(';') {
            let mut kv = pair.splitn(2, '=');
            let key = kv.next().unwrap_or_default().trim();
            let value = kv.next().unwrap_or_default().trim();
            match key {
                "Root" => {
                    let parts: Vec<&str> = value.split('-').collect();
                    match parts[..] {
                        ["1", ts, id]
                            if value.len() == 35
                                && ts.len() == 8
                                && id.len() == 24
                                && value[2..]
                                    .bytes()
                                    .all(|b| b.is_ascii_hexdigit() || b == b'-') =>
                        {
                            trace = from_hex(&format!("{ts}{id}"));
                        }
                        _ => return Self::invalid("aws header trace id"),
                    }
                }
                "Parent" => {
                    if value.len() != 16 {
                        return Self::invalid("aws header parent id");
                    }
                    parent = from_hex(value);
                }
                "Sampled" => match value {
                    "0" => sampled = Some(false),
                    "1" => sampled = Some(true),
                    _ => return Self::invalid("aws header sampled flag"),
                },
                _ => {}
            }
        }
        Some(Extracted::new(trace, parent, None, sampled))
    }

    fn gcp(h: &hyper::HeaderMap) -> Option<Extracted> {
        let v = header(h, "x-cloud-trace-context")?;
        let (trace, rest) = v.split_once('/')?;
        let (span, flags) = match rest.split_once(";o=") {
            Some((s, f)) => (s, Some(f)),
            None => (rest, None),
        };
        let valid = trace.len() == 32
            && trace
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
            && (1..=20).contains(&span.len())
            && span.bytes().all(|b| b.is_ascii_digit())
            && flags.is_none_or(|f| f.len() == 1 && f.as_bytes()[0].is_ascii_digit());
        if !valid {
            return Self::invalid("GCP header");
        }
        Some(Extracted::new(
            from_hex(trace),
            from_dec(span),
            None,
            Some(flags == Some("1")),
        ))
    }

    fn datadog(h: &hyper::HeaderMap) -> Option<Extracted> {
        let names = [
            "x-datadog-trace-id",
            "x-datadog-parent-id",
            "x-datadog-sampling-priority",
        ];
        if !names.iter().any(|n| h.contains_key(*n)) {
            return None;
        }
        let sampled = match header(h, "x-datadog-sampling-priority") {
            Some("1" | "2") => Some(true),
            Some("0" | "-1") => Some(false),
            Some(_) => return Self::invalid("x-datadog-sampling-priority header"),
            None => None,
        };
        let num = |k: &str| header(h, k).and_then(|v| from_dec(v.trim()));
        let trace = num("x-datadog-trace-id");
        let parent = trace.as_ref().and_then(|_| num("x-datadog-parent-id"));
        Some(Extracted::new(trace, parent, None, sampled))
    }

    fn invalid(what: &str) -> Option<Extracted> {
        tracing::warn!("invalid {what}; ignoring.");
        None
    }
}

/// What goes out: the ids of the span the upstream is told about.
#[derive(Debug, Clone)]
struct Outgoing {
    trace_id: [u8; 16],
    trace_id_size: Option<usize>,
    span_id: [u8; 8],
    parent_id: Option<[u8; 8]>,
    sampled: bool,
    debug: bool,
}

impl Outgoing {
    /// The trace id at the size this format takes: the incoming size when allowed, else the
    /// first allowed.
    fn trace_id(&self, allowed: &[usize]) -> Vec<u8> {
        let size = self
            .trace_id_size
            .filter(|s| allowed.contains(s))
            .unwrap_or(allowed[0]);
        self.trace_id[16 - size..].to_vec()
    }

    /// The trace id as `format`'s injector reports it for log entries (b3-single under `b3`).
    fn formatted_trace_id(&self, format: &str) -> (&'static str, String) {
        match format {
            "w3c" => ("w3c", hex::encode(self.trace_id(&[16]))),
            "b3" | "b3-single" => ("b3", hex::encode(self.trace_id(&[16, 8]))),
            "jaeger" => ("jaeger", hex::encode(self.trace_id(&[16, 8]))),
            "ot" => ("ot", hex::encode(self.trace_id(&[8, 16]))),
            "aws" => ("aws", hex::encode(self.trace_id(&[16]))),
            "gcp" => ("gcp", hex::encode(self.trace_id(&[16]))),
            _ => (
                "datadog",
                u64::from_be_bytes(sized::<8>(&self.trace_id(&[8]))).to_string(),
            ),
        }
    }

    /// The headers of `format`.
    fn headers(&self, format: &str) -> Vec<(&'static str, String)> {
        let span = hex::encode(self.span_id);
        let flag = |yes: bool| if yes { "1" } else { "0" };
        match format {
            "w3c" => vec![(
                "traceparent",
                format!(
                    "00-{}-{span}-{}",
                    hex::encode(self.trace_id(&[16])),
                    if self.sampled { "01" } else { "00" }
                ),
            )],
            "b3" => {
                let mut h = vec![
                    ("x-b3-traceid", hex::encode(self.trace_id(&[16, 8]))),
                    ("x-b3-spanid", span),
                ];
                if let Some(p) = self.parent_id {
                    h.push(("x-b3-parentspanid", hex::encode(p)));
                }
                if self.debug {
                    h.push(("x-b3-flags", "1".into()));
                } else {
                    h.push(("x-b3-sampled", flag(self.sampled).into()));
                }
                h
            }
            "b3-single" => {
                let sampled = if self.debug { "d" } else { flag(self.sampled) };
                let mut v = format!("{}-{span}-{sampled}", hex::encode(self.trace_id(&[16, 8])));
                if let Some(p) = self.parent_id {
                    v.push('-');
                    v.push_str(&hex::encode(p));
                }
                vec![("b3", v)]
            }
            "jaeger" => vec![(
                "uber-trace-id",
                format!(
                    "{}:{span}:{}:{}",
                    hex::encode(self.trace_id(&[16, 8])),
                    self.parent_id.map_or("0".into(), hex::encode),
                    if self.sampled { "01" } else { "00" }
                ),
            )],
            "ot" => vec![
                ("ot-tracer-traceid", hex::encode(self.trace_id(&[8, 16]))),
                ("ot-tracer-spanid", span),
                ("ot-tracer-sampled", flag(self.sampled).into()),
            ],
            "aws" => {
                let t = hex::encode(self.trace_id(&[16]));
                vec![(
                    "x-amzn-trace-id",
                    format!(
                        "Root=1-{}-{};Parent={span};Sampled={}",
                        &t[..8],
                        &t[8..],
                        flag(self.sampled)
                    ),
                )]
            }
            "gcp" => vec![(
                "x-cloud-trace-context",
                format!(
                    "{}/{};o={}",
                    hex::encode(self.trace_id(&[16])),
                    u64::from_be_bytes(self.span_id),
                    flag(self.sampled)
                ),
            )],
            "datadog" => {
                let t = self.trace_id(&[8]);
                let t = u64::from_be_bytes(sized::<8>(&t));
                vec![
                    ("x-datadog-trace-id", t.to_string()),
                    (
                        "x-datadog-parent-id",
                        u64::from_be_bytes(self.span_id).to_string(),
                    ),
                    ("x-datadog-sampling-priority", flag(self.sampled).into()),
                ]
            }
            _ => Vec::new(),
        }
    }
}

/// Kong's probability sampler: the trace id's first eight bytes, as a little-endian integer,
/// against `rate` times 2^64.
fn sample(trace_id: &[u8; 16], rate: f64) -> bool {
    if rate >= 1.0 {
        return true;
    }
    if rate <= 0.0 {
        return false;
    }
    let n = u64::from_le_bytes(trace_id[..8].try_into().unwrap_or_default());
    (n as f64) < rate * 18_446_744_073_709_551_616.0
}

fn random<const N: usize>() -> [u8; N] {
    loop {
        let mut id = [0u8; N];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut id);
        if id.iter().any(|b| *b != 0) {
            return id;
        }
    }
}

/// What the access phase decided about a request, for the later phases.
#[derive(Debug, Clone)]
struct Traced {
    trace_id: [u8; 16],
    root: [u8; 8],
    root_parent: Option<[u8; 8]>,
    /// The span id the upstream was told (the balancer's, when it is instrumented).
    balancer: [u8; 8],
    /// The request's own facts, for the request span: made only when the request is sampled
    /// (none: not sampled, nothing is exported).
    facts: Option<Facts>,
}

/// What the request span says of the request.
#[derive(Debug, Clone)]
struct Facts {
    method: String,
    url: String,
    host: String,
    scheme: &'static str,
    flavor: &'static str,
    client_ip: String,
    peer_ip: String,
}

struct OpenTelemetry {
    propagation: Propagation,
    sampling_rate: Option<f64>,
    trace_header: Option<HeaderName>,
    queue_name: String,
    params: queue::Params,
    sender: Arc<dyn Handler>,
    queues: Arc<Queues>,
    tracing: Arc<Tracing>,
}

fn build(at: &Instance, c: &Value, shared: &Shared) -> Result<Arc<dyn Plugin>, CompileError> {
    if c.get("logs_endpoint").is_some_and(|v| !v.is_null()) {
        return Err(CompileError::field(
            "logs_endpoint",
            "Gantry does not send logs over OTLP: set traces_endpoint only",
        ));
    }
    let url = c
        .get("traces_endpoint")
        .and_then(Value::as_str)
        .ok_or_else(|| CompileError::field("traces_endpoint", "required field missing"))?;
    let endpoint = Endpoint::parse(url)
        .map_err(|e| CompileError::field("traces_endpoint", format!("invalid url '{url}': {e}")))?;
    let ms = |k: &str, d: u64| Duration::from_millis(c.get(k).and_then(Value::as_u64).unwrap_or(d));
    let mut params = queue::Params::from_config(c.get("queue"))?;
    // The deprecated batch fields, where they differ from their old defaults.
    if let Some(n) = c.get("batch_span_count").and_then(Value::as_i64) {
        if n != 200 {
            if n < 1 {
                return Err(CompileError::field(
                    "batch_span_count",
                    "must be at least 1",
                ));
            }
            params.max_batch_size = n as usize;
        }
    }
    if let Some(n) = c.get("batch_flush_delay").and_then(Value::as_i64) {
        if n != 3 {
            params.max_coalescing_delay = Duration::from_secs(n.max(0) as u64);
        }
    }
    let mut headers = hyper::HeaderMap::new();
    headers.insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-protobuf"),
    );
    if let Some(extra) = c.get("headers").and_then(Value::as_object) {
        for (k, v) in extra {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| CompileError::field("headers", format!("bad header name '{k}'")))?;
            let value = HeaderValue::from_str(v.as_str().unwrap_or_default()).map_err(|_| {
                CompileError::field("headers", format!("not a valid header value for '{k}'"))
            })?;
            headers.insert(name, value);
        }
    }
    let trace_header = match c
        .get("http_response_header_for_traceid")
        .and_then(Value::as_str)
    {
        Some(h) => Some(HeaderName::from_bytes(h.as_bytes()).map_err(|_| {
            CompileError::field(
                "http_response_header_for_traceid",
                format!("bad header name '{h}'"),
            )
        })?),
        None => None,
    };
    let mut resource = vec![
        ("service.name".to_string(), "kong".to_string()),
        (
            "service.version".to_string(),
            gantry_model::KONG_VERSION.to_string(),
        ),
    ];
    if let Some(attrs) = c.get("resource_attributes").and_then(Value::as_object) {
        for (k, v) in attrs {
            let v = v.as_str().unwrap_or_default().to_string();
            match resource.iter_mut().find(|(name, _)| name == k) {
                Some(slot) => slot.1 = v,
                None => resource.push((k.clone(), v)),
            }
        }
    }
    let tracing = shared.get::<Tracing>();
    let sender = Batches {
        sender: Sender {
            endpoint,
            method: hyper::Method::POST,
            headers,
            connect_timeout: ms("connect_timeout", 1000),
            io_timeout: ms("send_timeout", 5000) + ms("read_timeout", 5000),
            keepalive: Duration::from_secs(60),
            tls: shared.get::<Connectors>(),
            idle: Arc::default(),
        },
        resource,
        tracing: tracing.clone(),
        resource_made: OnceLock::new(),
    };
    Ok(Arc::new(OpenTelemetry {
        propagation: Propagation::from_config(c),
        sampling_rate: c.get("sampling_rate").and_then(Value::as_f64),
        trace_header,
        queue_name: format!("{}:traces", at.id),
        params,
        sender: Arc::new(sender),
        queues: shared.get::<Queues>(),
        tracing,
    }))
}

impl OpenTelemetry {
    fn propagate(&self, ctx: &mut Ctx<'_>) {
        let headers = &ctx.req.headers;
        let (extracted, from) = self
            .propagation
            .extract
            .iter()
            .find_map(|f| Extracted::read(f, headers).map(|x| (x, Some(*f))))
            .unwrap_or_default();
        let trace = ctx.state.get::<Trace>();
        let recording = trace.is_some_and(|t| t.has(spans::REQUEST));
        let balancer_span = trace.is_some_and(|t| t.has(spans::BALANCER));
        let trace_id = extracted.trace_id.unwrap_or_else(random::<16>);
        let root = random::<8>();
        let root_parent = extracted.span_id.or(extracted.parent_id);
        let balancer = if balancer_span && recording {
            random::<8>()
        } else {
            root
        };
        // Kong's get_sampling_decision.
        let sampled = recording
            && extracted.sampled != Some(false)
            && sample(
                &trace_id,
                self.sampling_rate
                    .unwrap_or_else(|| self.tracing.sampling_rate()),
            );
        for name in &self.propagation.clear {
            ctx.req.headers.remove(name);
        }
        let out = Outgoing {
            trace_id,
            trace_id_size: extracted.trace_id_size,
            span_id: balancer,
            parent_id: if balancer == root {
                root_parent
            } else {
                Some(root)
            },
            sampled,
            debug: extracted.debug,
        };
        let mut ids = spans::TraceIds::default();
        for format in &self.propagation.inject {
            let mut format = *format;
            if format == "preserve" {
                format = from.unwrap_or(self.propagation.default_format);
                if format == "b3" && extracted.single {
                    format = "b3-single";
                }
            }
            for (name, value) in out.headers(format) {
                if let Ok(v) = HeaderValue::from_str(&value) {
                    ctx.req.headers.insert(name, v);
                }
            }
            let (key, id) = out.formatted_trace_id(format);
            if !ids.0.iter().any(|(k, _)| *k == key) {
                ids.0.push((key, id));
            }
        }
        if !ids.0.is_empty() {
            ctx.state.insert(ids);
        }
        let facts = sampled.then(|| Facts::of(ctx));
        ctx.state.insert(Traced {
            trace_id,
            root,
            root_parent,
            balancer,
            facts,
        });
    }

    /// The spans of a sampled request.
    fn spans(&self, r: &RequestLog<'_>, t: &Traced, f: &Facts) -> Vec<Span> {
        let now = Instant::now();
        let wall = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        let at =
            |i: Instant| wall.saturating_sub(now.saturating_duration_since(i).as_nanos() as u64);
        let start = at(r.started);
        let end = at(r.started + r.total);
        let recorded = r.state.get::<Trace>();
        let mut root_attrs = vec![
            kv("http.method", str_value(&f.method)),
            kv("http.url", str_value(&f.url)),
            kv("http.host", str_value(&f.host)),
            kv("http.scheme", str_value(f.scheme)),
            kv("http.flavor", str_value(f.flavor)),
            kv("http.client_ip", str_value(&f.client_ip)),
            kv("net.peer.ip", str_value(&f.peer_ip)),
            kv("kong.request.id", str_value(r.request_id)),
            kv(
                "http.status_code",
                any_value::Value::IntValue(r.status as i64),
            ),
        ];
        root_attrs.push(kv(
            "http.route",
            str_value(recorded.and_then(|x| x.route_path.as_deref()).unwrap_or("")),
        ));
        let child = |name: String, kind: span::SpanKind, from: u64, to: u64| Span {
            trace_id: t.trace_id.to_vec(),
            span_id: random::<8>().to_vec(),
            parent_span_id: t.root.to_vec(),
            name,
            kind: kind as i32,
            start_time_unix_nano: from,
            end_time_unix_nano: to,
            ..Span::default()
        };
        let mut out = vec![Span {
            trace_id: t.trace_id.to_vec(),
            span_id: t.root.to_vec(),
            parent_span_id: t.root_parent.map(|p| p.to_vec()).unwrap_or_default(),
            name: "kong".into(),
            kind: span::SpanKind::Server as i32,
            start_time_unix_nano: start,
            end_time_unix_nano: end,
            attributes: root_attrs,
            ..Span::default()
        }];
        let Some(rec) = recorded else {
            return out;
        };
        if let Some((a, b)) = rec.router {
            out.push(child(
                "kong.router".into(),
                span::SpanKind::Internal,
                at(a),
                at(b),
            ));
        }
        for p in &rec.phases {
            out.push(child(
                format!("kong.{}.plugin.{}", p.phase, p.plugin),
                span::SpanKind::Internal,
                at(p.start),
                at(p.end),
            ));
        }
        let tries = rec.tries.lock().map(|t| t.clone()).unwrap_or_default();
        let last = tries.len();
        for (i, try_) in tries.iter().enumerate() {
            let (host, port) = crate::server::split_host(&try_.target);
            let mut s = child(
                "kong.balancer".into(),
                span::SpanKind::Client,
                at(try_.start),
                try_.failed_at.map_or(end, at),
            );
            if i + 1 == last && try_.failed_at.is_none() {
                s.span_id = t.balancer.to_vec();
            }
            s.attributes.push(kv(
                "try_count",
                any_value::Value::DoubleValue((i + 1) as f64),
            ));
            if host.parse::<std::net::IpAddr>().is_ok() {
                s.attributes.push(kv("net.peer.ip", str_value(host)));
            } else {
                s.attributes.push(kv("net.peer.name", str_value(host)));
            }
            if let Some(p) = port {
                s.attributes
                    .push(kv("net.peer.port", any_value::Value::DoubleValue(p as f64)));
            }
            if try_.failed_at.is_some() {
                s.status = Some(Status {
                    code: status::StatusCode::Error as i32,
                    ..Status::default()
                });
            }
            out.push(s);
        }
        out
    }
}

impl Facts {
    fn of(ctx: &Ctx<'_>) -> Facts {
        let req = &ctx.req;
        let host = req
            .headers
            .get(hyper::header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(|h| crate::server::split_host(h).0.to_string())
            .unwrap_or_default();
        let scheme = if ctx.https { "https" } else { "http" };
        let target = req.uri.path_and_query().map_or("/", |p| p.as_str());
        let flavor = match req.version {
            hyper::Version::HTTP_10 => "1.0",
            hyper::Version::HTTP_2 => "2.0",
            hyper::Version::HTTP_3 => "3.0",
            _ => "1.1",
        };
        Facts {
            method: req.method.to_string(),
            url: format!("{scheme}://{host}{target}"),
            host,
            scheme,
            flavor,
            client_ip: ctx.client_ip.to_string(),
            peer_ip: ctx.peer_ip.to_string(),
        }
    }
}

fn str_value(s: &str) -> any_value::Value {
    any_value::Value::StringValue(s.to_string())
}

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        ..KeyValue::default()
    }
}

impl Plugin for OpenTelemetry {
    fn access<'a>(&'a self, ctx: &'a mut Ctx<'_>) -> Flow<'a> {
        self.propagate(ctx);
        Flow::Next
    }

    fn header_filter_with(
        &self,
        response: &mut hyper::http::response::Parts,
        state: &mut hyper::http::Extensions,
    ) {
        if let (Some(name), Some(t)) = (&self.trace_header, state.get::<Traced>()) {
            if let Ok(v) = HeaderValue::from_str(&hex::encode(t.trace_id)) {
                response.headers.append(name.clone(), v);
            }
        }
    }

    fn logs(&self) -> bool {
        true
    }

    fn log(&self, r: &RequestLog<'_>) -> Option<BoxFuture<'static, ()>> {
        let t = r.state.get::<Traced>()?;
        for s in self.spans(r, t, t.facts.as_ref()?) {
            self.queues.enqueue(
                "opentelemetry",
                &self.queue_name,
                &self.params,
                &self.sender,
                Bytes::from(s.encode_to_vec()),
            );
        }
        None
    }
}

/// Sends a batch of spans as one OTLP request.
struct Batches {
    sender: Sender,
    /// `service.name`, `service.version` and `resource_attributes`; the node id is added
    /// when the first batch goes (it is known by then).
    resource: Vec<(String, String)>,
    tracing: Arc<Tracing>,
    resource_made: OnceLock<Resource>,
}

impl Batches {
    fn resource(&self) -> &Resource {
        self.resource_made.get_or_init(|| {
            let mut attrs = self.resource.clone();
            if !attrs.iter().any(|(k, _)| k == "service.instance.id") {
                if let Some(id) = self.tracing.node_id() {
                    attrs.insert(1, ("service.instance.id".into(), id.to_string()));
                }
            }
            Resource {
                attributes: attrs.iter().map(|(k, v)| kv(k, str_value(v))).collect(),
                ..Resource::default()
            }
        })
    }

    /// The request body for a batch of encoded spans.
    fn payload(&self, batch: &[Bytes]) -> Bytes {
        let spans = batch
            .iter()
            .filter_map(|b| Span::decode(b.as_ref()).ok())
            .collect();
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(self.resource().clone()),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "kong-internal".into(),
                        version: "0.1.0".into(),
                        ..InstrumentationScope::default()
                    }),
                    spans,
                    ..ScopeSpans::default()
                }],
                ..ResourceSpans::default()
            }],
        };
        Bytes::from(request.encode_to_vec())
    }
}

impl Handler for Batches {
    fn send(self: Arc<Self>, batch: Arc<[Bytes]>) -> BoxFuture<'static, Result<(), SendFailed>> {
        Box::pin(async move { self.sender.post(self.payload(&batch)).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> hyper::HeaderMap {
        let mut h = hyper::HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn w3c_in_and_out() {
        let h = headers(&[(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )]);
        let x = Extracted::read("w3c", &h).unwrap();
        assert_eq!(
            hex::encode(x.trace_id.unwrap()),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert_eq!(hex::encode(x.span_id.unwrap()), "b7ad6b7169203331");
        assert_eq!(x.sampled, Some(true));
        for bad in [
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "00-0af7-b7ad6b7169203331-01",
            "garbage",
        ] {
            assert_eq!(
                Extracted::read("w3c", &headers(&[("traceparent", bad)])),
                None,
                "{bad}"
            );
        }
        let out = Outgoing {
            trace_id: x.trace_id.unwrap(),
            trace_id_size: x.trace_id_size,
            span_id: [1; 8],
            parent_id: Some([2; 8]),
            sampled: false,
            debug: false,
        };
        assert_eq!(
            out.headers("w3c"),
            vec![(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-0101010101010101-00".to_string()
            )]
        );
    }

    #[test]
    fn b3_single_and_multiple() {
        let x = Extracted::read(
            "b3",
            &headers(&[(
                "b3",
                "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90",
            )]),
        )
        .unwrap();
        assert!(x.single);
        assert_eq!(x.sampled, Some(true));
        assert_eq!(hex::encode(x.parent_id.unwrap()), "05e3ac9a4f6e3b90");
        // A 64-bit trace id goes out at 64 bits.
        let x = Extracted::read(
            "b3",
            &headers(&[
                ("x-b3-traceid", "a3ce929d0e0e4736"),
                ("x-b3-spanid", "00f067aa0ba902b7"),
                ("x-b3-flags", "1"),
            ]),
        )
        .unwrap();
        assert_eq!(x.trace_id_size, Some(8));
        assert!(x.debug && !x.single);
        let out = Outgoing {
            trace_id: x.trace_id.unwrap(),
            trace_id_size: x.trace_id_size,
            span_id: [0xab; 8],
            parent_id: None,
            sampled: true,
            debug: true,
        };
        assert_eq!(
            out.headers("b3"),
            vec![
                ("x-b3-traceid", "a3ce929d0e0e4736".to_string()),
                ("x-b3-spanid", "abababababababab".to_string()),
                ("x-b3-flags", "1".to_string()),
            ]
        );
        assert_eq!(
            out.headers("b3-single"),
            vec![("b3", "a3ce929d0e0e4736-abababababababab-d".to_string())]
        );
        assert_eq!(Extracted::read("b3", &headers(&[("x", "y")])), None);
    }

    #[test]
    fn other_formats_round_trip() {
        let out = Outgoing {
            trace_id: sized::<16>(&hex::decode("5759e988bd862e3fe1be46a994272793").unwrap()),
            trace_id_size: None,
            span_id: sized::<8>(&hex::decode("53995c3f42cd8ad8").unwrap()),
            parent_id: None,
            sampled: true,
            debug: false,
        };
        for format in ["jaeger", "ot", "aws", "gcp", "datadog"] {
            let h = out.headers(format);
            let h = headers(&h.iter().map(|(k, v)| (*k, v.as_str())).collect::<Vec<_>>());
            let x = Extracted::read(format, &h).unwrap_or_else(|| panic!("{format}: {h:?}"));
            assert_eq!(x.span_id, Some(out.span_id), "{format}");
            assert_eq!(x.sampled, Some(true), "{format}");
            let expected = if matches!(format, "datadog" | "ot") {
                // Datadog's ids are 64-bit, and ot's too unless the trace id came longer: the
                // trace id's last eight bytes.
                sized::<16>(&out.trace_id[8..])
            } else {
                out.trace_id
            };
            assert_eq!(x.trace_id, Some(expected), "{format}");
        }
        assert_eq!(
            out.headers("aws")[0].1,
            "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"
        );
        assert_eq!(
            out.headers("gcp")[0].1,
            format!(
                "5759e988bd862e3fe1be46a994272793/{};o=1",
                0x53995c3f42cd8ad8u64
            )
        );
    }

    #[test]
    fn header_type_and_propagation_as_kong_reads_them() {
        let p = Propagation::from_config(
            &json!({"header_type": "preserve", "propagation": {"default_format": "w3c"}}),
        );
        assert_eq!(p.extract, EVERY_FORMAT.to_vec());
        assert_eq!(p.inject, vec!["preserve"]);
        let p = Propagation::from_config(
            &json!({"header_type": "ignore", "propagation": {"default_format": "b3"}}),
        );
        assert_eq!((p.extract.len(), p.inject.clone()), (0, vec!["b3"]));
        let p = Propagation::from_config(
            &json!({"header_type": "jaeger", "propagation": {"default_format": "w3c"}}),
        );
        assert_eq!(p.inject, vec!["preserve", "jaeger"]);
        let p = Propagation::from_config(
            &json!({"header_type": "preserve", "propagation": {"extract": ["w3c"], "inject": ["b3"], "clear": ["traceparent"], "default_format": "w3c"}}),
        );
        assert_eq!((p.extract, p.inject), (vec!["w3c"], vec!["b3"]));
        assert_eq!(p.clear, vec![HeaderName::from_static("traceparent")]);
    }

    #[test]
    fn sampling_by_trace_id() {
        let mut id = [0u8; 16];
        assert!(sample(&id, 0.5));
        id[7] = 0x80; // 2^63 as a little-endian u64: not below half of 2^64
        assert!(!sample(&id, 0.5));
        assert!(sample(&id, 1.0));
        assert!(!sample(&[0; 16], 0.0));
    }
}
