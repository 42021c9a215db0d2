#!/usr/bin/env bash
# Build the container image gantry:VERSION FROM scratch with the static binary.
#   dist/image.sh [VERSION]        (VERSION: the workspace's, by default)
#   BIN=path dist/image.sh V       (use a static binary built already; else dist/package.sh builds it)
# Prints the image's size.
set -euo pipefail
cd "$(dirname "$0")/.."
version="${1:-$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)}"
if [ -z "${BIN:-}" ]; then
  out="$(mktemp -d)"
  OUT="$out" dist/package.sh "$version" >&2
  tar -xzf "$out/gantry-$version-x86_64-linux.tar.gz" -C "$out"
  BIN="$out/gantry-$version-x86_64-linux/gantry"
fi
if ldd "$BIN" >/dev/null 2>&1; then
  echo "dist/image.sh: $BIN is dynamically linked; a FROM scratch image needs the static build (dist/package.sh)" >&2
  exit 1
fi
ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
cp dist/image/Dockerfile "$ctx/"
cp "$BIN" "$ctx/gantry"
cp /etc/ssl/certs/ca-certificates.crt "$ctx/"
echo 'gantry:x:65532:65532:gantry:/var/run/gantry:/sbin/nologin' >"$ctx/passwd"
echo 'gantry:x:65532:' >"$ctx/group"
mkdir "$ctx/empty"
docker build -q -t "gantry:$version" "$ctx" >/dev/null
echo "image:   gantry:$version, $(docker image inspect -f '{{.Size}}' "gantry:$version") bytes"
