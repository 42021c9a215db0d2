#!/usr/bin/env bash
# Two Gantry builds side by side: the same nginx upstream, worker_threads = 1, wrk -t1 -c50
# alternating between them. Prints each run and B/A, the throughput ratio.
# Usage: bash bench/ab/run.sh BUILD_A BUILD_B [ROUNDS=3] [DUR=6s]
# (e.g. git worktree add /tmp/base HEAD~1 && (cd /tmp/base && CARGO_TARGET_DIR=/tmp/t cargo build --release)
# for the build before a change).
set -u
A=$1 B=$2 R=${3:-3} D=${4:-6s}
cd "$(dirname "$0")/../.."
command -v wrk >/dev/null && command -v nginx >/dev/null || apt-get install -y -q wrk nginx >/dev/null
work=$(mktemp -d); pids=()
trap 'kill ${pids[@]} 2>/dev/null; rm -rf $work' EXIT
cat > $work/up.conf <<NGX
worker_processes 1; daemon off; pid $work/up.pid; error_log $work/up.err;
events { worker_connections 4096; }
http { access_log off; server { listen 127.0.0.1:18911; keepalive_requests 1000000; location / { return 200 "hello"; } } }
NGX
nginx -c $work/up.conf -p $work & pids+=($!)
cat > $work/kong.yml <<YML
_format_version: "3.0"
services:
- name: up
  url: http://127.0.0.1:18911
  routes:
  - name: all
    paths: [/]
YML
export KONG_UPSTREAM_KEEPALIVE_POOL_SIZE=128 KONG_UPSTREAM_KEEPALIVE_MAX_REQUESTS=1000000
for x in A:18912 B:18913; do n=${x%%:*}; p=${x##*:}; bin=${!n}
KONG_DATABASE=off KONG_DECLARATIVE_CONFIG=$work/kong.yml KONG_WORKER_THREADS=1 KONG_LOG_LEVEL=error KONG_PROXY_ACCESS_LOG=off \
  KONG_PROXY_LISTEN=127.0.0.1:$p KONG_ADMIN_LISTEN=127.0.0.1:0 KONG_STATUS_LISTEN=off "$bin" start -p $work/$n 2>$work/$n.err & pids+=($!)
done
for _ in $(seq 100); do curl -sf http://127.0.0.1:18912/ >/dev/null && curl -sf http://127.0.0.1:18913/ >/dev/null && break; sleep 0.1; done
for i in $(seq $R); do for x in A:18912 B:18913; do
  echo "${x%%:*} $(wrk -t1 -c50 -d$D --latency http://127.0.0.1:${x##*:}/ | awk '/Requests\/sec/ {print $2} $1=="99%" {print $2}' | tr '\n' ' ')"
done; done | tee $work/res
awk '{n[$1]++; r[$1]+=$3} END {printf "A %.0f B %.0f B/A %.3f\n", r["A"]/n["A"], r["B"]/n["B"], (r["B"]/n["B"])/(r["A"]/n["A"])}' $work/res
