//! The data plane's configuration cache: a snapshot file plus a log of the deltas applied
//! since, so that a change costs an appended record, not a rewritten configuration.
//!
//! - `PATH` (`config.cache.json.gz`): gzip'd JSON `{format, version, hash, entities}`, written
//!   atomically (a temporary file, synced, renamed over the old one).
//! - `PATH.deltas`: one JSON record a line, `{from, version, hash, changes}`, each appended and
//!   synced after the delta it records was applied. Once the log holds [`COMPACT_RECORDS`]
//!   records, or more bytes than the snapshot (and 64 KiB), the snapshot is rewritten and the
//!   log emptied.
//!
//! The snapshot stores each entity with its digest (`[digest, entity]`), so that a start reads
//! entities as text and parses none of them until the proxy builds from them. Reading checks
//! the gzip stream (its CRC) and the digests against the recorded hash (a damaged snapshot is
//! refused whole), then
//! replays the records that follow its version, each checked against the hash it recorded.
//! A record cut short by a crash, or one that does not check, ends the replay there: what
//! loads is the last version that this data plane applied and checked.
//!
//! The writes run on a thread of their own, in order, off the path that acknowledges a
//! configuration to the control plane.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use gantry_model::delta::Change;
use gantry_model::hash::Digests;
use gantry_model::{Config, Entity};
use serde::{Deserialize, Serialize};

use gantry_protocol as proto;

/// The snapshot's format: a file of another format (an older Gantry's) is not read.
const FORMAT: u32 = 3;

/// Records in the delta log before the snapshot is rewritten.
pub const COMPACT_RECORDS: usize = 256;

/// A log smaller than this is not compacted for its size alone (a small snapshot would be
/// rewritten every other change).
const COMPACT_FLOOR: u64 = 64 * 1024;

/// Why the cache cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error(
        "{path}: content hash {actual} does not match the recorded {recorded}; the file is damaged"
    )]
    Damaged {
        path: PathBuf,
        actual: String,
        recorded: String,
    },
}

#[derive(Deserialize)]
struct Snapshot {
    #[serde(default)]
    format: u32,
    version: i64,
    hash: String,
    entities: std::collections::BTreeMap<String, Vec<Digested>>,
}

/// An entity with its digest, as the snapshot stores it: `["<32 hex digits>", {...}]`.
struct Digested(Entity);

/// [`Digested`] as written, borrowing its entity.
struct DigestedRef<'a>(&'a str, &'a Entity);

impl Serialize for DigestedRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (format!("{:032x}", self.1.digest(self.0)), self.1).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Digested {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (digest, entity): (String, Entity) = Deserialize::deserialize(d)?;
        let digest = u128::from_str_radix(&digest, 16).map_err(serde::de::Error::custom)?;
        Ok(Digested(entity.with_digest(digest)))
    }
}

#[derive(Serialize, Deserialize)]
struct Record {
    from: i64,
    version: i64,
    hash: String,
    changes: Vec<Change>,
}

/// What the cache holds: the configuration, its digests, version and hash.
pub struct Loaded {
    pub config: Config,
    pub digests: Digests,
    pub version: i64,
    pub hash: String,
    /// Delta records replayed on top of the snapshot.
    pub replayed: usize,
    /// Why the replay stopped before the log's end, if it did.
    pub stopped: Option<String>,
    /// The snapshot file's size and the delta log's, for the writer's compaction rule.
    snapshot_bytes: u64,
    log_bytes: u64,
}

/// The delta log beside the snapshot at `path`.
pub fn deltas_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".deltas");
    PathBuf::from(p)
}

/// Read the cache at `path`: `None` when there is none.
pub fn read(path: &Path) -> Result<Option<Loaded>, CacheError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(CacheError::Read {
                path: path.into(),
                source,
            })
        }
    };
    let invalid = |reason: String| CacheError::Invalid {
        path: path.into(),
        reason,
    };
    let started = std::time::Instant::now();
    let s: Snapshot =
        proto::decode(true, &bytes, usize::MAX / 2).map_err(|e| invalid(e.to_string()))?;
    let decoded = started.elapsed();
    if s.format != FORMAT {
        return Err(invalid(format!(
            "written in cache format {} (this Gantry reads {FORMAT}); the control plane will send the configuration",
            s.format
        )));
    }
    let mut config = Config {
        entities: s
            .entities
            .into_iter()
            .map(|(k, v)| (k, v.into_iter().map(|d| d.0).collect()))
            .collect(),
    };
    config.sort();
    let mut digests = Digests::of(&config);
    tracing::debug!(
        decode_ms = decoded.as_secs_f64() * 1e3,
        digests_ms = (started.elapsed() - decoded).as_secs_f64() * 1e3,
        "configuration cache snapshot read"
    );
    let actual = digests.hashes().config;
    if actual != s.hash {
        return Err(CacheError::Damaged {
            path: path.into(),
            actual,
            recorded: s.hash,
        });
    }
    let mut loaded = Loaded {
        config,
        digests: Digests::default(),
        version: s.version,
        hash: s.hash,
        replayed: 0,
        stopped: None,
        snapshot_bytes: bytes.len() as u64,
        log_bytes: 0,
    };
    let log = deltas_path(path);
    let file = match std::fs::File::open(&log) {
        Ok(f) => {
            loaded.log_bytes = f.metadata().map(|m| m.len()).unwrap_or(0);
            Some(f)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => return Err(CacheError::Read { path: log, source }),
    };
    for (n, line) in file
        .map(std::io::BufReader::new)
        .into_iter()
        .flat_map(|r| r.lines())
        .enumerate()
    {
        let stop = |why: String| Some(format!("{}: record {}: {why}", log.display(), n + 1));
        let line = match line {
            Ok(l) => l,
            Err(e) => {
                loaded.stopped = stop(e.to_string());
                break;
            }
        };
        let r: Record = match serde_json::from_str(&line) {
            Ok(r) => r,
            Err(e) => {
                loaded.stopped = stop(format!("unreadable ({e}), cut short by a crash?"));
                break;
            }
        };
        // Records older than the snapshot: a crash came between the snapshot's rename and
        // the log's truncation.
        if r.version <= loaded.version {
            continue;
        }
        if r.from != loaded.version {
            loaded.stopped = stop(format!(
                "leads from version {} but the cache is at {}",
                r.from, loaded.version
            ));
            break;
        }
        let mut next = loaded.config.clone();
        let mut d = digests.clone();
        if let Err(e) = next.apply_tracked(&r.changes, &mut d) {
            loaded.stopped = stop(e.to_string());
            break;
        }
        let h = d.hashes().config;
        if h != r.hash {
            loaded.stopped = stop(format!(
                "hashes to {h}, {} recorded; the log is damaged",
                r.hash
            ));
            break;
        }
        (loaded.config, digests) = (next, d);
        loaded.version = r.version;
        loaded.hash = r.hash;
        loaded.replayed += 1;
    }
    loaded.digests = digests;
    Ok(Some(loaded))
}

/// Write a snapshot atomically and empty the delta log. Returns the snapshot's size.
pub fn write_snapshot(
    path: &Path,
    config: &Config,
    version: i64,
    hash: &str,
) -> Result<u64, CacheError> {
    // Serialised from borrowed entities: no copy of the configuration.
    #[derive(Serialize)]
    struct Out<'a> {
        format: u32,
        version: i64,
        hash: &'a str,
        entities: std::collections::BTreeMap<&'a str, Vec<DigestedRef<'a>>>,
    }
    let tmp = path.with_extension("tmp");
    let werr = |p: &Path| {
        let p = p.to_path_buf();
        move |source| CacheError::Write { path: p, source }
    };
    // Owner-only: the cache holds certificate keys and credentials.
    let f = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(werr(&tmp))?
    };
    {
        // A temporary file left by an older Gantry keeps its mode when reopened.
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(werr(&tmp))?;
    }
    let mut gz =
        flate2::write::GzEncoder::new(std::io::BufWriter::new(f), flate2::Compression::fast());
    serde_json::to_writer(
        &mut gz,
        &Out {
            format: FORMAT,
            version,
            hash,
            entities: config
                .entities
                .iter()
                .map(|(k, v)| (k.as_str(), v.iter().map(|e| DigestedRef(k, e)).collect()))
                .collect(),
        },
    )
    .map_err(|e| CacheError::Write {
        path: tmp.clone(),
        source: e.into(),
    })?;
    let f = gz
        .finish()
        .map_err(werr(&tmp))?
        .into_inner()
        .map_err(|e| CacheError::Write {
            path: tmp.clone(),
            source: e.into_error(),
        })?;
    f.sync_all().map_err(werr(&tmp))?;
    let size = f.metadata().map(|m| m.len()).unwrap_or(0);
    std::fs::rename(&tmp, path).map_err(werr(path))?;
    // The records are all older than the snapshot now.
    let log = deltas_path(path);
    match std::fs::remove_file(&log) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(CacheError::Write { path: log, source }),
    }
    Ok(size)
}

/// Append one record to the delta log and sync it. Returns the bytes appended.
fn append(
    path: &Path,
    from: i64,
    version: i64,
    hash: &str,
    changes: &[Change],
) -> Result<u64, CacheError> {
    #[derive(Serialize)]
    struct Out<'a> {
        from: i64,
        version: i64,
        hash: &'a str,
        changes: &'a [Change],
    }
    let log = deltas_path(path);
    let mut line = serde_json::to_vec(&Out {
        from,
        version,
        hash,
        changes,
    })
    .map_err(|e| CacheError::Write {
        path: log.clone(),
        source: e.into(),
    })?;
    line.push(b'\n');
    let werr = |source| CacheError::Write {
        path: log.clone(),
        source,
    };
    let mut f = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&log)
            .map_err(werr)?
    };
    f.write_all(&line).map_err(werr)?;
    f.sync_data().map_err(werr)?;
    Ok(line.len() as u64)
}

/// One thing for the writer to record.
pub enum Save {
    /// The whole configuration (shares its documents with the running one).
    Snapshot {
        config: Config,
        version: i64,
        hash: String,
    },
    /// A delta applied on top of the last thing saved.
    Delta {
        from: i64,
        version: i64,
        hash: String,
        changes: Arc<Vec<Change>>,
    },
}

/// The cache writer: a thread that records what it is sent, in order.
pub struct Writer {
    tx: std::sync::Mutex<Option<std::sync::mpsc::Sender<Save>>>,
    thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Writer {
    /// Start a writer for the cache at `path`; `loaded` is what the cache holds now (the
    /// writer goes on from it).
    pub fn start(path: PathBuf, loaded: Option<&Loaded>) -> Writer {
        let (tx, rx) = std::sync::mpsc::channel::<Save>();
        let files = match loaded {
            Some(l) => Files {
                held: Some((l.config.clone(), l.version)),
                records: l.replayed,
                log_bytes: l.log_bytes,
                snapshot_bytes: l.snapshot_bytes,
            },
            None => Files::default(),
        };
        // A log whose replay stopped early has a torn or damaged record at its end: a record
        // appended after it would never be read. It is folded into a new snapshot first.
        let rewrite = loaded
            .filter(|l| l.stopped.is_some())
            .map(|l| l.hash.clone());
        let thread = std::thread::Builder::new()
            .name("gantry-cache".into())
            .spawn(move || writer(path, files, rewrite, rx))
            .ok();
        Writer {
            tx: std::sync::Mutex::new(Some(tx)),
            thread: std::sync::Mutex::new(thread),
        }
    }

    pub fn send(&self, s: Save) {
        if let Some(tx) = self.tx.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            let _ = tx.send(s);
        }
    }

    /// Write whatever is queued, then stop.
    pub fn finish(&self) {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.finish();
    }
}

/// What the cache files hold, as the writer knows it.
#[derive(Default)]
struct Files {
    /// The writer's own copy of the configuration the files hold (documents shared with the
    /// proxy's), to compact from; `None` until a snapshot is written, when deltas cannot be
    /// recorded.
    held: Option<(Config, i64)>,
    records: usize,
    log_bytes: u64,
    snapshot_bytes: u64,
}

impl Files {
    /// Write the held configuration as the snapshot, emptying the log.
    fn rewrite(&mut self, path: &Path, hash: &str) {
        let Some((config, version)) = &self.held else {
            return;
        };
        match write_snapshot(path, config, *version, hash) {
            Ok(n) => (self.snapshot_bytes, self.records, self.log_bytes) = (n, 0, 0),
            Err(e) => {
                tracing::error!("cannot write the configuration cache: {e}");
                // Tried again on the next change.
                self.records = COMPACT_RECORDS;
            }
        }
    }

    fn record(&mut self, path: &Path, from: i64, version: i64, hash: &str, changes: &[Change]) {
        let Some((config, at)) = self.held.as_mut() else {
            return;
        };
        if *at != from || config.apply(changes).is_err() {
            // Not on top of what the files hold: nothing recorded until a snapshot.
            self.held = None;
            return;
        }
        *at = version;
        if self.records + 1 >= COMPACT_RECORDS
            || self.log_bytes > self.snapshot_bytes.max(COMPACT_FLOOR)
        {
            return self.rewrite(path, hash);
        }
        match append(path, from, version, hash, changes) {
            Ok(n) => (self.records, self.log_bytes) = (self.records + 1, self.log_bytes + n),
            Err(e) => {
                tracing::error!("cannot write the configuration cache: {e}");
                // A record half written ends the log: the next change rewrites the snapshot.
                self.records = COMPACT_RECORDS;
            }
        }
    }
}

fn writer(
    path: PathBuf,
    mut files: Files,
    rewrite: Option<String>,
    rx: std::sync::mpsc::Receiver<Save>,
) {
    if let Some(hash) = rewrite {
        files.rewrite(&path, &hash);
    }
    while let Ok(s) = rx.recv() {
        match s {
            Save::Snapshot {
                config,
                version,
                hash,
            } => {
                files.held = Some((config, version));
                files.rewrite(&path, &hash);
            }
            Save::Delta {
                from,
                version,
                hash,
                changes,
            } => files.record(&path, from, version, &hash, &changes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc(v: serde_json::Value) -> Entity {
        Entity::new(v.as_object().unwrap())
    }

    fn upsert(id: &str, host: &str) -> Change {
        Change::Upsert {
            entity: "services".into(),
            doc: doc(json!({"id": id, "host": host})),
        }
    }

    fn hash_of(c: &Config) -> String {
        gantry_model::hash::hash_config(c).config
    }

    /// A writer on a new cache at `path` holding the empty configuration as version 0.
    fn empty_cache(path: &Path) -> (Writer, Config) {
        let config = Config::default();
        let w = Writer::start(path.to_path_buf(), None);
        w.send(Save::Snapshot {
            config: config.clone(),
            version: 0,
            hash: hash_of(&config),
        });
        (w, config)
    }

    /// Apply `c` to `config` as version `v` and have `w` record it.
    fn record(w: &Writer, config: &mut Config, v: i64, c: Change) {
        config.apply(std::slice::from_ref(&c)).unwrap();
        w.send(Save::Delta {
            from: v - 1,
            version: v,
            hash: hash_of(config),
            changes: Arc::new(vec![c]),
        });
    }

    #[test]
    fn a_snapshot_and_its_deltas_load_as_the_last_version_applied() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.cache.json.gz");
        assert!(read(&path).unwrap().is_none());
        let mut config = Config::default();
        config.apply(&[upsert("a", "a")]).unwrap();
        let w = Writer::start(path.clone(), None);
        w.send(Save::Snapshot {
            config: config.clone(),
            version: 1,
            hash: hash_of(&config),
        });
        for (v, c) in [(2, upsert("b", "b")), (3, upsert("a", "a2"))] {
            record(&w, &mut config, v, c);
        }
        w.finish();
        let l = read(&path).unwrap().unwrap();
        assert_eq!((l.version, l.replayed, l.stopped), (3, 2, None));
        assert_eq!(l.config, config);
        assert_eq!(l.hash, hash_of(&config));
        assert_eq!(l.digests, Digests::of(&config));

        // A record cut short by a crash: the version before it loads.
        let log = deltas_path(&path);
        let text = std::fs::read_to_string(&log).unwrap();
        std::fs::write(&log, &text[..text.len() - 10]).unwrap();
        let l = read(&path).unwrap().unwrap();
        assert_eq!((l.version, l.replayed), (2, 1));
        assert!(l.stopped.unwrap().contains("record 2: unreadable"));

        // A record whose content does not match its hash stops the replay.
        let bad = text.replacen("\"a2\"", "\"zz\"", 1);
        std::fs::write(&log, bad).unwrap();
        let l = read(&path).unwrap().unwrap();
        assert_eq!(l.version, 2);
        assert!(l.stopped.unwrap().contains("the log is damaged"));

        // A damaged snapshot is refused whole.
        let mut other = config.clone();
        other.apply(&[upsert("c", "c")]).unwrap();
        write_snapshot(&path, &other, 9, &hash_of(&config)).unwrap();
        assert!(!log.exists(), "a snapshot empties the log");
        assert!(matches!(read(&path), Err(CacheError::Damaged { .. })));
        std::fs::write(&path, b"junk").unwrap();
        assert!(matches!(read(&path), Err(CacheError::Invalid { .. })));
    }

    /// A writer started on a log whose replay stopped at a torn record rewrites the snapshot
    /// first, so that what it records next is read back.
    #[test]
    fn a_torn_log_is_folded_into_a_snapshot_before_more_is_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.json.gz");
        let (w, mut config) = empty_cache(&path);
        record(&w, &mut config, 1, upsert("a", "a"));
        w.finish();
        let log = deltas_path(&path);
        let text = std::fs::read_to_string(&log).unwrap();
        std::fs::write(&log, format!("{text}{{\"from\": 1, \"vers")).unwrap();
        let l = read(&path).unwrap().unwrap();
        assert_eq!(l.version, 1);
        assert!(l.stopped.is_some());
        let w = Writer::start(path.clone(), Some(&l));
        record(&w, &mut config, 2, upsert("b", "b"));
        w.finish();
        let l = read(&path).unwrap().unwrap();
        assert_eq!((l.version, l.stopped), (2, None));
        assert_eq!(l.config, config);
    }

    /// The cache holds certificate keys and credentials: its files are the owner's alone
    /// (issue 17's item 6).
    #[test]
    fn cache_files_are_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.json.gz");
        let (w, mut config) = empty_cache(&path);
        record(&w, &mut config, 1, upsert("a", "a"));
        w.finish();
        for p in [path.clone(), deltas_path(&path)] {
            let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", p.display());
        }
    }

    #[test]
    fn the_log_is_compacted_into_the_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.json.gz");
        let (w, mut config) = empty_cache(&path);
        let n = COMPACT_RECORDS as i64 + 10;
        for v in 1..=n {
            record(&w, &mut config, v, upsert(&format!("s{v}"), "h"));
        }
        w.finish();
        let lines = std::fs::read_to_string(deltas_path(&path))
            .map(|t| t.lines().count())
            .unwrap_or(0);
        assert!(lines < COMPACT_RECORDS, "{lines} records left in the log");
        let l = read(&path).unwrap().unwrap();
        assert_eq!((l.version, l.stopped), (n, None));
        assert_eq!(l.config, config);
    }
}
