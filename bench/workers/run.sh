#!/usr/bin/env bash
# Workers: Gantry with worker_threads = 1 and 2 against nginx with worker_processes 1 and 2,
# each proxying to the same local upstream (an nginx answering a small static body, upstream
# keep-alive on both), wrk -t2 on loopback, runs alternating. Each Gantry worker has its own
# SO_REUSEPORT socket and accept loop, as each nginx worker has. Prints each run and the
# throughput and p99 ratios (gantry / nginx) at 1 and at 2 workers, and 2 workers against 1.
# On a 2-core machine wrk and the upstream share the cores with the workers: what 2 workers
# gain here is bounded by that, for both proxies alike.
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v wrk >/dev/null || apt-get install -y wrk >/dev/null
command -v nginx >/dev/null || apt-get install -y nginx-light >/dev/null
GANTRY=${GANTRY:-target/release/gantry}
[ -x "$GANTRY" ] || cargo build --release
DUR=${DUR:-10s}
CONNS=${CONNS:-100}
ROUNDS=${ROUNDS:-3}
UP=18951 N1=18952 N2=18953 G1=18954 G2=18955
. bench/lib.sh
export KONG_UPSTREAM_KEEPALIVE_POOL_SIZE=128 KONG_UPSTREAM_KEEPALIVE_MAX_REQUESTS=1000000
start_upstream $UP
for w in 1 2; do
  port=$([ $w = 1 ] && echo $N1 || echo $N2)
  cat >"$work/nginx$w.conf" <<NGX
worker_processes $w; daemon off; pid $work/ngx$w.pid; error_log $work/ngx$w.err;
events { worker_connections 4096; }
http { access_log off;
  upstream up { server 127.0.0.1:$UP; keepalive 128; keepalive_requests 1000000; }
  server { listen 127.0.0.1:$port reuseport; keepalive_requests 1000000;
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for; } } }
NGX
  nginx -c "$work/nginx$w.conf" -p "$work" & pids+=($!)
done
plain_config "$work/kong.yml" $UP
for w in 1 2; do
  port=$([ $w = 1 ] && echo $G1 || echo $G2)
  KONG_DATABASE=off KONG_DECLARATIVE_CONFIG="$work/kong.yml" KONG_WORKER_THREADS=$w KONG_LOG_LEVEL=error \
    KONG_PROXY_ACCESS_LOG=off KONG_PROXY_LISTEN=127.0.0.1:$port KONG_ADMIN_LISTEN=127.0.0.1:0 \
    KONG_ADMIN_GUI_LISTEN=off KONG_STATUS_LISTEN=off "$GANTRY" start -p "$work/gantry$w" 2>"$work/gantry$w.err" & pids+=($!)
done
for _ in $(seq 100); do
  ok=1; for p in $N1 $N2 $G1 $G2; do curl -sf -o /dev/null "http://127.0.0.1:$p/" || ok=0; done
  [ $ok = 1 ] && break; sleep 0.1
done
run() { # name port -> "name rps p99_ms"
  local out rps p99
  out=$(wrk -t2 -c"$CONNS" -d"$DUR" --latency "http://127.0.0.1:$2/")
  rps=$(wrk_rps "$out")
  p99=$(wrk_p99_ms "$out")
  echo "$1 $rps $p99"
}
echo "wrk -t2 -c$CONNS -d$DUR, $ROUNDS alternating rounds, $(nproc) cores"
: >"$work/results"
for i in $(seq "$ROUNDS"); do
  for c in "gantry-1 $G1" "nginx-1 $N1" "gantry-2 $G2" "nginx-2 $N2"; do run $c | tee -a "$work/results"; done
done
awk '{ n[$1]++; r[$1]+=$2; p[$1]+=$3 }
     END { for (k in n) { r[k]/=n[k]; p[k]/=n[k] }
           printf "1 worker:  gantry %.0f req/s p99 %.2f ms | nginx %.0f req/s p99 %.2f ms | throughput ratio %.2f, p99 ratio %.2f\n", r["gantry-1"], p["gantry-1"], r["nginx-1"], p["nginx-1"], r["gantry-1"]/r["nginx-1"], p["gantry-1"]/p["nginx-1"];
           printf "2 workers: gantry %.0f req/s p99 %.2f ms | nginx %.0f req/s p99 %.2f ms | throughput ratio %.2f, p99 ratio %.2f\n", r["gantry-2"], p["gantry-2"], r["nginx-2"], p["nginx-2"], r["gantry-2"]/r["nginx-2"], p["gantry-2"]/p["nginx-2"];
           printf "2 workers against 1: gantry %.2f, nginx %.2f\n", r["gantry-2"]/r["gantry-1"], r["nginx-2"]/r["nginx-1"] }' "$work/results"
