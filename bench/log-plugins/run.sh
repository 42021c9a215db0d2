#!/usr/bin/env bash
# The log plugins against Gantry plain, in one Gantry process (worker_threads = 1), wrk on
# loopback, runs alternating: prometheus with every flag on, http-log to a local sink (the
# upstream nginx, which answers POSTs too) in batches of 100 and with Kong's default batch of 1,
# and file-log; and, on a second Gantry process started with tracing_instrumentations = all,
# opentelemetry at sampling_rate 1 to the same sink (`otel`) and plain on that process
# (`plain-traced`: what recording spans costs a request no plugin exports). Prints each run,
# then each plugin's throughput as a ratio of plain, and what the plugin queues dropped (from the
# status listeners' /metrics). OTEL=0 leaves opentelemetry out (to measure a build without it).
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v wrk >/dev/null || apt-get install -y wrk >/dev/null
command -v nginx >/dev/null || apt-get install -y nginx-light >/dev/null
GANTRY=${GANTRY:-target/release/gantry}
[ -x "$GANTRY" ] || cargo build --release
DUR=${DUR:-10s}
OTEL=${OTEL:-1}
CONNS=${CONNS:-50}
ROUNDS=${ROUNDS:-3}
UP=18921 GAN=18922 STATUS=18923 TRACED=18924 TSTATUS=18925
. bench/lib.sh
export KONG_UPSTREAM_KEEPALIVE_POOL_SIZE=128 KONG_UPSTREAM_KEEPALIVE_MAX_REQUESTS=1000000
start_upstream $UP
python3 - "$work/logs.json" "$UP" "$work/file.log" "$OTEL" <<'PY'
import json, sys
path, port, logfile, otel = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
sink = f"http://127.0.0.1:{port}/log"
flags = {f: True for f in ["per_consumer", "status_code_metrics", "latency_metrics",
                           "bandwidth_metrics", "upstream_health_metrics"]}
routes = [("plain", []),
          ("prometheus", [{"name": "prometheus", "config": flags}]),
          ("httplog100", [{"name": "http-log", "config": {"http_endpoint": sink + "/100",
                           "queue": {"max_batch_size": 100, "max_coalescing_delay": 1}}}]),
          ("httplog1", [{"name": "http-log", "config": {"http_endpoint": sink + "/1"}}]),
          ("filelog", [{"name": "file-log", "config": {"path": logfile}}]),
          ("otel", [{"name": "opentelemetry", "config": {"traces_endpoint": sink + "/otel",
                     "sampling_rate": 1}}])]
if not otel:
    routes = routes[:-1]
conf = {"_format_version": "3.0", "services": [{"name": "up", "url": f"http://127.0.0.1:{port}",
        "routes": [{"name": r, "paths": [f"/{r}"], "plugins": p} for r, p in routes]}]}
json.dump(conf, open(path, "w"))
PY
KONG_DATABASE=off KONG_DECLARATIVE_CONFIG="$work/logs.json" KONG_WORKER_THREADS=1 KONG_LOG_LEVEL=error KONG_PROXY_ACCESS_LOG=off \
  KONG_PROXY_LISTEN=127.0.0.1:$GAN KONG_ADMIN_LISTEN=127.0.0.1:0 KONG_STATUS_LISTEN=127.0.0.1:$STATUS \
  "$GANTRY" start -p "$work/g" 2>"$work/g.err" & pids+=($!)
[ "$OTEL" = 1 ] && KONG_DATABASE=off KONG_DECLARATIVE_CONFIG="$work/logs.json" KONG_WORKER_THREADS=1 KONG_LOG_LEVEL=error KONG_PROXY_ACCESS_LOG=off \
  KONG_TRACING_INSTRUMENTATIONS=all \
  KONG_PROXY_LISTEN=127.0.0.1:$TRACED KONG_ADMIN_LISTEN=127.0.0.1:0 KONG_STATUS_LISTEN=127.0.0.1:$TSTATUS \
  "$GANTRY" start -p "$work/t" 2>"$work/t.err" & pids+=($!)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$GAN/filelog" >/dev/null && break; sleep 0.1; done
if [ "$OTEL" = 1 ]; then
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$TRACED/otel" >/dev/null && break; sleep 0.1; done
fi
run() { # name [port path]
  local out
  out=$(wrk -t1 -c"$CONNS" -d"$DUR" "http://127.0.0.1:${2:-$GAN}/${3:-$1}")
  echo "$1 $(awk '/Requests\/sec/ {print $2}' <<<"$out")"
}
: >"$work/res"
for i in $(seq "$ROUNDS"); do
  for r in plain prometheus httplog100 httplog1 filelog; do run $r | tee -a "$work/res"; done
  if [ "$OTEL" = 1 ]; then
    run otel "$TRACED" otel | tee -a "$work/res"
    run plain-traced "$TRACED" plain | tee -a "$work/res"
  fi
done
awk '{ n[$1]++; r[$1]+=$2 } END {
  m = r["plain"]/n["plain"]
  printf "plain %.0f req/s\n", m
  split("prometheus httplog100 httplog1 filelog otel plain-traced", names, " ")
  for (i = 1; i <= 6; i++) { k = names[i]; if (!n[k]) continue; printf "%s: %.0f req/s, %.2f of plain\n", k, r[k]/n[k], (r[k]/n[k])/m } }' "$work/res"
curl -s "http://127.0.0.1:$STATUS/metrics" | grep -E '^gantry_plugin_queue' || true
if [ "$OTEL" = 1 ]; then
  curl -s "http://127.0.0.1:$TSTATUS/metrics" | grep -E '^gantry_plugin_queue' || true
fi
