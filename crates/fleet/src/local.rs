//! The `local` provider: data planes as processes on the control plane's host.
//!
//! A region is the address the group serves on, `HOST:PORT`. Every node of the group listens
//! there with `reuseport`, so the kernel spreads connections over them, and a node that drains
//! hands its queued connections to the others (`net.ipv4.tcp_migrate_req`): that is what lets
//! a rolling upgrade and a scale-in lose no request. Versions are the gantry binaries that
//! `install.sh` puts in the versions directory (`<dir>/<version>/gantry`); this binary's own
//! version needs none.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::provider::{workers, BoxFuture, Node, NodeSpec, Provider, ProviderError};

pub struct Local {
    /// Where installed versions live.
    pub versions_dir: PathBuf,
    /// Where the nodes' prefixes go: `<home>/<group>/<node>`.
    pub home: PathBuf,
    /// This binary, and the version it is.
    pub own_exe: PathBuf,
    pub own_version: String,
    /// The host the nodes dial the control plane at.
    pub cluster_host: String,
}

/// A region as an address: `HOST:PORT`, the host an IP address or `localhost`.
pub(crate) fn region_addr(region: &str) -> Result<SocketAddr, ProviderError> {
    let bad = || {
        ProviderError::Region(format!(
            "the local provider's region is the address the group serves on, HOST:PORT (e.g. 127.0.0.1:8000); '{region}' is not one"
        ))
    };
    if let Some(port) = region.strip_prefix("localhost:") {
        let port: u16 = port.parse().map_err(|_| bad())?;
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    let addr: SocketAddr = region.parse().map_err(|_| bad())?;
    if addr.port() == 0 {
        return Err(bad());
    }
    Ok(addr)
}

/// Whether an address is reachable only from a private network (or this host).
fn private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_private() || v4.is_link_local(),
        IpAddr::V6(v6) => v6.is_loopback() || (v6.segments()[0] & 0xfe00) == 0xfc00,
    }
}

pub(crate) fn check_region(region: &str, api_access: &str) -> Result<(), ProviderError> {
    let addr = region_addr(region)?;
    if api_access == "private" && !private(addr.ip()) {
        return Err(ProviderError::Unsupported(format!(
            "api_access is private, and region {region} is a public address: give a loopback or private address, or set api_access to public"
        )));
    }
    Ok(())
}

/// The versions installed for data planes on this host: `own` (this binary's) and each
/// `<versions_dir>/<version>/gantry`, newest first.
pub fn installed_versions(versions_dir: &std::path::Path, own: &str) -> Vec<String> {
    let mut found: Vec<String> = std::fs::read_dir(versions_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join("gantry").is_file())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|v| gantry_model::compat::Version::parse(v).is_some())
        .collect();
    found.push(own.to_string());
    found.sort_by_key(|v| std::cmp::Reverse(gantry_model::compat::Version::parse(v)));
    found.dedup();
    found
}

impl Local {
    fn binary(&self, version: &str) -> Result<PathBuf, ProviderError> {
        if version == self.own_version {
            return Ok(self.own_exe.clone());
        }
        let bin = self.versions_dir.join(version).join("gantry");
        if bin.is_file() {
            Ok(bin)
        } else {
            Err(ProviderError::Version(format!(
                "gantry {version} is not installed for the local provider (no {}); install it with: install.sh --version {version}",
                bin.display()
            )))
        }
    }
}

/// A free port on loopback for a node's status listener.
pub(crate) fn free_port() -> Result<u16, ProviderError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| ProviderError::Run(format!("no free port for a status listener: {e}")))
}

impl Provider for Local {
    fn check_region<'a>(
        &'a self,
        region: &'a str,
        api_access: &'a str,
    ) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(async move { check_region(region, api_access) })
    }

    fn check_version(&self, version: &str) -> BoxFuture<'_, Result<(), ProviderError>> {
        let r = self.binary(version).map(|_| ());
        Box::pin(async move { r })
    }

    fn start<'a>(
        &'a self,
        group: &'a str,
        region: &'a str,
        spec: NodeSpec,
    ) -> BoxFuture<'a, Result<Box<dyn Node>, ProviderError>> {
        Box::pin(async move {
            let exe = self.binary(&spec.version)?;
            let addr = region_addr(region)?;
            let prefix = self.home.join(group).join(&spec.name);
            let run = |e: std::io::Error| {
                ProviderError::Run(format!("cannot prepare {}: {e}", prefix.display()))
            };
            std::fs::create_dir_all(&prefix).map_err(run)?;
            let status = format!("127.0.0.1:{}", free_port()?);
            let console = std::fs::File::create(prefix.join("console.log")).map_err(run)?;
            let mut cmd = tokio::process::Command::new(&exe);
            cmd.arg("start").arg("-p").arg(&prefix);
            for (k, _) in std::env::vars() {
                if k.starts_with("KONG_") || k.starts_with("GANTRY_") {
                    cmd.env_remove(k);
                }
            }
            cmd.envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .env("KONG_PROXY_LISTEN", format!("{addr} reuseport"))
                .env("KONG_STATUS_LISTEN", &status)
                .env("KONG_NODE_ID", &spec.node_id)
                .env(
                    "KONG_CLUSTER_CONTROL_PLANE",
                    format!("{}:{}", self.cluster_host, spec.cluster_port),
                )
                .env(
                    "KONG_CLUSTER_TELEMETRY_ENDPOINT",
                    format!("{}:{}", self.cluster_host, spec.telemetry_port),
                )
                .env(
                    "KONG_WORKER_THREADS",
                    workers(&spec.instance_type).to_string(),
                )
                .stdin(std::process::Stdio::null())
                .stdout(console.try_clone().map_err(run)?)
                .stderr(console)
                // Its own process group: a Ctrl-C meant for the control plane does not reach
                // it; the control plane drains it.
                .process_group(0);
            let child = cmd
                .spawn()
                .map_err(|e| ProviderError::Run(format!("cannot start {}: {e}", exe.display())))?;
            let pid = child.id().unwrap_or(0) as i32;
            Ok(Box::new(LocalNode {
                proc: Proc::Child(child),
                pid,
                prefix,
                status,
                address: addr.to_string(),
            }) as Box<dyn Node>)
        })
    }

    fn leftovers<'a>(&'a self, group: &'a str) -> BoxFuture<'a, Vec<Box<dyn Node>>> {
        Box::pin(async move {
            let mut found: Vec<Box<dyn Node>> = Vec::new();
            let Ok(dir) = std::fs::read_dir(self.home.join(group)) else {
                return found;
            };
            for entry in dir.flatten() {
                let prefix = entry.path();
                let Some(pid) = std::fs::read_to_string(prefix.join("pids/gantry.pid"))
                    .ok()
                    .and_then(|s| s.trim().parse::<i32>().ok())
                else {
                    continue;
                };
                if !alive(pid) {
                    continue;
                }
                found.push(Box::new(LocalNode {
                    proc: Proc::Pid,
                    pid,
                    prefix,
                    status: String::new(),
                    address: String::new(),
                }));
            }
            found
        })
    }
}

fn alive(pid: i32) -> bool {
    pid > 0 && Path::new(&format!("/proc/{pid}")).exists() && {
        // A zombie is gone for our purposes.
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
            .unwrap_or(false)
    }
}

enum Proc {
    Child(tokio::process::Child),
    /// A node a previous control plane started: known by its pid only.
    Pid,
}

struct LocalNode {
    proc: Proc,
    pid: i32,
    prefix: PathBuf,
    status: String,
    address: String,
}

impl Node for LocalNode {
    fn status_addr(&self) -> String {
        self.status.clone()
    }

    fn address(&self) -> String {
        self.address.clone()
    }

    fn exited(&mut self) -> BoxFuture<'_, Option<String>> {
        Box::pin(async move {
            match &mut self.proc {
                Proc::Child(c) => match c.try_wait() {
                    Ok(Some(status)) => Some(format!("the node exited ({status})")),
                    Ok(None) => None,
                    Err(e) => Some(format!("cannot watch the node: {e}")),
                },
                Proc::Pid => (!alive(self.pid)).then(|| "the node exited".to_string()),
            }
        })
    }

    fn drain(&mut self, grace: Duration) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if self.pid <= 0 {
                return;
            }
            let pid = Pid::from_raw(self.pid);
            let _ = kill(pid, Signal::SIGQUIT);
            let deadline = tokio::time::Instant::now() + grace;
            match &mut self.proc {
                Proc::Child(c) => {
                    if tokio::time::timeout_at(deadline, c.wait()).await.is_err() {
                        let _ = c.kill().await;
                    }
                }
                Proc::Pid => {
                    while alive(self.pid) && tokio::time::Instant::now() < deadline {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    if alive(self.pid) {
                        let _ = kill(pid, Signal::SIGKILL);
                    }
                }
            }
        })
    }

    fn last_words(&self) -> BoxFuture<'_, String> {
        Box::pin(async move {
            let text = std::fs::read_to_string(self.prefix.join("console.log")).unwrap_or_default();
            crate::provider::last_lines(&text)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_are_addresses_and_private_access_needs_a_private_one() {
        let l = Local {
            versions_dir: PathBuf::from("/nonexistent"),
            home: PathBuf::from("/nonexistent"),
            own_exe: PathBuf::from("/bin/true"),
            own_version: "1.0.0".into(),
            cluster_host: "127.0.0.1".into(),
        };
        assert!(check_region("127.0.0.1:8000", "private").is_ok());
        assert!(check_region("localhost:8000", "private").is_ok());
        assert!(check_region("10.1.2.3:80", "private").is_ok());
        assert!(check_region("8.8.8.8:80", "private").is_err());
        assert!(check_region("8.8.8.8:80", "public").is_ok());
        for bad in ["us-east-2", "127.0.0.1", "127.0.0.1:0", "host:80"] {
            assert!(check_region(bad, "public").is_err(), "{bad}");
        }
        assert!(l.binary("1.0.0").is_ok());
        let e = l.binary("9.9.9").unwrap_err().to_string();
        assert!(e.contains("install.sh --version 9.9.9"), "{e}");
    }
}
