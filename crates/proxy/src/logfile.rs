//! Log files: size-based rotation (the error log and the access log), and the proxy's access
//! log, written by a thread of its own so that the request path never waits on the disk.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;

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

/// The proxy's access log: one line per request, written by a thread of its own so that the
/// request path only formats and queues; lines that find the queue full are dropped and counted.
pub struct AccessLog {
    tx: SyncSender<String>,
    json: bool,
    pub dropped: AtomicU64,
}

impl AccessLog {
    pub fn start(path: &Path, max: u64, keep: usize, json: bool) -> io::Result<Arc<AccessLog>> {
        let mut out = BufWriter::new(Rotating::open(path, max, keep)?);
        let (tx, rx) = sync_channel::<String>(65_536);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                while let Ok(line) = rx.recv() {
                    let _ = out.write_all(line.as_bytes());
                    while let Ok(more) = rx.try_recv() {
                        let _ = out.write_all(more.as_bytes());
                    }
                    let _ = out.flush();
                }
            })?;
        Ok(Arc::new(AccessLog {
            tx,
            json,
            dropped: AtomicU64::new(0),
        }))
    }

    fn line(&self, r: &RequestLog<'_>) -> String {
        let now = now();
        let total = r.total.as_secs_f64() * 1000.0;
        let upstream = r.upstream.map(|u| u.as_secs_f64() * 1000.0);
        if self.json {
            let mut s = serde_json::json!({
                "time": now,
                "request_id": r.request_id,
                "client_ip": r.client.to_string(),
                "method": r.method.as_str(),
                "uri": r.uri.to_string(),
                "status": r.status,
                "latencies": {"total_ms": total, "upstream_ms": upstream},
                "service": r.service,
                "route": r.route,
                "consumer": r.consumer,
            })
            .to_string();
            s.push('\n');
            s
        } else {
            format!(
                "{} - - [{now}] \"{} {}\" {} {total:.3}ms upstream={} request_id={} route={} service={} consumer={}\n",
                r.client,
                r.method,
                r.uri,
                r.status,
                upstream.map(|u| format!("{u:.3}ms")).unwrap_or_else(|| "-".into()),
                r.request_id,
                r.route.unwrap_or("-"),
                r.service.unwrap_or("-"),
                r.consumer.unwrap_or("-"),
            )
        }
    }
}

impl AccessLog {
    fn send(&self, line: String) {
        match self.tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl LogSink for AccessLog {
    fn log(&self, r: &RequestLog<'_>) {
        self.send(self.line(r));
    }

    /// As nginx logs a request it could not parse: `"-"` for the request line.
    fn refused(&self, client: std::net::IpAddr, status: u16, reason: &str) {
        let now = now();
        let line = if self.json {
            let mut s = serde_json::json!({
                "time": now,
                "client_ip": client.to_string(),
                "status": status,
                "refused": reason,
            })
            .to_string();
            s.push('\n');
            s
        } else {
            format!("{client} - - [{now}] \"-\" {status} refused={reason:?}\n")
        };
        self.send(line);
    }
}

fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

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
