//! The `docker` provider: data planes as containers of the `gantry:VERSION` image, through the
//! Docker Engine API of the daemon on this host (`DOCKER_HOST` if it is a `unix://` address,
//! else `/var/run/docker.sock`).
//!
//! A region is the name of an existing Docker bridge network. Each node is a container on it,
//! serving on its own address there (`IP:8000`, status on `IP:8100`); no port is published, so
//! a group is reached only on that network and `api_access` must be `private`. The nodes dial
//! the control plane at the network's gateway, which on a bridge network is this host: the
//! control plane's cluster and telemetry listeners must listen on that address (or on all).
//! A version is an image `gantry:VERSION` the daemon has (`dist/image.sh VERSION` builds it).
//!
//! The daemon is reached lazily, on first use, and the client then speaks the API version the
//! daemon offers (`negotiate_version`): a control plane starts without a daemon, and this
//! provider then refuses configurations saying why. Containers have no restart policy and are
//! not auto-removed, so that an exited node's code and last lines can still be read; a drained
//! node's container is removed. Every container carries its group in a label, which is how
//! `leftovers` finds what an earlier run of the control plane left behind.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use bollard::errors::Error as DockerError;
use bollard::models::{ContainerCreateBody, ContainerInspectResponse, HostConfig, IpamConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, KillContainerOptionsBuilder, ListContainersOptionsBuilder,
    LogsOptionsBuilder, RemoveContainerOptionsBuilder,
};
use bollard::Docker as Client;
use futures_util::StreamExt;

use crate::provider::{last_lines, workers, BoxFuture, Node, NodeSpec, Provider, ProviderError};

/// The ports a node listens on, on its own address.
const PROXY_PORT: u16 = 8000;
const STATUS_PORT: u16 = 8100;
/// The label that names a container's group.
const GROUP_LABEL: &str = "gantry.managed-group";
/// A request to the daemon that takes longer has failed (bollard's default is 2 minutes).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The `docker` provider. Connects to the daemon on first use.
pub struct Docker {
    client: tokio::sync::OnceCell<Client>,
    /// Where containers in the host's network namespace dial the control plane.
    host_cluster: String,
}

/// Where a group's containers run: on a bridge network, or in the host's network namespace
/// sharing one address (`host:ADDR:PORT`) with `reuseport`, as the local provider's nodes do.
enum Target<'a> {
    Bridge(&'a str),
    Host(std::net::SocketAddr),
}

fn target(region: &str) -> Result<Target<'_>, ProviderError> {
    match region.strip_prefix("host:") {
        Some(addr) => crate::local::region_addr(addr).map(Target::Host),
        None => Ok(Target::Bridge(region)),
    }
}

impl Docker {
    /// `host_cluster`: the host containers on the host's network dial the control plane at.
    pub fn new(host_cluster: String) -> Docker {
        Docker {
            client: tokio::sync::OnceCell::new(),
            host_cluster,
        }
    }

    /// The daemon's client. A failure is not remembered: a daemon started later is found.
    async fn client(&self) -> Result<&Client, ProviderError> {
        self.client
            .get_or_try_init(|| async {
                match Client::connect_with_local_defaults() {
                    Ok(c) => c.with_timeout(REQUEST_TIMEOUT).negotiate_version().await,
                    Err(e) => Err(e),
                }
            })
            .await
            .map_err(|e| {
                ProviderError::Run(format!(
                    "the docker provider cannot reach a Docker daemon (DOCKER_HOST or /var/run/docker.sock): {e}"
                ))
            })
    }
}

/// What the daemon said, without bollard's wrapping.
fn said(e: &DockerError) -> String {
    match e {
        DockerError::DockerResponseServerError { message, .. } => message.clone(),
        e => e.to_string(),
    }
}

/// A request that failed, as a `Run` error: what was being done, and what the daemon said.
fn failed(doing: &str, e: &DockerError) -> ProviderError {
    ProviderError::Run(format!("{doing}: {}", said(e)))
}

/// Whether the daemon answered that the object does not exist.
fn missing(e: &DockerError) -> bool {
    matches!(
        e,
        DockerError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// Whether `s` is a name Docker accepts for a network, and as a tag (and that can go into a
/// request's path as it is).
fn docker_name(s: &str) -> bool {
    s.len() <= 128
        && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// A node's container name: `gantry-<first 8 chars of the group>-<node>`, with any character
/// Docker refuses in a name replaced by `-`.
fn container_name(group: &str, node: &str) -> String {
    let group: String = group.chars().take(8).collect();
    format!("gantry-{group}-{node}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// The image of a version, if the version can be a Docker tag.
fn image(version: &str) -> Result<String, ProviderError> {
    if docker_name(version) {
        Ok(format!("gantry:{version}"))
    } else {
        Err(ProviderError::Version(format!(
            "version '{version}' cannot be a Docker image tag, so the docker provider has no image for it"
        )))
    }
}

/// A network's IPv4 gateway, where its containers reach this host. Docker gives the subnet's
/// first address when none was set.
fn gateway(configs: &[IpamConfig]) -> Option<Ipv4Addr> {
    configs.iter().find_map(|c| {
        if let Some(gw) = c
            .gateway
            .as_deref()
            .and_then(|g| g.parse::<Ipv4Addr>().ok())
        {
            return Some(gw);
        }
        let (net, _) = c.subnet.as_deref()?.split_once('/')?;
        let net: Ipv4Addr = net.parse().ok()?;
        u32::from(net).checked_add(1).map(Ipv4Addr::from)
    })
}

/// NanoCpus for `cpus` CPUs, at most the host's: the daemon refuses more than it has.
fn nano_cpus(cpus: usize) -> i64 {
    let host = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    cpus.min(host) as i64 * 1_000_000_000
}

/// A container's address on `network` (its only one, as its network mode).
fn ip_on(info: &ContainerInspectResponse, network: &str) -> Option<String> {
    let nets = info.network_settings.as_ref()?.networks.as_ref()?;
    let ep = nets.get(network).or_else(|| nets.values().next())?;
    ep.ip_address.clone().filter(|ip| !ip.is_empty())
}

/// The gateway of the bridge network `network`: where its nodes dial the control plane.
async fn network_gateway(client: &Client, network: &str) -> Result<Ipv4Addr, ProviderError> {
    if !docker_name(network) {
        return Err(ProviderError::Region(format!(
            "the docker provider's region is the name of a Docker network; '{network}' is not one"
        )));
    }
    let net = match client.inspect_network(network, None).await {
        Ok(n) => n,
        Err(e) if missing(&e) => {
            return Err(ProviderError::Region(format!(
                "there is no Docker network {network}; create it with: docker network create {network}"
            )));
        }
        Err(e) => {
            return Err(failed(
                &format!("cannot inspect Docker network {network}"),
                &e,
            ))
        }
    };
    let driver = net.driver.unwrap_or_default();
    if driver != "bridge" {
        return Err(ProviderError::Region(format!(
            "Docker network {network} is a {driver} network; the docker provider needs a bridge network, whose gateway is this host, where the nodes dial the control plane (docker network create NAME makes one)"
        )));
    }
    let configs = net.ipam.and_then(|i| i.config).unwrap_or_default();
    gateway(&configs).ok_or_else(|| {
        ProviderError::Region(format!(
            "Docker network {network} has no IPv4 gateway for the nodes to dial the control plane at"
        ))
    })
}

impl Provider for Docker {
    fn check_region<'a>(
        &'a self,
        region: &'a str,
        api_access: &'a str,
    ) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(async move {
            if let Target::Host(_) = target(region)? {
                crate::local::check_region(&region["host:".len()..], api_access)?;
                return self.client().await.map(|_| ());
            }
            if api_access != "private" {
                return Err(ProviderError::Unsupported(format!(
                    "api_access is {api_access}, but the docker provider publishes no port: its nodes are reached only on their Docker network, so api_access must be private (or run the group in the host's network: region host:ADDR:PORT)"
                )));
            }
            network_gateway(self.client().await?, region)
                .await
                .map(|_| ())
        })
    }

    fn check_version(&self, version: &str) -> BoxFuture<'_, Result<(), ProviderError>> {
        let version = version.to_string();
        Box::pin(async move {
            let image = image(&version)?;
            match self.client().await?.inspect_image(&image).await {
                Ok(_) => Ok(()),
                Err(e) if missing(&e) => Err(ProviderError::Version(format!(
                    "image {image} not found; build it with dist/image.sh {version}"
                ))),
                Err(e) => Err(failed(&format!("cannot inspect image {image}"), &e)),
            }
        })
    }

    fn start<'a>(
        &'a self,
        group: &'a str,
        region: &'a str,
        spec: NodeSpec,
    ) -> BoxFuture<'a, Result<Box<dyn Node>, ProviderError>> {
        Box::pin(async move {
            let image = image(&spec.version)?;
            let client = self.client().await?;
            let (cp_host, network, listen, status) = match target(region)? {
                Target::Bridge(net) => (
                    network_gateway(client, net).await?.to_string(),
                    net.to_string(),
                    format!("0.0.0.0:{PROXY_PORT}"),
                    format!("0.0.0.0:{STATUS_PORT}"),
                ),
                Target::Host(addr) => (
                    self.host_cluster.clone(),
                    "host".to_string(),
                    addr.to_string(),
                    format!("127.0.0.1:{}", crate::local::free_port()?),
                ),
            };
            let gw = cp_host;
            let name = container_name(group, &spec.name);
            let cpus = workers(&spec.instance_type);
            let mut env: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
            env.extend([
                format!("KONG_PROXY_LISTEN={listen} reuseport"),
                format!("KONG_STATUS_LISTEN={status}"),
                format!("KONG_WORKER_THREADS={cpus}"),
                format!("KONG_NODE_ID={}", spec.node_id),
                format!("KONG_CLUSTER_CONTROL_PLANE={gw}:{}", spec.cluster_port),
                format!(
                    "KONG_CLUSTER_TELEMETRY_ENDPOINT={gw}:{}",
                    spec.telemetry_port
                ),
            ]);
            let labels = HashMap::from([
                (GROUP_LABEL.to_string(), group.to_string()),
                ("gantry.node-id".to_string(), spec.node_id.clone()),
                ("gantry.version".to_string(), spec.version.clone()),
            ]);
            let body = ContainerCreateBody {
                image: Some(image),
                env: Some(env),
                labels: Some(labels),
                host_config: Some(HostConfig {
                    network_mode: Some(network.clone()),
                    nano_cpus: Some(nano_cpus(cpus)),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let opts = CreateContainerOptionsBuilder::new().name(&name).build();
            let created = client
                .create_container(Some(opts), body)
                .await
                .map_err(|e| failed(&format!("cannot create container {name}"), &e))?;
            let mut node = DockerNode::new(client, created.id);
            if let Err(e) = client.start_container(&node.id, None).await {
                node.remove().await;
                return Err(failed(&format!("cannot start container {name}"), &e));
            }
            match client.inspect_container(&node.id, None).await {
                // A container that exited at once has no address: `exited` then says so.
                Ok(_) if network == "host" => {
                    node.status = status;
                    node.address = listen;
                }
                Ok(info) => {
                    if let Some(ip) = ip_on(&info, &network) {
                        node.status = format!("{ip}:{STATUS_PORT}");
                        node.address = format!("{ip}:{PROXY_PORT}");
                    }
                }
                Err(e) => {
                    node.remove().await;
                    return Err(failed(&format!("cannot inspect container {name}"), &e));
                }
            }
            Ok(Box::new(node) as Box<dyn Node>)
        })
    }

    fn leftovers<'a>(&'a self, group: &'a str) -> BoxFuture<'a, Vec<Box<dyn Node>>> {
        Box::pin(async move {
            let client = match self.client().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(group, error = %e, "cannot look for containers an earlier run left");
                    return Vec::new();
                }
            };
            let filters = HashMap::from([("label", vec![format!("{GROUP_LABEL}={group}")])]);
            let opts = ListContainersOptionsBuilder::new()
                .all(true)
                .filters(&filters)
                .build();
            match client.list_containers(Some(opts)).await {
                Ok(list) => list
                    .into_iter()
                    .filter_map(|c| c.id)
                    .map(|id| Box::new(DockerNode::new(client, id)) as Box<dyn Node>)
                    .collect(),
                Err(e) => {
                    tracing::warn!(group, error = %said(&e), "cannot list containers an earlier run left");
                    Vec::new()
                }
            }
        })
    }
}

/// A node's container, known by its id.
struct DockerNode {
    client: Client,
    id: String,
    status: String,
    address: String,
}

impl DockerNode {
    /// A node known by its container id; its addresses are filled in once it runs.
    fn new(client: &Client, id: String) -> DockerNode {
        DockerNode {
            client: client.clone(),
            id,
            status: String::new(),
            address: String::new(),
        }
    }

    /// Whether the container runs; `None` if the daemon cannot tell (it is gone, or unreachable).
    async fn running(&self) -> Option<bool> {
        let info = self.client.inspect_container(&self.id, None).await.ok()?;
        info.state?.running
    }

    async fn kill(&self, signal: &str) {
        let opts = KillContainerOptionsBuilder::new().signal(signal).build();
        // It may have stopped already (409): nothing to do then.
        let _ = self.client.kill_container(&self.id, Some(opts)).await;
    }

    async fn remove(&self) {
        let opts = RemoveContainerOptionsBuilder::new().force(true).build();
        if let Err(e) = self.client.remove_container(&self.id, Some(opts)).await {
            if !missing(&e) {
                tracing::warn!(container = %self.id, error = %said(&e), "cannot remove a managed data plane's container");
            }
        }
    }
}

impl Node for DockerNode {
    fn status_addr(&self) -> String {
        self.status.clone()
    }

    fn address(&self) -> String {
        self.address.clone()
    }

    fn exited(&mut self) -> BoxFuture<'_, Option<String>> {
        Box::pin(async move {
            match self.client.inspect_container(&self.id, None).await {
                Ok(info) => {
                    let state = info.state?;
                    if state.running == Some(true) {
                        return None;
                    }
                    let code = state
                        .exit_code
                        .map_or_else(|| "unknown".into(), |c| c.to_string());
                    let oom = if state.oom_killed == Some(true) {
                        ", out of memory"
                    } else {
                        ""
                    };
                    let error = state
                        .error
                        .filter(|e| !e.is_empty())
                        .map(|e| format!(": {e}"));
                    Some(format!(
                        "the container exited (code {code}{oom}){}",
                        error.unwrap_or_default()
                    ))
                }
                Err(e) if missing(&e) => Some(format!("the container {} is gone", self.id)),
                // The daemon cannot tell now: the node is not given up for that.
                Err(e) => {
                    tracing::warn!(container = %self.id, error = %said(&e), "cannot inspect a managed data plane's container");
                    None
                }
            }
        })
    }

    fn drain(&mut self, grace: Duration) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.kill("SIGQUIT").await;
            let deadline = tokio::time::Instant::now() + grace;
            while self.running().await == Some(true) && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if self.running().await == Some(true) {
                self.kill("SIGKILL").await;
            }
            self.remove().await;
        })
    }

    fn reap(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async move { self.remove().await })
    }

    fn last_words(&self) -> BoxFuture<'_, String> {
        Box::pin(async move {
            let opts = LogsOptionsBuilder::new()
                .stdout(true)
                .stderr(true)
                .tail("50")
                .build();
            let chunks: Vec<_> = self.client.logs(&self.id, Some(opts)).collect().await;
            let mut text = Vec::new();
            for chunk in chunks.into_iter().flatten() {
                text.extend_from_slice(&chunk.into_bytes());
            }
            last_lines(&String::from_utf8_lossy(&text))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_tags_gateways_and_last_lines() {
        let group = "1a2b3c4d-5e6f-4000-8000-000000000000";
        assert_eq!(
            container_name(group, "0.2.0-9f8e7d6c"),
            "gantry-1a2b3c4d-0.2.0-9f8e7d6c"
        );
        assert_eq!(container_name("ab/cd", "1.0+b x"), "gantry-ab-cd-1.0-b-x");
        assert!(docker_name("gantry-net") && !docker_name("-x") && !docker_name("a/b"));
        assert_eq!(image("0.2.1").ok().as_deref(), Some("gantry:0.2.1"));
        for bad in ["", "1.0+build", "../x", ".1"] {
            assert!(image(bad).is_err(), "{bad}");
        }
        let cfg = |subnet: &str, gw: Option<&str>| IpamConfig {
            subnet: Some(subnet.into()),
            gateway: gw.map(Into::into),
            ..Default::default()
        };
        assert_eq!(
            gateway(&[cfg("172.18.0.0/16", Some("172.18.0.1"))]),
            Some(Ipv4Addr::new(172, 18, 0, 1))
        );
        assert_eq!(
            gateway(&[cfg("fd00::/64", Some("fd00::1")), cfg("10.9.0.0/24", None)]),
            Some(Ipv4Addr::new(10, 9, 0, 1))
        );
        assert_eq!(gateway(&[]), None);
        assert_eq!(nano_cpus(1), 1_000_000_000);
        assert_eq!(last_lines("a\n\nb\r\nc\n  \nd\n"), "b | c | d");
        assert_eq!(last_lines(""), "");
    }

    #[tokio::test]
    async fn api_access_must_be_private_whatever_the_daemon() {
        let d = Docker::new("127.0.0.1".into());
        for access in ["public", "private+public"] {
            let e = d.check_region("gantry", access).await;
            assert!(matches!(e, Err(ProviderError::Unsupported(_))), "{access}");
        }
    }
}
