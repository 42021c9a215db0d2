//! Kong's vault references: `{vault://<prefix>/<resource>[/<key>][?version=<n>]}` in place
//! of a secret (a certificate's key, a plugin's password). The configuration keeps the
//! reference; the node that runs it reads the secret (`gantry_proxy`), so it is never stored,
//! sent or exported. Gantry has Kong's `env` vault: the environment variable named by the
//! vault's `config.prefix` and the resource, upper-cased with `-` as `_`; with a key, the
//! variable holds a JSON object and the key names its member; `version=2` reads `<NAME>_PREVIOUS`.

/// The vaults Gantry has (Kong's bundled `env`): a vault entity's `name`, and a prefix
/// usable without one.
pub const VAULTS: &[&str] = &["env"];

/// A parsed reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub prefix: String,
    pub resource: String,
    pub key: Option<String>,
    pub version: Option<u32>,
}

/// Whether a string is a whole vault reference.
pub fn is_reference(s: &str) -> bool {
    s.starts_with("{vault://") && s.ends_with('}')
}

/// A reference's parts; `Err` names what is wrong with it.
pub fn parse(s: &str) -> Result<Reference, String> {
    let inner = s
        .strip_prefix("{vault://")
        .and_then(|r| r.strip_suffix('}'))
        .ok_or_else(|| format!("'{s}' is not a vault reference"))?;
    let (path, query) = inner.split_once('?').unwrap_or((inner, ""));
    let mut parts = path.splitn(3, '/');
    let prefix = parts.next().unwrap_or_default();
    let resource = parts.next().unwrap_or_default();
    let key = parts.next().filter(|k| !k.is_empty());
    if prefix.is_empty() {
        return Err(format!("vault reference '{s}' has no vault prefix"));
    }
    if resource.is_empty() {
        return Err(format!("vault reference '{s}' names no secret"));
    }
    let mut version = None;
    for (k, v) in query.split('&').filter_map(|p| p.split_once('=')) {
        if k == "version" {
            version = Some(
                v.parse::<u32>()
                    .map_err(|_| format!("vault reference '{s}': version must be a number"))?,
            );
        }
    }
    Ok(Reference {
        prefix: prefix.to_string(),
        resource: resource.to_string(),
        key: key.map(str::to_string),
        version,
    })
}

/// The environment variable an `env` vault reads for a reference, with the vault's
/// `config.prefix`.
pub fn env_name(r: &Reference, config_prefix: Option<&str>) -> String {
    let mut name = format!("{}{}", config_prefix.unwrap_or_default(), r.resource)
        .replace('-', "_")
        .to_uppercase();
    if r.version == Some(2) {
        name.push_str("_PREVIOUS");
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_as_kong_writes_them() {
        let r = parse("{vault://env/my-secret}").unwrap();
        assert_eq!(
            (r.prefix.as_str(), r.resource.as_str(), r.key.as_deref()),
            ("env", "my-secret", None)
        );
        assert_eq!(env_name(&r, None), "MY_SECRET");
        let r = parse("{vault://my-env/db/password?version=2}").unwrap();
        assert_eq!(r.key.as_deref(), Some("password"));
        assert_eq!(env_name(&r, Some("app_")), "APP_DB_PREVIOUS");
        assert!(is_reference("{vault://env/x}") && !is_reference("vault://env/x"));
        assert!(parse("{vault://env}").is_err());
        assert!(parse("{vault:///x}").is_err());
    }
}
