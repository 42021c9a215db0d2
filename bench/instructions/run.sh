#!/usr/bin/env bash
# User-space instructions per proxied request, counted by valgrind's callgrind: Gantry
# (`worker_threads = 1`) and nginx (one process, `master_process off`), each proxying to the same
# local nginx upstream over a plain route, driven by h2load over HTTP/1.1 keep-alive. Nginx twice:
# a plain `proxy_pass`, and adding the headers Gantry adds (as bench/proxy-vs-nginx's
# `nginx-kong`). A count, not a time: the same on a busy machine and a quiet one, so two builds
# compare to a fraction of a per cent where wrk's figures move by 5-10% between runs (kernel time,
# which is the larger part, is not in it: see bench/proxy-vs-nginx for that).
# Usage: bash bench/instructions/run.sh [GANTRY_BINARY...]   (default target/release/gantry)
# N: requests counted (default 10000), after 2000 that warm up. KEEP=DIR keeps the callgrind
# outputs there (callgrind_annotate reads them: where the instructions go). ACCESS_LOG=logs/access.log
# runs both with an access log (Gantry's default; nginx's default `combined` format).
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v valgrind >/dev/null || apt-get install -y valgrind >/dev/null
command -v h2load >/dev/null || apt-get install -y nghttp2-client >/dev/null
command -v nginx >/dev/null || apt-get install -y nginx-light >/dev/null
GANTRY=target/release/gantry
[ $# -gt 0 ] || { [ -x "$GANTRY" ] || cargo build --release; set -- "$GANTRY"; }
N=${N:-10000}
UP=18941 NGX=18942 NGK=18943
. bench/lib.sh
export KONG_UPSTREAM_KEEPALIVE_POOL_SIZE=128 KONG_UPSTREAM_KEEPALIVE_MAX_REQUESTS=1000000
start_upstream $UP
plain_config "$work/kong.yml" $UP

# Count the requests to 127.0.0.1:$1 made by process $2, whose callgrind output is $3.
count() {
  for _ in $(seq 600); do curl -sf "http://127.0.0.1:$1/" >/dev/null && break; sleep 0.2; done
  h2load --h1 -n 2000 -c 10 "http://127.0.0.1:$1/" >/dev/null
  rm -f "$3".*
  callgrind_control -z "$2" >/dev/null 2>&1
  callgrind_control -i on "$2" >/dev/null 2>&1
  h2load --h1 -n "$N" -c 10 "http://127.0.0.1:$1/" | grep -q "$N succeeded" || { echo "requests to :$1 failed" >&2; exit 1; }
  callgrind_control -d "$2" >/dev/null 2>&1
  callgrind_control -i off "$2" >/dev/null 2>&1
  local total
  total=$(cat "$3".* | awk '/^totals:/ {t = $2} END {print t}')
  [ -z "${KEEP:-}" ] || { mkdir -p "$KEEP"; cp "$3".* "$KEEP/"; }
  echo $((total / N))
}

nginx_proxies "$work/nginx.conf" $UP $NGX $NGK "master_process off"
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$work/ngx.cg" \
  nginx -c "$work/nginx.conf" -p "$work" 2>/dev/null &
ngx=$!
pids+=($ngx)
plain=$(count $NGX $ngx "$work/ngx.cg")
kong=$(count $NGK $ngx "$work/ngx.cg")
echo "instructions per request (user space, callgrind, $N requests, h2load --h1 -c10)"
echo "nginx proxy_pass: $plain"
echo "nginx adding Kong's headers: $kong"
port=18950
for bin in "$@"; do
  port=$((port + 1))
  GANTRY_BIN="valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file=$work/g$port.cg $bin" \
    start_gantry "$work/kong.yml" $port g$port gan
  n=$(count $port "$gan" "$work/g$port.cg")
  kill "$gan" 2>/dev/null || true
  awk -v b="$bin" -v n="$n" -v p="$plain" -v k="$kong" \
    'BEGIN { printf "gantry %s: %d (%.2f of nginx proxy_pass, %.2f of nginx with Kong'"'"'s headers)\n", b, n, n / p, n / k }'
done
