#!/usr/bin/env bash
# Admin API throughput on SQLite: writes/s and reads/s, measured with wrk on loopback.
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v wrk >/dev/null || apt-get install -y wrk >/dev/null
[ -x target/release/gantry ] || cargo build --release
DUR=${DUR:-10s}
prefix=$(mktemp -d)
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -rf "$prefix"' EXIT
KONG_ADMIN_LISTEN=127.0.0.1:0 KONG_LOG_LEVEL=warn target/release/gantry start -p "$prefix" 2>"$prefix/stderr" &
pid=$!
for _ in $(seq 100); do
  url=$(sed -n 's/^gantry: admin API listening on //p' "$prefix/stderr" | head -1)
  [ -n "$url" ] && break
  sleep 0.1
done
[ -n "$url" ] || { cat "$prefix/stderr"; exit 1; }
echo "gantry $(target/release/gantry version) on SQLite, $(nproc) cores, wrk $DUR"

echo "== writes: POST /consumers (2 threads, 16 connections)"
wrk -t2 -c16 -d"$DUR" -s bench/admin-api/post_consumer.lua "$url" | grep -E "Requests/sec|Latency|non-2xx"

python3 - "$url" <<'PY'
import json, sys, urllib.request
url = sys.argv[1]
for i in range(1000):
    req = urllib.request.Request(f"{url}/services", data=json.dumps({"name": f"svc-{i}", "host": f"h{i}.example"}).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    urllib.request.urlopen(req).read()
PY
echo "== reads: GET /services/{name} (2 threads, 16 connections, 1,000 services)"
wrk -t2 -c16 -d"$DUR" -s bench/admin-api/get_service.lua "$url" | grep -E "Requests/sec|Latency"
echo "== reads: GET /services?size=100 (a page of 100)"
wrk -t2 -c16 -d"$DUR" "$url/services?size=100" | grep -E "Requests/sec|Latency"
