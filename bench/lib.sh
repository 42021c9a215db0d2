# Shared by the benchmark scripts (sourced): a scratch directory, processes killed on exit, and
# the upstream every benchmark proxies to.
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

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
