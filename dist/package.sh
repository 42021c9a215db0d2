#!/usr/bin/env bash
# Build the static, stripped gantry binary and package a release of it:
#   dist/out/gantry-VERSION-x86_64-linux.tar.gz and its .sha256 (sha256sum's format),
# what install.sh --version VERSION installs. Prints the sizes and `ldd`'s verdict.
#
#   dist/package.sh [VERSION]      (VERSION: the workspace's, by default)
#   BIN=path dist/package.sh V     (package a binary built already, e.g. for tests)
#   OUT=dir ...                     (write the release there instead of dist/out)
#
# The static build links glibc statically (`-C target-feature=+crt-static`), and not as a
# position-independent executable (`-C relocation-model=static`), so that `ldd` says "not a
# dynamic executable" (a static PIE, the default, reads "statically linked"). `cargo build --release` itself is unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
version="${1:-$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)}"
out="${OUT:-dist/out}"
mkdir -p "$out"
if [ -z "${BIN:-}" ]; then
  RUSTFLAGS="-C target-feature=+crt-static -C relocation-model=static" \
    cargo build --release -p gantry --target x86_64-unknown-linux-gnu
  BIN=target/x86_64-unknown-linux-gnu/release/gantry
  strip_it=1
fi
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
dir="$stage/gantry-$version-x86_64-linux"
mkdir -p "$dir"
cp "$BIN" "$dir/gantry"
if [ -n "${strip_it:-}" ]; then
  strip "$dir/gantry"
fi
cp README.md "$dir/"
name="gantry-$version-x86_64-linux.tar.gz"
tar -czf "$out/$name" -C "$stage" "gantry-$version-x86_64-linux"
(cd "$out" && sha256sum "$name" >"$name.sha256")
echo "binary:  $(du -h "$dir/gantry" | cut -f1) ($(stat -c %s "$dir/gantry") bytes)"
echo "ldd:     $(ldd "$dir/gantry" 2>&1 | head -n 1)"
echo "release: $out/$name ($(du -h "$out/$name" | cut -f1)), $(cat "$out/$name.sha256")"
