#!/usr/bin/env bash
# Issue 18, item 2: io_uring against epoll for the proxy's I/O, on the proxy bench's set-up
# (wrk -t1 -c50 on loopback, one worker, the same nginx upstream, runs alternating): the same
# minimal keep-alive HTTP/1.1 relay (src/common.rs) on tokio's current-thread runtime (epoll,
# what a Gantry worker runs) and on monoio's io_uring driver, with nginx's proxy_pass and Gantry
# itself (worker_threads = 1) beside them. The relays do none of a gateway's work: they bound
# what the runtime alone could give.
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v wrk >/dev/null || apt-get install -y wrk >/dev/null
command -v nginx >/dev/null || apt-get install -y nginx-light >/dev/null
GANTRY=${GANTRY:-target/release/gantry}
[ -x "$GANTRY" ] || cargo build --release
(cd bench/uring && cargo build --release -q)
DUR=${DUR:-8s}
ROUNDS=${ROUNDS:-3}
UP=18921 NGX=18922 TOK=18923 URI=18924 GAN=18925
. bench/lib.sh
export KONG_UPSTREAM_KEEPALIVE_POOL_SIZE=128 KONG_UPSTREAM_KEEPALIVE_MAX_REQUESTS=1000000
start_upstream $UP
cat >"$work/nginx.conf" <<NGX
worker_processes 1; daemon off; pid $work/ngx.pid; error_log $work/ngx.err;
events { worker_connections 4096; }
http { access_log off;
  upstream up { server 127.0.0.1:$UP; keepalive 128; keepalive_requests 1000000; }
  server { listen 127.0.0.1:$NGX; keepalive_requests 1000000;
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
NGX
plain_config "$work/kong.yml" $UP
nginx -c "$work/nginx.conf" -p "$work" & pids+=($!)
bench/uring/target/release/tokio-proxy 127.0.0.1:$TOK 127.0.0.1:$UP & pids+=($!)
bench/uring/target/release/uring-proxy 127.0.0.1:$URI 127.0.0.1:$UP & pids+=($!)
start_gantry "$work/kong.yml" $GAN gantry gan_pid
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$GAN/" >/dev/null && curl -sf "http://127.0.0.1:$NGX/" >/dev/null &&
    curl -sf "http://127.0.0.1:$TOK/" >/dev/null && curl -sf "http://127.0.0.1:$URI/" >/dev/null && break
  sleep 0.1
done
run() { local out; out=$(wrk -t1 -c50 -d"$DUR" --latency "http://127.0.0.1:$2/"); echo "$1 $(wrk_rps "$out") $(wrk_p99_ms "$out")"; }
: >"$work/res"
for i in $(seq "$ROUNDS"); do
  run epoll $TOK | tee -a "$work/res"
  run io_uring $URI | tee -a "$work/res"
  run nginx $NGX | tee -a "$work/res"
  run gantry $GAN | tee -a "$work/res"
done
awk '{ n[$1]++; r[$1]+=$2; p[$1]+=$3 } END {
  for (k in n) printf "%-9s %8.0f req/s  p99 %.2f ms  (%.2f of nginx)\n", k, r[k]/n[k], p[k]/n[k], (r[k]/n[k])/(r["nginx"]/n["nginx"]);
  printf "io_uring / epoll: throughput %.2f, p99 %.2f\n", (r["io_uring"]/n["io_uring"])/(r["epoll"]/n["epoll"]), (p["io_uring"]/n["io_uring"])/(p["epoll"]/n["epoll"]) }' "$work/res"
