//! Gantry's proxy engine.
//!
//! - [`router`]: Kong's route matching and priorities, compiled off the request path.
//! - [`uri`]: request path normalisation and Kong's upstream path rules.
//! - [`snapshot`]: the immutable running configuration (router, services, balancers), rebuilt
//!   aside and swapped atomically; parts whose hash did not change are reused.
//! - [`server`]: listeners and forwarding.

pub mod balancer;
pub mod dns;
pub mod downstream;
pub mod echo;
pub mod error;
mod exchange;
mod forward;
pub mod h1;
pub mod health;
pub mod logfile;
pub mod names;
mod pipeline;
pub mod plugins;
pub mod pool;
pub mod probe;
pub mod proxy_protocol;
pub mod raw;
pub mod redis;
pub mod router;
pub mod server;
pub mod snapshot;
pub mod spans;
pub mod status;
pub mod tls;
pub mod trust;
pub mod upstream_tls;
pub mod uri;
pub mod vault;

/// The hash map of the request path's lookups (ids, hosts, keys from the configuration):
/// foldhash, seeded per process, several times faster than SipHash on short keys.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// A persistent map: a copy costs O(1) and a change O(log n), so that an index of a new
/// configuration is the last one patched with what changed.
pub(crate) type PMap<K, V> =
    imbl::GenericHashMap<K, V, foldhash::fast::RandomState, imbl::shared_ptr::DefaultSharedPtr>;

pub use server::{Headers, LogDetails, LogSink, MetricsSource, Proxy, RequestLog};
pub use snapshot::{Snapshot, SnapshotError};
