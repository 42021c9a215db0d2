//! Fuzz targets for what an attacker or a bad network controls, on stable Rust.
//!
//! Each target takes bytes and panics when Gantry breaks a promise on them: a panic of its own,
//! a configuration loaded but not runnable, a decompression past its bound, a request
//! reaching an upstream malformed or unauthenticated. The inputs come from [`strategy`]: a
//! committed corpus entry mutated (bytes flipped, inserted, removed, spliced with tokens of the
//! target's grammar), or bytes from nothing. `cargo test -p gantry-fuzz` replays the corpus and
//! runs a fixed-seed batch of each target; `gantry-fuzz TARGET SECONDS` runs one for as long
//! as asked and writes each failure, shrunk, into the corpus.

use std::path::{Path, PathBuf};

use proptest::prelude::*;

mod targets;

pub use targets::http1_upstream_requests;

/// Every target, by name.
pub const TARGETS: &[&str] = &[
    "declarative",
    "admin_body",
    "schema",
    "cluster_frame",
    "router",
    "http1_head",
];

/// Run `target` on one input. Panics when the input breaks one of Gantry's promises.
pub fn run(target: &str, data: &[u8]) {
    match target {
        "declarative" => targets::declarative(data),
        "admin_body" => targets::admin_body(data),
        "schema" => targets::schema(data),
        "cluster_frame" => targets::cluster_frame(data),
        "router" => targets::router(data),
        "http1_head" => targets::http1_head(data),
        other => panic!("no fuzz target {other}; the targets are {TARGETS:?}"),
    }
}

/// `crates/fuzz/corpus/<target>`
pub fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target)
}

/// The corpus of `target`, sorted by file name.
pub fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let mut all: Vec<(String, Vec<u8>)> = std::fs::read_dir(corpus_dir(target))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    Some((name, std::fs::read(e.path()).ok()?))
                })
                .collect()
        })
        .unwrap_or_default();
    all.sort();
    all
}

/// Keep a failing input in the corpus, named by its digest; returns its path.
pub fn keep(target: &str, data: &[u8]) -> std::io::Result<PathBuf> {
    use sha2::Digest;
    let dir = corpus_dir(target);
    std::fs::create_dir_all(&dir)?;
    let name = format!("crash-{}", &hex::encode(sha2::Sha256::digest(data))[..16]);
    let path = dir.join(name);
    std::fs::write(&path, data)?;
    Ok(path)
}

/// One change to an input.
#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Insert(usize, u8),
    Remove(usize, usize),
    Token(usize, usize),
    Repeat(usize, usize, usize),
}

fn apply(mut data: Vec<u8>, muts: &[Mutation], tokens: &[&[u8]]) -> Vec<u8> {
    for m in muts {
        let at = |i: usize, len: usize| if len == 0 { 0 } else { i % (len + 1) };
        match *m {
            Mutation::Flip(i, b) => {
                if !data.is_empty() {
                    let i = i % data.len();
                    data[i] ^= b | 1;
                }
            }
            Mutation::Insert(i, b) => {
                let i = at(i, data.len());
                data.insert(i, b);
            }
            Mutation::Remove(i, n) => {
                if !data.is_empty() {
                    let i = i % data.len();
                    let end = (i + n % 16 + 1).min(data.len());
                    data.drain(i..end);
                }
            }
            Mutation::Token(i, t) => {
                if !tokens.is_empty() {
                    let i = at(i, data.len());
                    let t = tokens[t % tokens.len()];
                    data.splice(i..i, t.iter().copied());
                }
            }
            Mutation::Repeat(i, n, times) => {
                if !data.is_empty() {
                    let i = i % data.len();
                    let end = (i + n % 32 + 1).min(data.len());
                    let piece = data[i..end].to_vec();
                    for _ in 0..times % 64 {
                        data.splice(end..end, piece.iter().copied());
                    }
                }
            }
        }
        data.truncate(1 << 20);
    }
    data
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        (any::<usize>(), any::<usize>()).prop_map(|(i, n)| Mutation::Remove(i, n)),
        (any::<usize>(), any::<usize>()).prop_map(|(i, t)| Mutation::Token(i, t)),
        (any::<usize>(), any::<usize>(), any::<usize>())
            .prop_map(|(i, n, k)| Mutation::Repeat(i, n, k)),
    ]
}

/// Inputs for `target`: mostly a corpus entry with up to 8 mutations, sometimes bytes from
/// nothing. Shrinking drops mutations and bytes, so a failure is reported small.
pub fn strategy(target: &str) -> BoxedStrategy<Vec<u8>> {
    let seeds: Vec<Vec<u8>> = corpus(target).into_iter().map(|(_, d)| d).collect();
    let tokens = targets::tokens(target);
    let raw = proptest::collection::vec(any::<u8>(), 0..512);
    if seeds.is_empty() {
        return raw.boxed();
    }
    let mutated = (0..seeds.len(), proptest::collection::vec(mutation(), 0..8))
        .prop_map(move |(i, muts)| apply(seeds[i].clone(), &muts, tokens));
    prop_oneof![9 => mutated, 1 => raw].boxed()
}
