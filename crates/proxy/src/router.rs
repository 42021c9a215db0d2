//! The router, with the semantics of Kong's default (`traditional_compatible`) router.
//!
//! Each route becomes one or more matchers (a route whose paths differ in kind or length is
//! split, as Kong splits it), each with Kong's 64-bit priority. Matchers are ranked by priority
//! (higher first; equal priorities: the greater id first, as Kong). Lookup does not scan every
//! route: prefix paths sit in a byte trie walked along the request path, routes without paths
//! are indexed by exact host, and only regex routes and host-less routes are always candidates.
//! The candidates are then checked fully in rank order; the first that matches wins.

use std::sync::Arc;

use gantry_model::delta::Change;
use gantry_model::Entity;
use regex::Regex;

/// A compiled route condition on the path.
#[derive(Debug)]
enum PathMatch {
    Prefix(String),
    Regex(Regex),
}

#[derive(Debug)]
enum HostMatch {
    Exact {
        host: String,
        port: Option<u16>,
    },
    /// `*.example.com`: ends with `.example.com`.
    Suffix {
        suffix: String,
        port: Option<u16>,
    },
    /// `example.*`: starts with `example.`.
    Prefix {
        prefix: String,
        port: Option<u16>,
    },
}

#[derive(Debug)]
enum ValueMatch {
    Exact(String),
    Regex(Regex),
}

/// What a matched route says about the request.
#[derive(Debug)]
pub struct Route {
    pub id: String,
    pub name: Option<String>,
    pub service_id: Option<String>,
    pub protocols: Vec<String>,
    pub strip_path: bool,
    pub preserve_host: bool,
    pub https_redirect_status_code: u16,
    /// The first of its paths, as configured (the request span's `http.route`).
    pub first_path: Option<String>,
}

#[derive(Debug)]
struct Matcher {
    route: Arc<Route>,
    priority: u64,
    id: String,
    methods: Vec<String>,
    hosts: Vec<HostMatch>,
    paths: Vec<PathMatch>,
    headers: Vec<(String, Vec<ValueMatch>)>,
    snis: Vec<HostMatch>,
}

/// The request facts the router reads.
pub struct RequestInfo<'a> {
    pub method: &'a str,
    /// The Host header's host part.
    pub host: &'a str,
    /// The Host header's port, or the listener's.
    pub port: u16,
    /// The normalised path, without the query string.
    pub path: &'a str,
    pub headers: &'a hyper::HeaderMap,
    pub sni: Option<&'a str>,
    pub https: bool,
}

/// A match: the route, and what of the path it matched.
#[derive(Debug)]
pub struct Matched<'r> {
    pub route: &'r Arc<Route>,
    /// The matched prefix (a prefix path, or a regex's whole match).
    pub prefix: std::borrow::Cow<'r, str>,
    /// Named and numbered regex captures.
    pub captures: Vec<(String, String)>,
}

/// A node of the path trie: the matchers whose path prefix ends here, and the children by
/// next byte. Nodes are shared between routers: a change copies the nodes on the paths it
/// touches ([`Arc::make_mut`]), the rest stay where they are.
#[derive(Clone, Default)]
struct Node {
    children: Vec<(u8, Arc<Node>)>,
    here: Vec<Arc<Matcher>>,
}

/// A persistent map (a copy is O(1), a change O(log n)).
type PMap<K, V> =
    imbl::GenericHashMap<K, V, foldhash::fast::RandomState, imbl::shared_ptr::DefaultSharedPtr>;

/// A compiled router: immutable, shared by every request of one snapshot. The next
/// configuration's router is this one patched with the routes that changed
/// ([`Router::patch`]): what it costs is what changed, not the number of routes.
#[derive(Clone)]
pub struct Router {
    /// Prefix paths (and regex paths' literal beginnings), byte by byte.
    root: Arc<Node>,
    /// Matchers without paths whose hosts are all plain, by host.
    by_host: PMap<String, Vec<Arc<Matcher>>>,
    /// Candidates for every request: regex paths without a literal beginning; no paths and
    /// no plain host.
    always: Arc<Vec<Arc<Matcher>>>,
    /// Each route's matchers, by route id.
    routes: PMap<String, Arc<[Arc<Matcher>]>>,
    len: usize,
    /// How many matchers match on headers.
    headed: usize,
}

/// How many of `matchers` match on headers.
fn headed(matchers: &[Arc<Matcher>]) -> usize {
    matchers.iter().filter(|m| !m.headers.is_empty()).count()
}

/// Kong's order: the higher priority first; equal priorities, the greater id first.
fn rank(a: &Matcher, b: &Matcher) -> std::cmp::Ordering {
    b.priority.cmp(&a.priority).then_with(|| b.id.cmp(&a.id))
}

/// Where a matcher is indexed.
struct Places {
    prefixes: Vec<String>,
    hosts: Vec<String>,
    always: bool,
}

fn places(m: &Matcher) -> Places {
    // Every path indexed by the literal text a matching request path must start with: the
    // prefix itself, or a regex's literal beginning. A regex without one is always a candidate.
    let prefixes: Vec<String> = m
        .paths
        .iter()
        .filter_map(|p| match p {
            PathMatch::Prefix(s) => Some(s.clone()),
            PathMatch::Regex(re) => literal_prefix(re.as_str()),
        })
        .collect();
    if m.paths.is_empty() {
        let exact: Option<Vec<String>> = (!m.hosts.is_empty())
            .then(|| {
                m.hosts
                    .iter()
                    .map(|h| match h {
                        HostMatch::Exact { host, .. } => Some(host.clone()),
                        _ => None,
                    })
                    .collect()
            })
            .flatten();
        return match exact {
            Some(hosts) => Places {
                prefixes: vec![],
                hosts,
                always: false,
            },
            None => Places {
                prefixes: vec![],
                hosts: vec![],
                always: true,
            },
        };
    }
    Places {
        always: prefixes.len() < m.paths.len(),
        prefixes,
        hosts: vec![],
    }
}

fn trie_insert(mut node: &mut Arc<Node>, key: &[u8], m: &Arc<Matcher>) {
    for &b in key {
        let n = Arc::make_mut(node);
        let i = match n.children.iter().position(|(c, _)| *c == b) {
            Some(i) => i,
            None => {
                n.children.push((b, Arc::new(Node::default())));
                n.children.len() - 1
            }
        };
        node = &mut n.children[i].1;
    }
    let n = Arc::make_mut(node);
    if !n.here.iter().any(|x| Arc::ptr_eq(x, m)) {
        n.here.push(m.clone());
    }
}

/// Remove `m` at `key`; true when the node is left empty (its parent drops it).
fn trie_remove(node: &mut Arc<Node>, key: &[u8], m: &Arc<Matcher>) -> bool {
    let n = Arc::make_mut(node);
    match key.split_first() {
        None => n.here.retain(|x| !Arc::ptr_eq(x, m)),
        Some((b, rest)) => {
            if let Some(i) = n.children.iter().position(|(c, _)| c == b) {
                if trie_remove(&mut n.children[i].1, rest, m) {
                    n.children.swap_remove(i);
                }
            }
        }
    }
    n.here.is_empty() && n.children.is_empty()
}

/// A route that cannot be compiled (a header regex the regex engine refuses, say). Writes
/// compile each route before it is stored, so a running node meets one only in a
/// configuration written by an older build.
#[derive(Debug, thiserror::Error)]
#[error("route {id}: {}{reason}", field.map(|f| format!("{f}: ")).unwrap_or_default())]
pub struct RouteError {
    pub id: String,
    /// The route's field at fault (none when the document is not a route at all).
    pub field: Option<&'static str>,
    pub reason: String,
}

fn split_port(h: &str) -> (&str, Option<u16>) {
    match h.rsplit_once(':') {
        Some((host, p)) if !host.contains(':') || host.ends_with(']') => match p.parse() {
            Ok(port) => (host, Some(port)),
            Err(_) => (h, None),
        },
        _ => (h, None),
    }
}

fn host_match(h: &str) -> HostMatch {
    let (host, port) = split_port(h);
    let host = host.to_ascii_lowercase();
    if let Some(rest) = host.strip_prefix('*') {
        HostMatch::Suffix {
            suffix: rest.to_string(),
            port,
        }
    } else if let Some(rest) = host.strip_suffix('*') {
        HostMatch::Prefix {
            prefix: rest.to_string(),
            port,
        }
    } else {
        HostMatch::Exact { host, port }
    }
}

impl HostMatch {
    fn matches(&self, host: &str, port: u16) -> bool {
        let (ok, want) = match self {
            HostMatch::Exact { host: h, port } => (h.eq_ignore_ascii_case(host), port),
            // Compared as bytes: a host need not split at a character boundary where a
            // pattern ends (a client's `aπexample` against `*.example`).
            HostMatch::Suffix { suffix, port } => (
                host.len() > suffix.len()
                    && host.as_bytes()[host.len() - suffix.len()..]
                        .eq_ignore_ascii_case(suffix.as_bytes()),
                port,
            ),
            HostMatch::Prefix { prefix, port } => (
                host.len() > prefix.len()
                    && host.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes()),
                port,
            ),
        };
        ok && want.is_none_or(|p| p == port)
    }
}

/// Kong's priority (`transform.get_priority`) for one matcher.
fn priority(
    methods: bool,
    hosts: Option<&[String]>,
    headers: usize,
    snis: bool,
    paths: &[String],
    regex_priority: i64,
) -> u64 {
    let mut weight: u64 = 0;
    for set in [
        methods,
        hosts.is_some_and(|h| !h.is_empty()),
        headers > 0,
        snis,
        !paths.is_empty(),
    ] {
        if set {
            weight += 1;
        }
    }
    let plain_host_only = hosts.is_some_and(|h| h.iter().all(|h| !h.contains('*')));
    let regex = paths.first().is_some_and(|p| p.starts_with('~'));
    let mut p = weight << 61;
    if plain_host_only {
        p |= 1 << 60;
    }
    p |= (headers.min(255) as u64) << 52;
    if regex {
        p |= 1 << 51;
        // Kong shifts the raw value; clamp so that a negative priority cannot reach higher bits.
        p |= ((regex_priority.clamp(0, (1 << 32) - 1)) as u64) << 19;
    } else if let Some(first) = paths.first() {
        p |= (first.len() as u64) & 0x7FFFF;
    }
    p
}

/// Kong's split of a route's paths: all regex paths together, plain paths grouped by length.
fn group_paths(paths: Vec<String>) -> Vec<Vec<String>> {
    let mut groups: Vec<(Option<usize>, Vec<String>)> = Vec::new();
    for p in paths {
        let key = if p.starts_with('~') {
            None
        } else {
            Some(p.len())
        };
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, g)) => g.push(p),
            None => groups.push((key, vec![p])),
        }
    }
    groups.into_iter().map(|(_, g)| g).collect()
}

impl Router {
    /// A router with no routes: every request misses.
    pub fn empty() -> Router {
        Router {
            root: Arc::new(Node::default()),
            by_host: Default::default(),
            always: Arc::new(Vec::new()),
            routes: Default::default(),
            len: 0,
            headed: 0,
        }
    }

    /// Compile routes (entities as stored) into a router.
    pub fn build<'a>(routes: impl IntoIterator<Item = &'a Entity>) -> Result<Router, RouteError> {
        let mut r = Router::empty();
        for d in routes {
            r.put(d)?;
        }
        Ok(r)
    }

    /// This router with `changes` (of any entities; the routes' count) applied. A route that
    /// does not compile fails the whole patch; this router is unchanged.
    pub fn patch(&self, changes: &[Change]) -> Result<Router, RouteError> {
        let mut r = self.clone();
        for c in changes.iter().filter(|c| c.entity() == "routes") {
            match c {
                Change::Upsert { doc, .. } => r.put(doc)?,
                Change::Delete { id, .. } => r.remove(id),
            }
        }
        Ok(r)
    }

    /// Compile and index one route, in place of the one with its id.
    fn put(&mut self, e: &Entity) -> Result<(), RouteError> {
        let id = e.id();
        let route = gantry_model::typed::Route::try_from(e).map_err(|t| RouteError {
            id: id.to_string(),
            field: None,
            reason: t.reason,
        })?;
        let matchers: Arc<[Arc<Matcher>]> = compile(route)?.into();
        self.remove(id);
        for m in matchers.iter() {
            let p = places(m);
            for prefix in &p.prefixes {
                trie_insert(&mut self.root, prefix.as_bytes(), m);
            }
            for h in p.hosts {
                let mut v = self.by_host.get(&h).cloned().unwrap_or_default();
                v.push(m.clone());
                self.by_host.insert(h, v);
            }
            if p.always {
                Arc::make_mut(&mut self.always).push(m.clone());
            }
        }
        self.len += matchers.len();
        self.headed += headed(&matchers);
        self.routes.insert(id.to_string(), matchers);
        Ok(())
    }

    fn remove(&mut self, id: &str) {
        let Some(matchers) = self.routes.remove(id) else {
            return;
        };
        for m in matchers.iter() {
            let p = places(m);
            for prefix in &p.prefixes {
                trie_remove(&mut self.root, prefix.as_bytes(), m);
            }
            for h in p.hosts {
                if let Some(v) = self.by_host.get(&h) {
                    let v: Vec<_> = v.iter().filter(|x| !Arc::ptr_eq(x, m)).cloned().collect();
                    if v.is_empty() {
                        self.by_host.remove(&h);
                    } else {
                        self.by_host.insert(h, v);
                    }
                }
            }
            if p.always {
                Arc::make_mut(&mut self.always).retain(|x| !Arc::ptr_eq(x, m));
            }
        }
        self.len -= matchers.len();
        self.headed -= headed(&matchers);
    }

    /// Whether a route matches on a request's headers (else [`Router::find`] reads none).
    pub fn reads_headers(&self) -> bool {
        self.headed > 0
    }

    /// The number of routes compiled (after splitting).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Find the route for a request.
    pub fn find(&self, req: &RequestInfo<'_>) -> Option<Matched<'_>> {
        // On the stack for the usual few candidates: nothing allocated per request.
        let mut cands: smallvec::SmallVec<[&Arc<Matcher>; 16]> = smallvec::SmallVec::new();
        let mut node = &*self.root;
        cands.extend(node.here.iter());
        for b in req.path.bytes() {
            match node.children.iter().find(|(c, _)| *c == b) {
                Some((_, n)) => {
                    node = n;
                    cands.extend(node.here.iter());
                }
                None => break,
            }
        }
        if let Some(v) = self.by_host.get(req.host) {
            cands.extend(v.iter());
        } else if req.host.bytes().any(|b| b.is_ascii_uppercase()) {
            if let Some(v) = self.by_host.get(&req.host.to_ascii_lowercase()) {
                cands.extend(v.iter());
            }
        }
        cands.extend(self.always.iter());
        cands.sort_unstable_by(|a, b| rank(a, b));
        cands.dedup_by(|a, b| Arc::ptr_eq(a, b));
        cands.into_iter().find_map(|m| self.check(m, req))
    }

    fn check<'r>(&'r self, m: &'r Matcher, req: &RequestInfo<'_>) -> Option<Matched<'r>> {
        if !m.methods.is_empty() && !m.methods.iter().any(|x| x == req.method) {
            return None;
        }
        if !m.hosts.is_empty() && !m.hosts.iter().any(|h| h.matches(req.host, req.port)) {
            return None;
        }
        if req.https && !m.snis.is_empty() {
            let sni = req.sni?;
            if !m.snis.iter().any(|s| {
                s.matches(sni, 0)
                    || matches!(s, HostMatch::Exact { host, .. } if host.eq_ignore_ascii_case(sni))
            }) {
                return None;
            }
        }
        for (name, values) in &m.headers {
            let ok = req.headers.get_all(name.as_str()).iter().any(|hv| {
                let Ok(v) = hv.to_str() else { return false };
                values.iter().any(|vm| match vm {
                    ValueMatch::Exact(x) => x.eq_ignore_ascii_case(v),
                    ValueMatch::Regex(re) => re.is_match(v),
                })
            });
            if !ok {
                return None;
            }
        }
        if m.paths.is_empty() {
            return Some(Matched {
                route: &m.route,
                prefix: std::borrow::Cow::Borrowed("/"),
                captures: vec![],
            });
        }
        for p in &m.paths {
            match p {
                PathMatch::Prefix(s) => {
                    if req.path.starts_with(s.as_str()) {
                        return Some(Matched {
                            route: &m.route,
                            prefix: std::borrow::Cow::Borrowed(s.as_str()),
                            captures: vec![],
                        });
                    }
                }
                PathMatch::Regex(re) => {
                    if let Some(c) = re.captures(req.path) {
                        let whole = c.get(0).map(|m| m.as_str().to_string()).unwrap_or_default();
                        // As Kong's `uri_captures`: each group by its name, and by its
                        // number (`0`: the whole match).
                        let mut captures = vec![("0".to_string(), whole.clone())];
                        for (i, name) in re.capture_names().enumerate().skip(1) {
                            if let Some(v) = c.get(i) {
                                if let Some(n) = name {
                                    captures.push((n.to_string(), v.as_str().to_string()));
                                }
                                captures.push((i.to_string(), v.as_str().to_string()));
                            }
                        }
                        return Some(Matched {
                            route: &m.route,
                            prefix: std::borrow::Cow::Owned(whole),
                            captures,
                        });
                    }
                }
            }
        }
        None
    }
}

/// Compile one route into its matchers (none for a stream route).
fn compile(d: gantry_model::typed::Route) -> Result<Vec<Arc<Matcher>>, RouteError> {
    let mut matchers = Vec::new();
    let id = d.id;
    let err = |field: &'static str, reason: String| RouteError {
        id: id.clone(),
        field: Some(field),
        reason,
    };
    if !d
        .protocols
        .iter()
        .any(|p| matches!(p.as_str(), "http" | "https" | "grpc" | "grpcs"))
    {
        return Ok(Vec::new()); // stream routes (tcp, tls, udp) are not HTTP
    }
    let route = Arc::new(Route {
        id: id.clone(),
        name: d.name,
        service_id: d.service.map(|s| s.id),
        protocols: d.protocols,
        strip_path: d.strip_path,
        preserve_host: d.preserve_host,
        https_redirect_status_code: d.https_redirect_status_code,
        first_path: d.paths.as_ref().and_then(|p| p.first().cloned()),
    });
    let methods = d.methods.unwrap_or_default();
    let hosts_raw = d.hosts;
    let snis = d.snis.unwrap_or_default();
    let mut headers = Vec::new();
    for (name, vals) in d.headers.unwrap_or_default() {
        let mut ms = Vec::new();
        for v in vals {
            ms.push(match v.strip_prefix("~*") {
                Some(re) => ValueMatch::Regex(
                    Regex::new(&format!("(?i){re}")).map_err(|e| err("headers", e.to_string()))?,
                ),
                None => ValueMatch::Exact(v.to_ascii_lowercase()),
            });
        }
        headers.push((name.to_ascii_lowercase(), ms));
    }
    let regex_priority = d.regex_priority;
    let groups = {
        let paths = d.paths.unwrap_or_default();
        if paths.is_empty() {
            vec![vec![]]
        } else {
            group_paths(paths)
        }
    };
    let split = groups.len() > 1;
    for (gi, group) in groups.into_iter().enumerate() {
        let prio = priority(
            !methods.is_empty(),
            hosts_raw.as_deref(),
            headers.len(),
            !snis.is_empty(),
            &group,
            regex_priority,
        );
        let mut paths = Vec::new();
        for p in &group {
            paths.push(match p.strip_prefix('~') {
                Some(re) => PathMatch::Regex(
                    Regex::new(&format!("^(?:{re})")).map_err(|e| err("paths", e.to_string()))?,
                ),
                None => PathMatch::Prefix(p.clone()),
            });
        }
        let mid = if split {
            format!("{id}#{gi}")
        } else {
            id.clone()
        };
        matchers.push(Arc::new(Matcher {
            route: route.clone(),
            priority: prio,
            id: mid,
            methods: methods.clone(),
            hosts: hosts_raw.iter().flatten().map(|h| host_match(h)).collect(),
            paths,
            headers: headers
                .iter()
                .map(|(n, v)| (n.clone(), v.iter().map(clone_value).collect()))
                .collect(),
            snis: snis
                .iter()
                .map(|s| host_match(s.trim_end_matches('.')))
                .collect(),
        }));
    }
    Ok(matchers)
}

/// The literal text every match of a path regex (compiled as `^(?:...)`) starts with, if any.
fn literal_prefix(compiled: &str) -> Option<String> {
    let inner = compiled.strip_prefix("^(?:")?.strip_suffix(')')?;
    if inner.contains('|') {
        return None;
    }
    let mut out = String::new();
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.peek() {
                // An escaped punctuation character is literal; classes like \d are not.
                Some(&n) if n.is_ascii_punctuation() => {
                    out.push(n);
                    chars.next();
                }
                _ => break,
            },
            '.' | '+' | '(' | ')' | '[' | ']' | '^' | '$' => break,
            '*' | '?' | '{' => {
                // The character before was optional or repeated.
                out.pop();
                break;
            }
            c => out.push(c),
        }
        if matches!(chars.peek(), Some('*' | '?' | '{')) {
            out.pop();
            break;
        }
    }
    (!out.is_empty()).then_some(out)
}

fn clone_value(v: &ValueMatch) -> ValueMatch {
    match v {
        ValueMatch::Exact(s) => ValueMatch::Exact(s.clone()),
        ValueMatch::Regex(r) => ValueMatch::Regex(r.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn doc_of(v: Value) -> Entity {
        Entity::new(v.as_object().unwrap())
    }

    fn route(id: u32, v: Value) -> Entity {
        let mut d = v.as_object().cloned().unwrap();
        d.insert(
            "id".into(),
            json!(format!("00000000-0000-4000-8000-{id:012}")),
        );
        d.entry("protocols").or_insert(json!(["http", "https"]));
        Entity::new(&d)
    }

    fn find(
        r: &Router,
        method: &str,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Option<(String, String)> {
        let mut h = hyper::HeaderMap::new();
        for (k, v) in headers {
            h.append(
                hyper::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let (host, port) = split_port(host);
        let req = RequestInfo {
            method,
            host,
            port: port.unwrap_or(8000),
            path,
            headers: &h,
            sni: None,
            https: false,
        };
        r.find(&req).map(|m| {
            (
                m.route.id[24..].trim_start_matches('0').to_string(),
                m.prefix.into_owned(),
            )
        })
    }

    #[test]
    fn kong_priorities() {
        let r = Router::build(&[
            route(1, json!({"paths": ["/"]})),
            route(2, json!({"paths": ["/api"]})),
            route(3, json!({"paths": ["/api/v1"]})),
            route(
                4,
                json!({"paths": ["~/api/v\\d+/users"], "regex_priority": 0}),
            ),
            route(
                5,
                json!({"paths": ["~/api/v1/users"], "regex_priority": 10}),
            ),
            route(6, json!({"hosts": ["api.example.com"], "paths": ["/api"]})),
            route(7, json!({"hosts": ["*.example.com"], "paths": ["/api"]})),
            route(8, json!({"methods": ["POST"], "paths": ["/api"]})),
            route(
                9,
                json!({"headers": {"x-version": ["2", "~*^beta"]}, "paths": ["/api"]}),
            ),
            route(10, json!({"hosts": ["only-host.example.com"]})),
        ])
        .unwrap();
        // Longest prefix among plain paths with the same fields.
        assert_eq!(find(&r, "GET", "x", "/api/v1/things", &[]).unwrap().0, "3");
        assert_eq!(find(&r, "GET", "x", "/apix", &[]).unwrap().0, "2");
        assert_eq!(find(&r, "GET", "x", "/other", &[]).unwrap().0, "1");
        // Regex over prefix; higher regex_priority first.
        assert_eq!(find(&r, "GET", "x", "/api/v1/users/7", &[]).unwrap().0, "5");
        assert_eq!(find(&r, "GET", "x", "/api/v2/users/7", &[]).unwrap().0, "4");
        // More matching fields first; plain host over wildcard.
        assert_eq!(
            find(&r, "GET", "api.example.com", "/api", &[]).unwrap().0,
            "6"
        );
        assert_eq!(
            find(&r, "GET", "a.b.example.com", "/api", &[]).unwrap().0,
            "7"
        );
        assert_eq!(
            find(&r, "GET", "API.EXAMPLE.COM:8000", "/api", &[])
                .unwrap()
                .0,
            "6"
        );
        assert_eq!(find(&r, "POST", "x", "/api", &[]).unwrap().0, "8");
        assert_eq!(
            find(&r, "GET", "x", "/api", &[("X-Version", "2")])
                .unwrap()
                .0,
            "9"
        );
        assert_eq!(
            find(&r, "GET", "x", "/api", &[("x-version", "BETA-3")])
                .unwrap()
                .0,
            "9"
        );
        assert_eq!(
            find(&r, "GET", "x", "/api", &[("x-version", "3")])
                .unwrap()
                .0,
            "2"
        );
        assert_eq!(
            find(&r, "GET", "only-host.example.com", "/zzz", &[])
                .unwrap()
                .0,
            "10"
        );
    }

    #[test]
    fn hosts_ports_and_misses() {
        let r = Router::build(&[
            route(1, json!({"hosts": ["example.com:8080"]})),
            route(2, json!({"hosts": ["example.*"], "paths": ["/p"]})),
            route(3, json!({"paths": ["/x"], "methods": ["GET"]})),
        ])
        .unwrap();
        assert_eq!(
            find(&r, "GET", "example.com:8080", "/", &[]).unwrap().0,
            "1"
        );
        assert!(find(&r, "GET", "example.com:9090", "/", &[]).is_none());
        assert_eq!(find(&r, "GET", "example.org", "/p/q", &[]).unwrap().0, "2");
        assert!(find(&r, "GET", "example", "/p", &[]).is_none());
        assert!(find(&r, "POST", "h", "/x", &[]).is_none());
        assert!(find(&r, "GET", "h", "/y", &[]).is_none());
    }

    #[test]
    fn regex_captures_and_split_routes() {
        let r = Router::build(&[route(
            1,
            json!({"paths": ["~/users/(?<user>\\d+)", "/long-path", "/one", "/two"]}),
        )])
        .unwrap();
        assert_eq!(r.len(), 3);
        let mut h = hyper::HeaderMap::new();
        h.insert("x", "y".parse().unwrap());
        let req = RequestInfo {
            method: "GET",
            host: "h",
            port: 80,
            path: "/users/42/x",
            headers: &h,
            sni: None,
            https: false,
        };
        let m = r.find(&req).unwrap();
        assert_eq!(m.prefix, "/users/42");
        let pair = |k: &str, v: &str| (k.to_string(), v.to_string());
        assert_eq!(
            m.captures,
            vec![pair("0", "/users/42"), pair("user", "42"), pair("1", "42")]
        );
        assert_eq!(
            find(&r, "GET", "h", "/two/x", &[]).unwrap(),
            ("1".into(), "/two".into())
        );
    }

    #[test]
    fn regex_literal_prefixes() {
        let lp = |re: &str| literal_prefix(&format!("^(?:{re})"));
        assert_eq!(lp("/api/(?<id>\\d+)"), Some("/api/".into()));
        assert_eq!(lp("/api/v\\d+/users"), Some("/api/v".into()));
        assert_eq!(lp("/files\\.json"), Some("/files.json".into()));
        assert_eq!(lp("/ab?c"), Some("/a".into()));
        assert_eq!(lp("/a|/b"), None);
        assert_eq!(lp(".*"), None);
        assert_eq!(lp("(?i)/x"), None);
    }

    /// A patched router routes as one built from scratch, and the router it was patched
    /// from still routes as before.
    #[test]
    fn a_patched_router_routes_as_a_built_one() {
        let docs: Vec<Entity> = (0..50)
            .map(|i| route(i + 1, json!({"paths": [format!("/svc/{i}")]})))
            .collect();
        let first = Router::build(&docs).unwrap();
        let up = |d: Entity| Change::Upsert {
            entity: "routes".into(),
            doc: d,
        };
        let changes = vec![
            up(route(8, json!({"paths": ["/moved"]}))),
            Change::Delete {
                entity: "routes".into(),
                id: docs[3].id().into(),
            },
            up(route(99, json!({"paths": ["~/re/\\d+$"]}))),
            up(route(100, json!({"hosts": ["only.example"]}))),
            up(route(101, json!({"paths": ["/svc/1"], "methods": ["GET"]}))),
            Change::Upsert {
                entity: "services".into(),
                doc: doc_of(json!({"id": "s"})),
            },
        ];
        let second = first.patch(&changes).unwrap();
        let mut all: Vec<Entity> = docs.clone();
        all[7] = route(8, json!({"paths": ["/moved"]}));
        all.remove(3);
        all.push(route(99, json!({"paths": ["~/re/\\d+$"]})));
        all.push(route(100, json!({"hosts": ["only.example"]})));
        all.push(route(101, json!({"paths": ["/svc/1"], "methods": ["GET"]})));
        let scratch = Router::build(&all).unwrap();
        for (host, path) in [
            ("h", "/svc/1"),
            ("h", "/svc/3"),
            ("h", "/svc/7"),
            ("h", "/moved/x"),
            ("h", "/re/12"),
            ("only.example", "/x"),
            ("h", "/svc/20/deeper"),
        ] {
            let a = find(&second, "GET", host, path, &[]);
            let b = find(&scratch, "GET", host, path, &[]);
            assert_eq!(a, b, "{host}{path}");
        }
        assert_eq!(find(&second, "GET", "h", "/svc/1", &[]).unwrap().0, "101");
        assert!(find(&second, "GET", "h", "/svc/3", &[]).is_none());
        assert_eq!(second.len(), scratch.len());
        // The router patched from is untouched.
        assert_eq!(find(&first, "GET", "h", "/svc/3", &[]).unwrap().0, "4");
        assert!(find(&first, "GET", "h", "/moved", &[]).is_none());
        assert_eq!(first.len(), 50);
        // A route that does not compile fails the patch.
        let bad = up(route(
            7,
            json!({"paths": ["/a"], "headers": {"x": ["~*(("]}}),
        ));
        assert_eq!(first.patch(&[bad]).err().unwrap().field, Some("headers"));
    }

    #[test]
    fn ten_thousand_routes_index() {
        let routes: Vec<Entity> = (0..10_000)
            .map(|i| route(i + 1, json!({"paths": [format!("/svc/{i}")]})))
            .collect();
        let r = Router::build(&routes).unwrap();
        assert_eq!(
            find(&r, "GET", "h", "/svc/1234/x", &[]).unwrap().1,
            "/svc/1234"
        );
        assert_eq!(
            find(&r, "GET", "h", "/svc/9999", &[]).unwrap().1,
            "/svc/9999"
        );
        assert!(find(&r, "GET", "h", "/nope", &[]).is_none());
    }
}
