# Shared by the benchmark scripts (sourced): a scratch directory, processes killed on exit, and
# the upstream every benchmark proxies to.
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
# No console: several nodes run side by side, and Kong's default 0.0.0.0:8002 holds one.
export KONG_ADMIN_GUI_LISTEN=off

# An nginx (one worker, keep-alive) answering a small static body on 127.0.0.1:$1.
start_upstream() {
  cat >"$work/upstream.conf" <<NGX
worker_processes 1; daemon off; pid $work/up.pid; error_log $work/up.err;
events { worker_connections 4096; }
http { access_log off;
  server { listen 127.0.0.1:$1 reuseport; keepalive_requests 1000000;
    location / { return 200 "hello from the upstream\n"; } } }
NGX
  nginx -c "$work/upstream.conf" -p "$work" & pids+=($!)
}

# The nginx reference proxies to 127.0.0.1:$2 written to $1, with the first line $5 (how nginx
# runs: `worker_processes 1`, or `master_process off` under valgrind): on 127.0.0.1:$3 a plain
# `proxy_pass` (X-Forwarded-For only), on 127.0.0.1:$4 one that adds the headers Gantry adds as
# Kong does (X-Forwarded-*, X-Real-IP, Via and X-Kong-Request-Id upstream; Via, the latencies and
# the request id to the client). Both keep upstream connections as Gantry's bench settings do.
nginx_proxies() {
  local log=off
  [ -z "${ACCESS_LOG:-}" ] || log=$work/ngx-access.log
  cat >"$1" <<NGX
$5; daemon off; pid $work/ngx.pid; error_log $work/ngx.err;
events { worker_connections 4096; }
http { access_log $log;
  upstream up { server 127.0.0.1:$2; keepalive 128; keepalive_requests 1000000; }
  server { listen 127.0.0.1:$3; keepalive_requests 1000000;
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for; } }
  server { listen 127.0.0.1:$4; keepalive_requests 1000000;
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto \$scheme; proxy_set_header X-Forwarded-Host \$host;
      proxy_set_header X-Forwarded-Port \$server_port; proxy_set_header X-Forwarded-Path \$uri;
      proxy_set_header X-Real-IP \$remote_addr; proxy_set_header Via "1.1 nginx";
      proxy_set_header X-Kong-Request-Id \$request_id;
      add_header X-Kong-Upstream-Latency \$upstream_response_time; add_header X-Kong-Proxy-Latency 0;
      add_header Via "1.1 nginx"; add_header X-Kong-Request-Id \$request_id; } } }
NGX
}

# A declarative configuration ($1) with one service to 127.0.0.1:$2 and a route on `/`.
plain_config() {
  cat >"$1" <<YML
_format_version: "3.0"
services:
- name: up
  url: http://127.0.0.1:$2
  routes:
  - name: all
    paths: [/]
YML
}

# A DB-less Gantry with one worker on 127.0.0.1:$2 serving the configuration $1, from the binary
# $GANTRY (prefix $work/$3); its pid goes to pids and to the variable named by $4.
start_gantry() {
  KONG_DATABASE=off KONG_DECLARATIVE_CONFIG="$1" KONG_WORKER_THREADS=1 KONG_LOG_LEVEL=error KONG_PROXY_ACCESS_LOG=${ACCESS_LOG:-off} \
    KONG_PROXY_LISTEN=127.0.0.1:$2 KONG_ADMIN_LISTEN=127.0.0.1:0 KONG_STATUS_LISTEN=off \
    ${GANTRY_BIN:-$GANTRY} start -p "$work/$3" 2>"$work/$3.err" &
  pids+=($!)
  printf -v "$4" %s $!
}

# From wrk --latency's output ($1): requests per second, and the p99 latency in milliseconds.
wrk_rps() { awk '/Requests\/sec/ {print $2}' <<<"$1"; }
wrk_p99_ms() {
  awk '$1=="99%" {v=$2; if (v ~ /us$/) {sub(/us/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v*=1000}; print v}' <<<"$1"
}
