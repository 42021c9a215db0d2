//! Log files: size-based rotation (the error log and the access log), and the proxy's access
//! log, written by a thread of its own so that the request path never waits on the disk.

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use crate::{LogSink, RequestLog};

/// A log file that rotates once it would pass `max` bytes: `f` becomes `f.1`, `f.1` becomes
/// `f.2`, ..., keeping `keep` old files.
pub struct Rotating {
    path: PathBuf,
    file: File,
    size: u64,
    max: u64,
    keep: usize,
}

impl Rotating {
    pub fn open(path: &Path, max: u64, keep: usize) -> io::Result<Rotating> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(Rotating {
            path: path.to_path_buf(),
            file,
            size,
            max: max.max(1),
            keep: keep.max(1),
        })
    }

    fn rotate(&mut self) -> io::Result<()> {
        let name = |i: usize| PathBuf::from(format!("{}.{i}", self.path.display()));
        let _ = std::fs::remove_file(name(self.keep));
        for i in (1..self.keep).rev() {
            let _ = std::fs::rename(name(i), name(i + 1));
        }
        std::fs::rename(&self.path, name(1))?;
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

impl Write for Rotating {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.size > 0 && self.size + buf.len() as u64 > self.max {
            self.rotate()?;
        }
        let n = self.file.write(buf)?;
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// The most bytes of lines a thread keeps waiting for the writer; lines past it are dropped
/// and counted.
const MAX_PENDING: usize = 4 << 20;
/// How long the writer waits between rounds while lines come.
const ROUND: Duration = Duration::from_millis(10);

/// The proxy's access log: one line per request, written by a thread of its own so that the
/// request path never waits on the disk. Each thread that logs appends to a buffer of its own
/// (no lock shared between workers, no allocation and no wake-up per line); the writer takes
/// the buffers whole every few milliseconds while lines come, and sleeps when none do (the
/// first line after that wakes it). A thread's lines keep their order; lines past
/// [`MAX_PENDING`] waiting bytes are dropped and counted.
pub struct AccessLog {
    shared: Arc<Shared>,
    json: bool,
}

struct Shared {
    /// Tells this log's buffers from another's in a thread's list.
    id: usize,
    /// Every thread's buffer.
    buffers: Mutex<Vec<Buffer>>,
    out: Mutex<BufWriter<Rotating>>,
    /// The writer sleeps until a line comes.
    idle: AtomicBool,
    closed: AtomicBool,
    writer: OnceLock<std::thread::Thread>,
    dropped: AtomicU64,
}

/// A thread's lines waiting for the writer.
type Buffer = Arc<Mutex<Vec<u8>>>;

/// Every access log started, for [`flush_all`].
static LOGS: Mutex<Vec<Weak<Shared>>> = Mutex::new(Vec::new());

thread_local! {
    /// This thread's buffer in each access log it wrote to: (the log's id, the buffer).
    static MINE: RefCell<Vec<(usize, Buffer)>> = const { RefCell::new(Vec::new()) };
    /// The current second and its RFC 3339 text up to the seconds.
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

/// Write what every access log holds, now: before the process exits.
pub fn flush_all() {
    let logs: Vec<_> = lock(&LOGS).iter().filter_map(Weak::upgrade).collect();
    for log in logs {
        log.write_out();
    }
}

/// A lock, taken even when another holder panicked (a log line is not worth stopping for).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    /// Write every buffer's lines; whether there were any.
    fn write_out(&self) -> bool {
        let buffers = lock(&self.buffers).clone();
        let mut out = lock(&self.out);
        let mut spare = Vec::new();
        let mut wrote = false;
        for b in &buffers {
            std::mem::swap(&mut *lock(b), &mut spare);
            if !spare.is_empty() {
                let _ = out.write_all(&spare);
                wrote = true;
                spare.clear();
            }
            // The emptied buffer goes back (with its room) when the thread's is empty still.
            let mut mine = lock(b);
            if mine.is_empty() {
                std::mem::swap(&mut *mine, &mut spare);
            }
        }
        let _ = out.flush();
        wrote
    }

    fn pending(&self) -> bool {
        lock(&self.buffers).iter().any(|b| !lock(b).is_empty())
    }

    fn run(self: Arc<Self>) {
        loop {
            if self.write_out() {
                std::thread::park_timeout(ROUND);
                continue;
            }
            if self.closed.load(Ordering::Acquire) {
                return;
            }
            // Asleep until a line comes: a line appended before `idle` is set is seen here.
            self.idle.store(true, Ordering::SeqCst);
            if self.pending() || self.closed.load(Ordering::Acquire) {
                self.idle.store(false, Ordering::SeqCst);
                continue;
            }
            std::thread::park();
            self.idle.store(false, Ordering::SeqCst);
        }
    }

    /// Append a line to this thread's buffer, made by `line`.
    fn append(self: &Arc<Self>, line: impl FnOnce(&mut Vec<u8>)) {
        let buffer = MINE.with_borrow_mut(|mine| {
            if let Some((_, b)) = mine.iter().find(|(id, _)| *id == self.id) {
                return b.clone();
            }
            // Buffers of logs gone (held by this thread alone) are let go.
            mine.retain(|(_, b)| Arc::strong_count(b) > 1);
            let b = Arc::new(Mutex::new(Vec::with_capacity(16 << 10)));
            lock(&self.buffers).push(b.clone());
            mine.push((self.id, b.clone()));
            b
        });
        {
            let mut b = lock(&buffer);
            if b.len() >= MAX_PENDING {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            line(&mut b);
        }
        if self.idle.load(Ordering::SeqCst) && self.idle.swap(false, Ordering::SeqCst) {
            if let Some(w) = self.writer.get() {
                w.unpark();
            }
        }
    }
}

impl AccessLog {
    pub fn start(path: &Path, max: u64, keep: usize, json: bool) -> io::Result<Arc<AccessLog>> {
        static IDS: AtomicUsize = AtomicUsize::new(0);
        let out = BufWriter::with_capacity(64 << 10, Rotating::open(path, max, keep)?);
        let shared = Arc::new(Shared {
            id: IDS.fetch_add(1, Ordering::Relaxed),
            buffers: Mutex::new(Vec::new()),
            out: Mutex::new(out),
            idle: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            writer: OnceLock::new(),
            dropped: AtomicU64::new(0),
        });
        let writer = shared.clone();
        let handle = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || writer.run())?;
        let _ = shared.writer.set(handle.thread().clone());
        let mut logs = lock(&LOGS);
        logs.retain(|l| l.strong_count() > 0);
        logs.push(Arc::downgrade(&shared));
        Ok(Arc::new(AccessLog { shared, json }))
    }

    /// Lines dropped because the writer fell behind.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    fn line(&self, r: &RequestLog<'_>, out: &mut Vec<u8>) {
        if self.json {
            let total = r.total.as_secs_f64() * 1000.0;
            let upstream = r.upstream.map(|u| u.as_secs_f64() * 1000.0);
            #[derive(serde::Serialize)]
            struct Latencies {
                total_ms: f64,
                upstream_ms: Option<f64>,
            }
            #[derive(serde::Serialize)]
            struct Line<'a> {
                time: &'a str,
                request_id: &'a str,
                client_ip: std::net::IpAddr,
                method: &'a str,
                #[serde(serialize_with = "shown")]
                uri: &'a hyper::Uri,
                status: u16,
                latencies: Latencies,
                service: Option<&'a str>,
                route: Option<&'a str>,
                consumer: Option<&'a str>,
            }
            with_now(|now| {
                let line = Line {
                    time: now,
                    request_id: r.request_id,
                    client_ip: r.client,
                    method: r.method.as_str(),
                    uri: r.uri,
                    status: r.status,
                    latencies: Latencies {
                        total_ms: total,
                        upstream_ms: upstream,
                    },
                    service: r.service,
                    route: r.route,
                    consumer: r.consumer,
                };
                let _ = serde_json::to_writer(&mut *out, &line);
            });
            out.push(b'\n');
        } else {
            let push = |out: &mut Vec<u8>, parts: &[&[u8]]| {
                for p in parts {
                    out.extend_from_slice(p);
                }
            };
            match r.client {
                // Formatting machinery costs more than the line's other fields together.
                std::net::IpAddr::V4(ip) => {
                    for (i, octet) in ip.octets().into_iter().enumerate() {
                        if i > 0 {
                            out.push(b'.');
                        }
                        number(out, u64::from(octet));
                    }
                }
                std::net::IpAddr::V6(ip) => {
                    let _ = write!(out, "{ip}");
                }
            }
            with_now(|now| push(out, &[b" - - [", now.as_bytes(), b"] \""]));
            push(out, &[r.method.as_str().as_bytes(), b" "]);
            match r.uri.path_and_query() {
                // The usual target, origin-form: as it is.
                Some(p) if r.uri.authority().is_none() => {
                    out.extend_from_slice(p.as_str().as_bytes())
                }
                _ => {
                    let _ = write!(out, "{}", r.uri);
                }
            }
            out.extend_from_slice(b"\" ");
            number(out, u64::from(r.status));
            out.push(b' ');
            millis(out, r.total);
            out.extend_from_slice(b"ms upstream=");
            match r.upstream {
                Some(u) => {
                    millis(out, u);
                    out.extend_from_slice(b"ms");
                }
                None => out.push(b'-'),
            }
            push(
                out,
                &[
                    b" request_id=",
                    r.request_id.as_bytes(),
                    b" route=",
                    r.route.unwrap_or("-").as_bytes(),
                    b" service=",
                    r.service.unwrap_or("-").as_bytes(),
                    b" consumer=",
                    r.consumer.unwrap_or("-").as_bytes(),
                    b"\n",
                ],
            );
        }
    }
}

/// `n` in decimal.
fn number(out: &mut Vec<u8>, n: u64) {
    let (digits, len) = crate::names::itoa_buf(n);
    out.extend_from_slice(&digits[20 - len..]);
}

/// `d` in milliseconds with three decimals (rounded to the microsecond).
fn millis(out: &mut Vec<u8>, d: Duration) {
    let micros = u64::try_from((d.as_nanos() + 500) / 1000).unwrap_or(u64::MAX);
    number(out, micros / 1000);
    let frac = micros % 1000;
    out.extend_from_slice(&[
        b'.',
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ]);
}

/// A value as its `Display` shows it, into JSON.
fn shown<T: std::fmt::Display, S: serde::Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.write_out();
        if let Some(w) = self.shared.writer.get() {
            w.unpark();
        }
    }
}

impl LogSink for AccessLog {
    fn log(&self, r: &RequestLog<'_>) {
        self.shared.append(|out| self.line(r, out));
    }

    /// As nginx logs a request it could not parse: `"-"` for the request line.
    fn refused(&self, client: std::net::IpAddr, status: u16, reason: &str) {
        self.shared.append(|out| {
            with_now(|now| {
                if self.json {
                    let line = serde_json::json!({
                        "time": now,
                        "client_ip": client.to_string(),
                        "status": status,
                        "refused": reason,
                    });
                    let _ = serde_json::to_writer(&mut *out, &line);
                    out.push(b'\n');
                } else {
                    let _ = writeln!(
                        out,
                        "{client} - - [{now}] \"-\" {status} refused={reason:?}"
                    );
                }
            })
        });
    }
}

/// Now, in RFC 3339 (UTC, the fraction of a second without its trailing zeros), given to `f`.
/// The date and time up to the second are made once a second per thread.
fn with_now<R>(f: impl FnOnce(&str) -> R) -> R {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    SECOND.with_borrow_mut(|cache| {
        let at = stamp(now, cache);
        let r = f(&cache.1);
        cache.1.truncate(at);
        r
    })
}

/// The instant `now` (since the Unix epoch) in RFC 3339, into `cache.1`, which holds its
/// second's text up to the seconds when `cache.0` is that second (else it is made). Returns the
/// length of that text (the fraction and `Z` follow).
fn stamp(now: Duration, cache: &mut (u64, String)) -> usize {
    let (second, text) = cache;
    if *second != now.as_secs() {
        *second = now.as_secs();
        text.clear();
        let t = i64::try_from(now.as_secs())
            .ok()
            .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
        let whole = t
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        // Without its `Z`.
        text.push_str(whole.trim_end_matches('Z'));
    }
    let at = text.len();
    let mut nanos = now.subsec_nanos();
    if nanos != 0 {
        let mut digits = 9;
        while nanos.is_multiple_of(10) {
            nanos /= 10;
            digits -= 1;
        }
        let (buf, len) = crate::names::itoa_buf(u64::from(nanos));
        text.push('.');
        for _ in len..digits {
            text.push('0');
        }
        text.push_str(std::str::from_utf8(&buf[20 - len..]).unwrap_or_default());
    }
    text.push('Z');
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cached second and the fraction made by hand are the `time` crate's RFC 3339 text.
    #[test]
    fn stamps_are_rfc3339() {
        let mut cache = (u64::MAX, String::new());
        for (secs, nanos) in [
            (0, 0),
            (1_796_680_800, 0),
            (1_796_680_800, 5),
            (1_796_680_800, 120_000_000),
            (1_796_680_801, 123_456_789),
            (1_796_680_801, 100),
            (1_796_680_801, 999_999_999),
            (4_102_444_799, 10),
        ] {
            let now = Duration::new(secs, nanos);
            let at = stamp(now, &mut cache);
            let want = (time::OffsetDateTime::UNIX_EPOCH + now)
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap();
            assert_eq!(cache.1, want, "{secs}.{nanos}");
            cache.1.truncate(at);
        }
    }

    /// A line says what it said when `format!` made it.
    #[test]
    fn text_lines() {
        let dir = tempfile::tempdir().unwrap();
        let log = AccessLog::start(&dir.path().join("a.log"), 1 << 20, 1, false).unwrap();
        let state = Default::default();
        let method = hyper::Method::PATCH;
        for (uri, total, upstream, names) in [
            ("/a/b?c=d", 1_234_567, Some(999_499), Some("x")),
            ("http://h:8000/p", 12, None, None),
            ("*", 7_000_000_000, Some(0), Some("y")),
        ] {
            let uri: hyper::Uri = uri.parse().unwrap();
            let r = RequestLog {
                request_id: "0123456789abcdef01234567",
                client: "::1".parse().unwrap(),
                service: names,
                route: names,
                status: 502,
                total: Duration::from_nanos(total),
                upstream: upstream.map(Duration::from_nanos),
                ..RequestLog::new(&method, &uri, &state)
            };
            let mut out = Vec::new();
            log.line(&r, &mut out);
            let text = String::from_utf8(out).unwrap();
            let (_, after) = text.split_once("] ").unwrap();
            let ms = |d: Duration| format!("{:.3}ms", d.as_secs_f64() * 1000.0);
            assert_eq!(
                after,
                format!(
                    "\"{method} {uri}\" 502 {} upstream={} request_id={} route={} service={} consumer=-\n",
                    ms(r.total),
                    r.upstream.map_or("-".into(), ms),
                    r.request_id,
                    names.unwrap_or("-"),
                    names.unwrap_or("-"),
                )
            );
            assert!(text.starts_with("::1 - - [2"), "{text}");
        }
        for ip in ["0.0.0.0", "10.200.3.45", "255.255.255.255", "2001:db8::1"] {
            let uri = hyper::Uri::from_static("/");
            let r = RequestLog {
                client: ip.parse().unwrap(),
                ..RequestLog::new(&method, &uri, &state)
            };
            let mut out = Vec::new();
            log.line(&r, &mut out);
            assert!(out.starts_with(format!("{ip} - - [").as_bytes()), "{ip}");
        }
    }

    /// A JSON line has the fields, in the order, that `json!` gave it.
    #[test]
    fn json_lines() {
        let dir = tempfile::tempdir().unwrap();
        let log = AccessLog::start(&dir.path().join("a.log"), 1 << 20, 1, true).unwrap();
        let state = Default::default();
        let (method, uri) = (hyper::Method::GET, hyper::Uri::from_static("/x?y=1"));
        for upstream in [None, Some(Duration::from_micros(1500))] {
            let r = RequestLog {
                request_id: "id",
                service: Some("s"),
                status: 404,
                total: Duration::from_micros(2345),
                upstream,
                ..RequestLog::new(&method, &uri, &state)
            };
            let mut out = Vec::new();
            log.line(&r, &mut out);
            let line: serde_json::Value = serde_json::from_slice(&out).unwrap();
            let time = line["time"].as_str().unwrap().to_string();
            let want = serde_json::json!({
                "time": time,
                "request_id": "id",
                "client_ip": "127.0.0.1",
                "method": "GET",
                "uri": "/x?y=1",
                "status": 404,
                "latencies": {
                    "total_ms": r.total.as_secs_f64() * 1000.0,
                    "upstream_ms": upstream.map(|u| u.as_secs_f64() * 1000.0),
                },
                "service": "s",
                "route": null,
                "consumer": null,
            });
            assert_eq!(String::from_utf8(out).unwrap(), format!("{want}\n"));
        }
    }

    /// Lines from several threads all reach the file, each thread's in order, and a log that
    /// is dropped writes what it holds.
    #[test]
    fn lines_from_threads_reach_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("access.log");
        let log = AccessLog::start(&p, 1 << 30, 1, false).unwrap();
        std::thread::scope(|s| {
            for t in 0..4 {
                let log = &log;
                s.spawn(move || {
                    for i in 0..500 {
                        log.shared.append(|out| {
                            let _ = writeln!(out, "{t} {i}");
                        });
                    }
                });
            }
        });
        drop(log);
        let text = std::fs::read_to_string(&p).unwrap();
        let mut next = [0; 4];
        for line in text.lines() {
            let (t, i) = line.split_once(' ').unwrap();
            let (t, i): (usize, i32) = (t.parse().unwrap(), i.parse().unwrap());
            assert_eq!(next[t], i, "thread {t}'s lines out of order");
            next[t] += 1;
        }
        assert_eq!(next, [500; 4]);
    }

    #[test]
    fn rotation_keeps_the_newest_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.log");
        let mut r = Rotating::open(&p, 10, 2).unwrap();
        for i in 0..5 {
            r.write_all(format!("line {i}\n").as_bytes()).unwrap();
        }
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "line 4\n");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("x.log.1")).unwrap(),
            "line 3\n"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("x.log.2")).unwrap(),
            "line 2\n"
        );
        assert!(!dir.path().join("x.log.3").exists());
    }
}
