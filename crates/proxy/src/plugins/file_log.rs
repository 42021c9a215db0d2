//! file-log: one JSON line per request appended to a file (the log phase), as Kong's.
//!
//! The request path only formats the line and queues it; a thread of the plugin's own writes
//! the file, so a slow disk never holds a request. With `reuse = false` (Kong's default) the
//! file is opened for each batch of lines, so a file moved away by log rotation is recreated;
//! with `reuse = true` it stays open. Lines past a full queue are dropped and counted.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;

use serde_json::{json, Value};

use gantry_model::plugins::*;
use gantry_model::schema::*;

use super::{Descriptor, Instance, Plugin, Shared};
use crate::server::RequestLog;

/// Lines waiting for the writer, at most.
const QUEUE: usize = 10_000;

struct FileLog {
    path: String,
    queue: SyncSender<String>,
    dropped: AtomicU64,
}

pub static DESCRIPTOR: Descriptor = Descriptor::new(schema, build);

fn schema() -> PluginSchema {
    PluginSchema::new(
        "file-log",
        9,
        vec![
            Field::new("path", string()).req(),
            Field::new("reuse", boolean()).req().def(json!(false)),
            Field::new("custom_fields_by_lua", map(string())),
        ],
    )
    .any_protocol()
    .no_consumer_group()
    .checks(|c, e| {
        let path = c.get("path").and_then(Value::as_str).unwrap_or_default();
        if path
            .chars()
            .any(|ch| matches!(ch, '*' | '&' | '%' | '`' | '\0'))
        {
            e.add("path", "not a valid filename");
        }
        refuse_lua_fields(c, e);
    })
}

fn build(_: &Instance, c: &Value, _: &Shared) -> Result<Arc<dyn Plugin>, CompileError> {
    let path = c
        .get("path")
        .and_then(Value::as_str)
        .filter(|p| !p.is_empty())
        .ok_or("config.path is required")?
        .to_string();
    let reuse = c.get("reuse").and_then(Value::as_bool).unwrap_or(false);
    let (queue, lines) = sync_channel(QUEUE);
    let file = path.clone();
    std::thread::Builder::new()
        .name("file-log".into())
        .spawn(move || write_lines(&file, reuse, lines))
        .map_err(|e| format!("cannot start the file-log writer: {e}"))?;
    Ok(Arc::new(FileLog {
        path,
        queue,
        dropped: AtomicU64::new(0),
    }))
}

fn open(path: &str) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

/// Write queued lines until the plugin is dropped (its configuration replaced or removed).
fn write_lines(path: &str, reuse: bool, lines: Receiver<String>) {
    let mut kept: Option<std::fs::File> = None;
    let mut failing = false;
    while let Ok(first) = lines.recv() {
        // Everything queued so far goes in one write.
        let mut batch = first;
        while let Ok(more) = lines.try_recv() {
            batch.push_str(&more);
        }
        let file = match kept.take() {
            Some(f) => Ok(f),
            None => open(path),
        };
        let written = file.and_then(|mut f| {
            f.write_all(batch.as_bytes())?;
            if reuse {
                kept = Some(f);
            }
            Ok(())
        });
        match written {
            Err(e) if !failing => {
                failing = true;
                tracing::error!(path, error = %e, "file-log cannot write its file: lines are lost until it can");
            }
            Ok(()) if failing => {
                failing = false;
                tracing::info!(path, "file-log writes its file again");
            }
            _ => {}
        }
    }
}

impl Plugin for FileLog {
    fn logs(&self) -> bool {
        true
    }

    fn log(&self, r: &RequestLog<'_>) -> Option<super::BoxFuture<'static, ()>> {
        let mut line = super::serialize::entry(r);
        line.push('\n');
        match self.queue.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_power_of_two() {
                    tracing::warn!(path = %self.path, dropped = n, "file-log queue full: lines dropped");
                }
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_reach_the_file_in_order() {
        let dir = std::env::temp_dir().join(format!("gantry-file-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("requests.log");
        let p = build(
            &Instance::new("p"),
            &json!({ "path": path.to_str().unwrap() }),
            &Shared::default(),
        )
        .expect("builds");
        let (method, uri) = (
            hyper::Method::POST,
            "/a?b=1&flag".parse::<hyper::Uri>().unwrap(),
        );
        let state = hyper::http::Extensions::default();
        let mut details = crate::server::LogDetails::default();
        details
            .request_headers
            .insert("authorization", "Basic c2VjcmV0".parse().unwrap());
        details
            .request_headers
            .append("x-multi", "1".parse().unwrap());
        details
            .request_headers
            .append("x-multi", "2".parse().unwrap());
        details
            .response_headers
            .insert("content-type", "text/plain".parse().unwrap());
        details.upstream_uri = Some("/up/a?b=1&flag".into());
        for status in [200, 401] {
            p.log(&RequestLog {
                request_id: "r1",
                client: std::net::IpAddr::from([10, 0, 0, 1]),
                service: Some("s1"),
                route: Some("r1"),
                status,
                total: std::time::Duration::from_millis(12),
                upstream: (status == 200).then(|| std::time::Duration::from_millis(10)),
                response_size: 5,
                details: Some(&details),
                ..RequestLog::new(&method, &uri, &state)
            });
        }
        drop(p); // the writer drains its queue and stops
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let lines = loop {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if text.lines().count() == 2 || std::time::Instant::now() > deadline {
                break text;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        let got: Vec<Value> = lines
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(got.len(), 2, "{lines}");
        assert_eq!(got[0]["request"]["uri"], "/a?b=1&flag");
        assert_eq!(
            got[0]["request"]["querystring"],
            json!({"b": "1", "flag": true})
        );
        assert_eq!(
            got[0]["request"]["headers"],
            json!({"authorization": "REDACTED", "x-multi": ["1", "2"]})
        );
        assert_eq!(got[0]["response"]["headers"]["content-type"], "text/plain");
        assert_eq!(got[0]["response"]["size"], 5);
        assert_eq!(got[0]["upstream_uri"], "/up/a?b=1&flag");
        assert_eq!(got[0]["response"]["status"], 200);
        assert_eq!(
            got[0]["latencies"],
            json!({"request": 12, "proxy": 10, "kong": 2})
        );
        assert_eq!(got[0]["route"]["id"], "r1");
        assert_eq!(got[0]["source"], "upstream");
        assert_eq!(got[1]["response"]["status"], 401);
        assert_eq!(got[1]["source"], "kong");
        assert_eq!(got[1]["consumer"], Value::Null);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
