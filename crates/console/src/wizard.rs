//! The New Data Plane Node wizard: a client certificate made and pinned on the control plane,
//! and the settings that connect a node with it, rendered for one platform as the command (or
//! Helm values) to run.

use std::path::PathBuf;

use gantry_fleet::FleetSettings;

/// What the wizard needs of the node serving it.
pub struct Wizard {
    /// Server names and what data planes trust the control plane's certificate by.
    pub fleet: FleetSettings,
    /// The host data planes dial the cluster and telemetry listeners at.
    pub cluster_host: String,
    /// Where installed versions live (`managed_versions_dir`).
    pub versions_dir: PathBuf,
    /// The version this control plane reports.
    pub version: String,
}

/// The platforms a node can be started on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    Linux,
    Docker,
    Kubernetes,
}

impl Platform {
    pub const NAMES: [&'static str; 3] = ["linux", "docker", "kubernetes"];

    pub fn parse(s: &str) -> Option<Platform> {
        match s {
            "linux" => Some(Platform::Linux),
            "docker" => Some(Platform::Docker),
            "kubernetes" => Some(Platform::Kubernetes),
            _ => None,
        }
    }
}

/// What the page shows: what installs the version (may be empty), and the script or values to
/// run the node with.
#[derive(Debug, serde::Serialize)]
pub struct Rendered {
    pub install: String,
    pub command: String,
    pub file_name: &'static str,
}

impl Wizard {
    /// The versions a new node may run: those installed here that this control plane
    /// configures (same major, not newer), newest first.
    pub fn versions(&self) -> Vec<String> {
        gantry_fleet::local::installed_versions(&self.versions_dir, gantry_model::GANTRY_VERSION)
            .into_iter()
            .filter(|v| gantry_model::compat::incompatibility(&self.version, v).is_none())
            .collect()
    }

    /// Every `KONG_*` setting of a node of control plane `cp_id` with this certificate.
    pub fn settings(
        &self,
        cp_id: &str,
        cert: &str,
        key: &str,
        labels: &str,
    ) -> Vec<(String, String)> {
        let mut env = self.fleet.data_plane_env(cp_id, cert, key, labels);
        // With cluster_endpoint_domain, each control plane has names of its own there.
        let (cp_host, tp_host) = match &self.fleet.endpoint_domain {
            Some(_) => self.fleet.server_names(cp_id),
            None => (self.cluster_host.clone(), self.cluster_host.clone()),
        };
        env.push((
            "KONG_CLUSTER_CONTROL_PLANE".into(),
            format!("{cp_host}:{}", self.fleet.cluster_port),
        ));
        env.push((
            "KONG_CLUSTER_TELEMETRY_ENDPOINT".into(),
            format!("{tp_host}:{}", self.fleet.telemetry_port),
        ));
        env.push(("KONG_KONNECT_MODE".into(), "on".into()));
        env
    }
}

/// A shell word: `'...'`, with any `'` closed, escaped and reopened.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The install command and run command (or values) for `platform`.
pub fn render(platform: Platform, version: &str, env: &[(String, String)]) -> Rendered {
    match platform {
        Platform::Linux => {
            let mut c = format!(
                "#!/bin/sh\n# A Gantry {version} data plane: run where `gantry` {version} is on PATH.\nset -e\n"
            );
            for (k, v) in env {
                c.push_str(&format!("export {k}={}\n", quote(v)));
            }
            c.push_str("exec gantry start\n");
            Rendered {
                install: format!(
                    "sh install.sh --version {version} --from \"$GANTRY_RELEASES\"   # GANTRY_RELEASES: where your Gantry releases are kept (docs/install.md)"
                ),
                command: c,
                file_name: "run-gantry.sh",
            }
        }
        Platform::Docker => {
            let mut c = String::from("docker run -d --name gantry-data-plane \\\n");
            for (k, v) in env {
                c.push_str(&format!("  -e {} \\\n", quote(&format!("{k}={v}"))));
            }
            c.push_str(&format!(
                "  -p 8000:8000 -p 8443:8443 \\\n  gantry:{version}\n"
            ));
            Rendered {
                install: format!(
                    "dist/image.sh {version}   # builds the image gantry:{version} from a Gantry checkout"
                ),
                command: c,
                file_name: "run-gantry-docker.sh",
            }
        }
        Platform::Kubernetes => {
            let get = |name: &str| {
                env.iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.as_str())
                    .unwrap_or("")
            };
            let yaml = |s: &str| serde_json::Value::String(s.to_string()).to_string();
            let mut c = format!(
                "# Values of charts/gantry for a Gantry {version} data plane.\nrole: data_plane\nimage:\n  tag: {}\ncluster:\n  mtls: pki\n  existingSecret: gantry-data-plane-cluster\n  serverName: {}\n  controlPlane: {}\n  telemetryEndpoint: {}\n  telemetryServerName: {}\n  vitals: true\n",
                yaml(version),
                yaml(get("KONG_CLUSTER_SERVER_NAME")),
                yaml(get("KONG_CLUSTER_CONTROL_PLANE")),
                yaml(get("KONG_CLUSTER_TELEMETRY_ENDPOINT")),
                yaml(get("KONG_CLUSTER_TELEMETRY_SERVER_NAME")),
            );
            let labels = get("KONG_CLUSTER_DP_LABELS");
            if labels.is_empty() {
                c.push_str("  dpLabels: {}\n");
            } else {
                c.push_str("  dpLabels:\n");
                for item in labels.split(',') {
                    if let Some((k, v)) = item.split_once(':') {
                        c.push_str(&format!("    {}: {}\n", yaml(k), yaml(v)));
                    }
                }
            }
            // The certificate, its key and what the node trusts the control plane's
            // certificate by come from the Secret the install step makes (the chart's `pki`
            // mode reads `ca.crt` as KONG_CLUSTER_CA_CERT).
            c.push_str(&format!(
                "extraEnv:\n  - name: KONG_KONNECT_MODE\n    value: {}\n",
                yaml(get("KONG_KONNECT_MODE"))
            ));
            let trust = match get("KONG_CLUSTER_CA_CERT") {
                "" => get("KONG_LUA_SSL_TRUSTED_CERTIFICATE"),
                ca => ca,
            };
            Rendered {
                install: format!(
                    "cat > ca.crt <<'EOF'\n{}\nEOF\nkubectl create secret generic gantry-data-plane-cluster --from-file=tls.crt=cluster.crt --from-file=tls.key=cluster.key --from-file=ca.crt=ca.crt\nhelm install gantry-data-plane charts/gantry -f values.yaml\n# cluster.crt, cluster.key and values.yaml: the downloads below",
                    trust.trim_end()
                ),
                command: c,
                file_name: "values.yaml",
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Vec<(String, String)> {
        vec![
            ("KONG_ROLE".into(), "data_plane".into()),
            (
                "KONG_CLUSTER_CERT".into(),
                "-----BEGIN X-----\nab'c\n-----END X-----\n".into(),
            ),
            ("KONG_CLUSTER_DP_LABELS".into(), "env:test,tier:gold".into()),
            (
                "KONG_CLUSTER_CONTROL_PLANE".into(),
                "cp.example:8005".into(),
            ),
            ("KONG_KONNECT_MODE".into(), "on".into()),
        ]
    }

    #[test]
    fn linux_script_quotes_every_value() {
        let r = render(Platform::Linux, "0.2.0", &env());
        assert!(r.command.contains("export KONG_ROLE='data_plane'\n"));
        assert!(r.command.contains("ab'\\''c"), "{}", r.command);
        assert!(r.command.ends_with("exec gantry start\n"));
        assert!(r.install.contains("--version 0.2.0"));
    }

    #[test]
    fn docker_command_names_the_image() {
        let r = render(Platform::Docker, "0.2.1", &env());
        assert!(r.command.contains("-e 'KONG_ROLE=data_plane' \\\n"));
        assert!(r.command.trim_end().ends_with("gantry:0.2.1"));
    }

    #[test]
    fn helm_values_carry_the_settings() {
        let r = render(Platform::Kubernetes, "0.2.0", &env());
        assert!(r.command.contains("role: data_plane\n"));
        assert!(r.command.contains("  controlPlane: \"cp.example:8005\"\n"));
        assert!(r.command.contains("    \"tier\": \"gold\"\n"));
        assert!(r
            .command
            .contains("  - name: KONG_KONNECT_MODE\n    value: \"on\"\n"));
        assert_eq!(r.file_name, "values.yaml");
    }
}
