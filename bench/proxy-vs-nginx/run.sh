#!/usr/bin/env bash
# Gantry (worker_threads = 1) against nginx (one worker, upstream keepalive), both proxying to
# the same local upstream (an nginx answering a small static body), wrk on loopback, runs
# alternating. Prints each run, then the throughput and p99 ratios (gantry / nginx).
# Two nginx configurations: `nginx`, a plain proxy_pass (X-Forwarded-For only), and
# `nginx-kong`, which adds the headers Gantry adds as Kong does (X-Forwarded-*, X-Real-IP, Via and
# a request id upstream; Via, latencies and the request id downstream): the same work per request.
# Also: HTTPS (wrk) and h2 (h2load) against nginx `ssl` / `http2` with the same certificate;
# Gantry with jwt, basic-auth and acl against Gantry plain, acl among 10,000 consumers, and
# Gantry's RSS with 5,000 routes loaded.
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v wrk >/dev/null || apt-get install -y wrk >/dev/null
command -v nginx >/dev/null || apt-get install -y nginx-light >/dev/null
# GANTRY: the binary to measure. BASE: another build, measured in the same rounds as
# `gantry-base` (plain HTTP/1.1), to compare two builds in one run. PLAIN_ONLY=1: stop after
# the plain HTTP/1.1 table.
GANTRY=${GANTRY:-target/release/gantry}
BASE=${BASE:-}
[ -x "$GANTRY" ] || cargo build --release
DUR=${DUR:-10s}
CONNS=${CONNS:-50}
ROUNDS=${ROUNDS:-3}
UP=18901 NGX=18902 GAN=18903 NGK=18906
. bench/lib.sh
# Upstream keep-alive as the nginx reference's (keepalive 128, keepalive_requests 1000000).
export KONG_UPSTREAM_KEEPALIVE_POOL_SIZE=128 KONG_UPSTREAM_KEEPALIVE_MAX_REQUESTS=1000000

start_upstream $UP
nginx_proxies "$work/nginx.conf" $UP $NGX $NGK "worker_processes 1"
plain_config "$work/kong.yml" $UP
nginx -c "$work/nginx.conf" -p "$work" & ngx_master=$!; pids+=($ngx_master)
start_gantry "$work/kong.yml" $GAN gantry gan_pid
GBASE=18904
if [ -n "$BASE" ]; then
  GANTRY_BIN=$BASE start_gantry "$work/kong.yml" $GBASE gbase base_pid
fi
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$GAN/" >/dev/null && curl -sf "http://127.0.0.1:$NGX/" >/dev/null && curl -sf "http://127.0.0.1:$NGK/" >/dev/null &&
    { [ -z "$BASE" ] || curl -sf "http://127.0.0.1:$GBASE/" >/dev/null; } && break
  sleep 0.1
done

# CPU a process spent, user and kernel, in clock ticks (fields 14 and 15 of /proc/PID/stat).
cpu() { awk '{ sub(/^.*\) /, ""); print $12, $13 }' "/proc/$1/stat"; }
ngx_worker=$(pgrep -P "$ngx_master" | head -n 1)
tick=$(getconf CLK_TCK)
run() { # name port [pid] -> "rps p99_ms user_us kernel_us" (CPU per request when pid is given)
  local out rps p99 before after reqs split=""
  [ -n "${3:-}" ] && before=$(cpu "$3")
  out=$(wrk -t1 -c"$CONNS" -d"$DUR" --latency "http://127.0.0.1:$2/")
  if [ -n "${3:-}" ]; then
    after=$(cpu "$3")
    reqs=$(awk '/requests in/ {print $1}' <<<"$out")
    split=$(awk -v b="$before" -v a="$after" -v n="$reqs" -v t="$tick" 'BEGIN { split(b, x, " "); split(a, y, " "); printf "%.2f %.2f", (y[1]-x[1])*1e6/t/n, (y[2]-x[2])*1e6/t/n }')
  fi
  rps=$(wrk_rps "$out")
  p99=$(wrk_p99_ms "$out")
  echo "$1 $rps $p99 ${split:-}"
}
echo "wrk -t1 -c$CONNS -d$DUR, $ROUNDS alternating rounds, $(nproc) cores"
: >"$work/results"
for i in $(seq "$ROUNDS"); do
  run gantry $GAN "$gan_pid" | tee -a "$work/results"
  run nginx $NGX "$ngx_worker" | tee -a "$work/results"
  run nginx-kong $NGK | tee -a "$work/results"
  [ -z "$BASE" ] || run gantry-base $GBASE "$base_pid" | tee -a "$work/results"
done
awk '{ n[$1]++; r[$1]+=$2; p[$1]+=$3; u[$1]+=$4; k[$1]+=$5 }
     END { printf "CPU per request (from /proc/PID/stat over the runs): gantry user %.2f us, kernel %.2f us | nginx worker user %.2f us, kernel %.2f us\n", u["gantry"]/n["gantry"], k["gantry"]/n["gantry"], u["nginx"]/n["nginx"], k["nginx"]/n["nginx"]; printf "mean: gantry %.0f req/s p99 %.2f ms | nginx %.0f req/s p99 %.2f ms | nginx-kong %.0f req/s p99 %.2f ms\n", r["gantry"]/n["gantry"], p["gantry"]/n["gantry"], r["nginx"]/n["nginx"], p["nginx"]/n["nginx"], r["nginx-kong"]/n["nginx-kong"], p["nginx-kong"]/n["nginx-kong"];
           printf "throughput ratio gantry/nginx: %.2f   p99 ratio gantry/nginx: %.2f\n", (r["gantry"]/n["gantry"])/(r["nginx"]/n["nginx"]), (p["gantry"]/n["gantry"])/(p["nginx"]/n["nginx"]);
           printf "same headers: throughput ratio gantry/nginx-kong: %.2f   p99 ratio: %.2f\n", (r["gantry"]/n["gantry"])/(r["nginx-kong"]/n["nginx-kong"]), (p["gantry"]/n["gantry"])/(p["nginx-kong"]/n["nginx-kong"]);
           if (n["gantry-base"]) printf "gantry-base: %.0f req/s p99 %.2f ms, user %.2f us, kernel %.2f us; gantry/gantry-base: throughput %.2f, p99 %.2f\n", r["gantry-base"]/n["gantry-base"], p["gantry-base"]/n["gantry-base"], u["gantry-base"]/n["gantry-base"], k["gantry-base"]/n["gantry-base"], (r["gantry"]/n["gantry"])/(r["gantry-base"]/n["gantry-base"]), (p["gantry"]/n["gantry"])/(p["gantry-base"]/n["gantry-base"]) }' "$work/results"
[ "${PLAIN_ONLY:-}" = 1 ] && exit 0

# HTTPS and HTTP/2: the same proxying over TLS (one RSA 2048 certificate for both, TLS session
# cache on both, keep-alive), wrk for HTTPS (HTTP/1.1) and h2load for h2 (ALPN), one worker each.
command -v h2load >/dev/null || apt-get install -y nghttp2-client >/dev/null
NGS=18910 NGH=18911 GS=18912 GH=18913
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$work/tls.key" -out "$work/tls.crt" \
  -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -days 2 2>/dev/null
cat >"$work/nginx-tls.conf" <<NGX
worker_processes 1; daemon off; pid $work/ngx-tls.pid; error_log $work/ngx-tls.err;
events { worker_connections 4096; }
http { access_log off;
  upstream up { server 127.0.0.1:$UP; keepalive 128; keepalive_requests 1000000; }
  ssl_certificate $work/tls.crt; ssl_certificate_key $work/tls.key;
  ssl_session_cache shared:TLS:10m; ssl_session_tickets on;
  server { listen 127.0.0.1:$NGS ssl; keepalive_requests 1000000;
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for; } }
  server { listen 127.0.0.1:$NGH ssl http2; keepalive_requests 1000000;
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for; } } }
NGX
python3 - "$work/tls.yml" "$UP" "$work/tls.crt" "$work/tls.key" <<'PY'
import json, sys
path, port, crt, key = sys.argv[1:5]
json.dump({"_format_version": "3.0",
           "services": [{"name": "up", "url": f"http://127.0.0.1:{port}", "routes": [{"name": "all", "paths": ["/"]}]}],
           "certificates": [{"cert": open(crt).read(), "key": open(key).read(), "snis": [{"name": "localhost"}]}]},
          open(path, "w"))
PY
nginx -c "$work/nginx-tls.conf" -p "$work" & pids+=($!)
KONG_DATABASE=off KONG_DECLARATIVE_CONFIG="$work/tls.yml" KONG_WORKER_THREADS=1 KONG_LOG_LEVEL=error KONG_PROXY_ACCESS_LOG=off \
  KONG_PROXY_LISTEN="127.0.0.1:$GS ssl, 127.0.0.1:$GH ssl http2" KONG_ADMIN_LISTEN=127.0.0.1:0 KONG_STATUS_LISTEN=off \
  "$GANTRY" start -p "$work/gtls" 2>"$work/gtls.err" & pids+=($!)
for _ in $(seq 100); do
  curl -skf "https://localhost:$GS/" --resolve "localhost:$GS:127.0.0.1" >/dev/null &&
    curl -skf "https://localhost:$NGS/" --resolve "localhost:$NGS:127.0.0.1" >/dev/null && break
  sleep 0.1
done
runs() { # name port -> "rps p99_ms" over HTTPS
  local out rps p99
  out=$(wrk -t1 -c"$CONNS" -d"$DUR" --latency "https://localhost:$2/")
  rps=$(wrk_rps "$out")
  p99=$(wrk_p99_ms "$out")
  echo "$1 $rps $p99"
}
runh2() { # name port -> "rps" over h2 (10 connections x 10 streams)
  local out
  out=$(h2load -c10 -m10 -D"${DUR%s}" "https://localhost:$2/" 2>&1)
  grep -q " 0 failed" <<<"$out" || { echo "h2load saw failures on $1:" >&2; grep -E "requests:|status codes:" <<<"$out" >&2; }
  echo "$1 $(awk '/^finished in/ {print $4}' <<<"$out")"
}
: >"$work/tlsres"
: >"$work/h2res"
for i in $(seq "$ROUNDS"); do
  runs gantry $GS | tee -a "$work/tlsres"
  runs nginx $NGS | tee -a "$work/tlsres"
  runh2 gantry-h2 $GH | tee -a "$work/h2res"
  runh2 nginx-h2 $NGH | tee -a "$work/h2res"
done
awk '{ n[$1]++; r[$1]+=$2; p[$1]+=$3 } END {
  printf "HTTPS: gantry %.0f req/s p99 %.2f ms | nginx %.0f req/s p99 %.2f ms | throughput ratio %.2f, p99 ratio %.2f\n", r["gantry"]/n["gantry"], p["gantry"]/n["gantry"], r["nginx"]/n["nginx"], p["nginx"]/n["nginx"], (r["gantry"]/n["gantry"])/(r["nginx"]/n["nginx"]), (p["gantry"]/n["gantry"])/(p["nginx"]/n["nginx"]) }' "$work/tlsres"
awk '{ n[$1]++; r[$1]+=$2 } END {
  printf "h2 (h2load -c10 -m10): gantry %.0f req/s | nginx %.0f req/s | throughput ratio %.2f\n", r["gantry-h2"]/n["gantry-h2"], r["nginx-h2"]/n["nginx-h2"], (r["gantry-h2"]/n["gantry-h2"])/(r["nginx-h2"]/n["nginx-h2"]) }' "$work/h2res"

# The same Gantry with key-auth and rate-limiting on the route, against Gantry plain: the
# `local` policy, and the `redis` policy on 127.0.0.1:6379 (when a Redis answers there).
PLUG=18905
cat >"$work/plugins.yml" <<YML
_format_version: "3.0"
services:
- name: up
  url: http://127.0.0.1:$UP
  routes:
  - name: all
    paths: [/]
    plugins:
    - name: key-auth
    - name: rate-limiting
      config: { second: 1000000000, policy: local }
  - name: redis
    paths: [/redis]
    plugins:
    - name: key-auth
    - name: rate-limiting
      config: { second: 1000000000, policy: redis, redis: { host: 127.0.0.1, port: 6379 } }
consumers:
- username: bench
  keyauth_credentials: [{ key: bench-key }]
YML
KONG_DATABASE=off KONG_DECLARATIVE_CONFIG="$work/plugins.yml" KONG_WORKER_THREADS=1 KONG_LOG_LEVEL=error KONG_PROXY_ACCESS_LOG=off \
  KONG_PROXY_LISTEN=127.0.0.1:$PLUG KONG_ADMIN_LISTEN=127.0.0.1:0 KONG_STATUS_LISTEN=off \
  "$GANTRY" start -p "$work/gplug" 2>"$work/gplug.err" & pids+=($!)
for _ in $(seq 100); do curl -sf -H "apikey: bench-key" "http://127.0.0.1:$PLUG/" >/dev/null && break; sleep 0.1; done
runh() { # name port header [path]
  local out rps
  out=$(wrk -t1 -c"$CONNS" -d"$DUR" -H "$3" "http://127.0.0.1:$2/${4:-}")
  rps=$(wrk_rps "$out")
  echo "$1 $rps"
}
: >"$work/plugres"
for i in $(seq "$ROUNDS"); do
  runh plain $GAN "x-bench: 1" | tee -a "$work/plugres"
  runh plugins $PLUG "apikey: bench-key" | tee -a "$work/plugres"
  if redis-cli -h 127.0.0.1 ping >/dev/null 2>&1; then
    runh redis $PLUG "apikey: bench-key" redis | tee -a "$work/plugres"
  fi
done
awk '{ n[$1]++; r[$1]+=$2 } END { printf "key-auth + rate-limiting (local): %.0f req/s, plain %.0f req/s, ratio %.2f\n", r["plugins"]/n["plugins"], r["plain"]/n["plain"], (r["plugins"]/n["plugins"])/(r["plain"]/n["plain"])
  if (n["redis"]) printf "key-auth + rate-limiting (redis): %.0f req/s, ratio %.2f\n", r["redis"]/n["redis"], (r["redis"]/n["redis"])/(r["plain"]/n["plain"]) }' "$work/plugres"

# Authentication, against Gantry plain, in one process: jwt (RS256), basic-auth, and key-auth
# with acl; then the acl route again on a Gantry holding 10,000 consumers (each with a key
# and a group) against one holding 10: the consumer and group lookups should cost the same.
AUTH=18907 AUTHBIG=18908
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$work/rsa.pem" 2>/dev/null
openssl pkey -in "$work/rsa.pem" -pubout -out "$work/rsa.pub"
b64url() { base64 -w0 | tr '+/' '-_' | tr -d '='; }
jwt_signed="$(printf '{"alg":"RS256","typ":"JWT"}' | b64url).$(printf '{"iss":"bench-jwt"}' | b64url)"
jwt_token="$jwt_signed.$(printf %s "$jwt_signed" | openssl dgst -sha256 -sign "$work/rsa.pem" | b64url)"
auth_config() { # file consumers
  python3 - "$1" "$2" "$UP" "$work/rsa.pub" <<'PY'
import json, sys
path, n, port, pub = sys.argv[1], int(sys.argv[2]), sys.argv[3], open(sys.argv[4]).read()
routes = [("plain", []), ("jwt", [{"name": "jwt"}]), ("basic", [{"name": "basic-auth"}]),
          ("acl", [{"name": "key-auth"}, {"name": "acl", "config": {"allow": ["bench"]}}])]
conf = {"_format_version": "3.0", "services": [{"name": "up", "url": f"http://127.0.0.1:{port}",
        "routes": [{"name": r, "paths": [f"/{r}"], "plugins": p} for r, p in routes]}],
        "consumers": [{"username": f"c{i}", "keyauth_credentials": [{"key": f"key-{i}"}],
                       "acls": [{"group": "bench" if i == 0 else f"g{i % 50}"}]} for i in range(n)]}
conf["consumers"][0]["jwt_secrets"] = [{"key": "bench-jwt", "algorithm": "RS256", "rsa_public_key": pub}]
conf["consumers"][0]["basicauth_credentials"] = [{"username": "bench", "password": "bench-pw"}]
json.dump(conf, open(path, "w"))
PY
}
auth_config "$work/auth.json" 10
auth_config "$work/authbig.json" 10000
for pair in "$AUTH auth" "$AUTHBIG authbig"; do
  set -- $pair
  KONG_DATABASE=off KONG_DECLARATIVE_CONFIG="$work/$2.json" KONG_WORKER_THREADS=1 KONG_LOG_LEVEL=error KONG_PROXY_ACCESS_LOG=off \
    KONG_PROXY_LISTEN=127.0.0.1:$1 KONG_ADMIN_LISTEN=127.0.0.1:0 KONG_STATUS_LISTEN=off \
    "$GANTRY" start -p "$work/$2" 2>"$work/$2.err" & pids+=($!)
done
basic="Authorization: Basic $(printf bench:bench-pw | base64 -w0)"
for _ in $(seq 300); do
  curl -sf -H "apikey: key-0" "http://127.0.0.1:$AUTHBIG/acl" >/dev/null &&
    curl -sf -H "$basic" "http://127.0.0.1:$AUTH/basic" >/dev/null && break
  sleep 0.1
done
curl -sf -H "Authorization: Bearer $jwt_token" "http://127.0.0.1:$AUTH/jwt" >/dev/null || { echo "the jwt token is refused"; exit 1; }
runp() { # name port path header
  local out
  out=$(wrk -t1 -c"$CONNS" -d"$DUR" -H "$4" "http://127.0.0.1:$2$3")
  echo "$1 $(awk '/Requests\/sec/ {print $2}' <<<"$out")"
}
: >"$work/authres"
for i in $(seq "$ROUNDS"); do
  runp plain $AUTH /plain "x-bench: 1" | tee -a "$work/authres"
  runp jwt $AUTH /jwt "Authorization: Bearer $jwt_token" | tee -a "$work/authres"
  runp basic $AUTH /basic "$basic" | tee -a "$work/authres"
  runp acl10 $AUTH /acl "apikey: key-0" | tee -a "$work/authres"
  runp acl10000 $AUTHBIG /acl "apikey: key-0" | tee -a "$work/authres"
done
awk '{ n[$1]++; r[$1]+=$2 } END {
  m = r["plain"]/n["plain"]
  printf "jwt (RS256): %.0f req/s, %.2f of plain (%.0f req/s); basic-auth: %.0f req/s, %.2f of plain\n", r["jwt"]/n["jwt"], (r["jwt"]/n["jwt"])/m, m, r["basic"]/n["basic"], (r["basic"]/n["basic"])/m
  printf "key-auth + acl: %.0f req/s with 10 consumers, %.0f with 10,000 (ratio %.2f)\n", r["acl10"]/n["acl10"], r["acl10000"]/n["acl10000"], (r["acl10000"]/n["acl10000"])/(r["acl10"]/n["acl10"]) }' "$work/authres"

# RSS with 5,000 routes loaded.
python3 - "$work/routes.yml" "$UP" <<'PY'
import sys
path, port = sys.argv[1], sys.argv[2]
with open(path, "w") as f:
    f.write('_format_version: "3.0"\nservices:\n- name: up\n  url: http://127.0.0.1:%s\n  routes:\n' % port)
    for i in range(5000):
        f.write(f"  - name: r{i}\n    paths: [/svc/{i}]\n    methods: [GET]\n")
PY
KONG_DATABASE=off KONG_DECLARATIVE_CONFIG="$work/routes.yml" KONG_WORKER_THREADS=1 KONG_LOG_LEVEL=error KONG_PROXY_ACCESS_LOG=off \
  KONG_PROXY_LISTEN=127.0.0.1:18915 KONG_ADMIN_LISTEN=127.0.0.1:0 KONG_STATUS_LISTEN=off \
  "$GANTRY" start -p "$work/g5k" 2>"$work/g5k.err" & g5k=$!; pids+=($g5k)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:18915/svc/4999" >/dev/null && break; sleep 0.1; done
wrk -t1 -c10 -d2s "http://127.0.0.1:18915/svc/2500" >/dev/null
echo "gantry RSS with 5,000 routes loaded (after 2 s of traffic): $(awk '/VmRSS/ {printf "%.1f MB", $2/1024}' /proc/$g5k/status)"
