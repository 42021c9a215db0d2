#!/usr/bin/env bash
# db_import of 10,000 services, 10,000 routes and 50,000 consumers (+10,000 keys) into SQLite:
# wall time and peak RSS; then db_export of the same store.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -x target/release/gantry ] || cargo build --release
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 bench/db-import/gen.py "${SERVICES:-10000}" "${CONSUMERS:-50000}" "$work/big.yml"
echo "file: $(du -h "$work/big.yml" | cut -f1), $(grep -c '^- name: svc' "$work/big.yml") services, $(grep -c '^- username' "$work/big.yml") consumers"
measure() {
  /usr/bin/time -v "$@" 2>"$work/time" >"$work/out" || { cat "$work/out" "$work/time"; exit 1; }
  wall=$(sed -n 's/.*Elapsed (wall clock) time (h:mm:ss or m:ss): //p' "$work/time")
  rss=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$work/time")
  echo "  wall $wall, peak RSS $((rss / 1024)) MiB"
}
echo "== gantry config db_import (SQLite)"
measure target/release/gantry config db_import "$work/big.yml" -p "$work/prefix"
grep -E "^(imported|configuration hash)" "$work/out" | sed 's/^/  /'
echo "== gantry config db_export"
measure target/release/gantry config db_export "$work/export.yml" -p "$work/prefix"
echo "== gantry config db_import again (all entities present: upsert path)"
measure target/release/gantry config db_import "$work/big.yml" -p "$work/prefix"
