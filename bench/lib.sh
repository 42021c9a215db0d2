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

# From wrk --latency's output ($1): requests per second, and the p99 latency in milliseconds.
wrk_rps() { awk '/Requests\/sec/ {print $2}' <<<"$1"; }
wrk_p99_ms() {
  awk '$1=="99%" {v=$2; if (v ~ /us$/) {sub(/us/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v*=1000}; print v}' <<<"$1"
}
