//! A data plane's request analytics: collected from the proxy's log phase and sent to the
//! control plane.
//!
//! - [`Collector`] (data plane): the proxy's log sink. Aggregates requests per minute, service,
//!   route, consumer and status, with latency histograms, in a buffer bounded by
//!   `analytics_buffer_size_limit` requests; requests past it are dropped and counted.
//! - [`send`] (data plane): every `analytics_flush_interval`, moves the collected rows into a
//!   numbered batch and sends batches in order over mTLS to `cluster_telemetry_endpoint`; a batch
//!   leaves the buffer only when the control plane acknowledged it. No sending with an expired
//!   certificate.
//!
//! The messages are `gantry_protocol::telemetry`'s; the control plane's endpoint, which merges
//! each batch into the store once, is `gantry_cp::telemetry`.

mod collect;
pub mod send;

pub use collect::Collector;

pub use gantry_protocol::telemetry::{Msg, PATH};
