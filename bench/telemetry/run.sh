#!/usr/bin/env bash
# What analytics cost a data plane: two data planes (worker_threads = 1) of one control plane
# proxy to the same local upstream (nginx answering a small body); one sends analytics
# (vitals = on, cluster_telemetry_endpoint set), the other does not. wrk on loopback, runs
# alternating; prints each run and the throughput ratio (on / off). A third data plane with the
# access log on shows that log's cost too.
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v wrk >/dev/null || apt-get install -y wrk >/dev/null
command -v nginx >/dev/null || apt-get install -y nginx-light >/dev/null
cargo build --release -q
DUR=${DUR:-10s}
CONNS=${CONNS:-50}
ROUNDS=${ROUNDS:-3}
UP=18911 ADMIN=18912 CL=18913 TL=18914 ON=18915 OFF=18916 LOG=18917
. bench/lib.sh
bin=target/release/gantry
$bin hybrid gen_cert "$work/c.crt" "$work/c.key" >/dev/null

start_upstream $UP
common=(KONG_CLUSTER_CERT="$work/c.crt" KONG_CLUSTER_CERT_KEY="$work/c.key" KONG_LOG_LEVEL=error)
env "${common[@]}" KONG_ROLE=control_plane KONG_ADMIN_LISTEN=127.0.0.1:$ADMIN \
  KONG_CLUSTER_LISTEN=127.0.0.1:$CL KONG_CLUSTER_TELEMETRY_LISTEN=127.0.0.1:$TL KONG_STATUS_LISTEN=off \
  $bin start -p "$work/cp" 2>"$work/cp.err" & pids+=($!)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$ADMIN/" >/dev/null && break; sleep 0.1; done
curl -sf -XPOST "http://127.0.0.1:$ADMIN/services" -d name=up -d url="http://127.0.0.1:$UP" >/dev/null
curl -sf -XPOST "http://127.0.0.1:$ADMIN/services/up/routes" -d 'paths[]=/' >/dev/null
dp() { # name port extra-env...
  local name=$1 port=$2; shift 2
  env "${common[@]}" KONG_ROLE=data_plane KONG_DATABASE=off KONG_WORKER_THREADS=1 \
    KONG_CLUSTER_CONTROL_PLANE=127.0.0.1:$CL KONG_PROXY_LISTEN=127.0.0.1:$port KONG_STATUS_LISTEN=off \
    "$@" $bin start -p "$work/$name" 2>"$work/$name.err" & pids+=($!)
}
dp on $ON KONG_PROXY_ACCESS_LOG=off KONG_VITALS=on KONG_CLUSTER_TELEMETRY_ENDPOINT=127.0.0.1:$TL
dp off $OFF KONG_PROXY_ACCESS_LOG=off
dp log $LOG
for port in $ON $OFF $LOG; do
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/" >/dev/null && break; sleep 0.1; done
done

run() { # port -> rps
  wrk -t1 -c"$CONNS" -d"$DUR" "http://127.0.0.1:$1/" | awk '/Requests\/sec/ {print $2}'
}
on_sum=0 off_sum=0 log_sum=0
for r in $(seq "$ROUNDS"); do
  off=$(run $OFF); on=$(run $ON); log=$(run $LOG)
  echo "round $r: telemetry off $off req/s, telemetry on $on req/s, access log on $log req/s"
  off_sum=$(awk -v a="$off_sum" -v b="$off" 'BEGIN {print a + b}')
  on_sum=$(awk -v a="$on_sum" -v b="$on" 'BEGIN {print a + b}')
  log_sum=$(awk -v a="$log_sum" -v b="$log" 'BEGIN {print a + b}')
done
awk -v on="$on_sum" -v off="$off_sum" -v lg="$log_sum" 'BEGIN {
  printf "telemetry on / off throughput: %.3f (goal >= 0.97)\naccess log on / off throughput: %.3f\n", on / off, lg / off }'
# The analytics the control plane holds for that traffic.
curl -s "http://127.0.0.1:$ADMIN/analytics/requests?group_by=status" | head -c 600; echo
