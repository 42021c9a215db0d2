#!/usr/bin/env bash
# The console's size and speed: its first load (index.html, app.js, app.css) gzipped as the
# binary serves it, and the first paint of the Data Plane Nodes page with NODES (1,000) data
# planes in the registry, in Debian's Chromium (console/tests/nodes-perf.mjs, playwright-core),
# ROUNDS times. The registry is filled straight in the control plane's SQLite store (the rows
# a cluster listener writes), so no thousand processes are needed.
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v chromium >/dev/null || apt-get install -y chromium >/dev/null
[ -d console/node_modules/playwright-core ] || (cd console && npm ci --no-audit --no-fund --loglevel=error)
cargo build --release -q
NODES=${NODES:-1000}
ROUNDS=${ROUNDS:-3}
ADMIN=18931 GUI=18932 CL=18933 TL=18934
. bench/lib.sh
bin=target/release/gantry
$bin hybrid gen_cert "$work/c.crt" "$work/c.key" >/dev/null
export KONG_ROLE=control_plane KONG_DATABASE=sqlite KONG_CLUSTER_CERT="$work/c.crt" \
  KONG_CLUSTER_CERT_KEY="$work/c.key" KONG_ADMIN_LISTEN=127.0.0.1:$ADMIN \
  KONG_ADMIN_GUI_LISTEN=127.0.0.1:$GUI KONG_CLUSTER_LISTEN=127.0.0.1:$CL \
  KONG_CLUSTER_TELEMETRY_LISTEN=127.0.0.1:$TL KONG_STATUS_LISTEN=off KONG_LOG_LEVEL=error
token=$($bin tokens create --name bench -p "$work/cp" 2>/dev/null)
$bin start -p "$work/cp" 2>"$work/cp.err" & pids+=($!)
for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$GUI/" && break; sleep 0.1; done
cp_id=$(curl -sf -H "Authorization: Bearer $token" "http://127.0.0.1:$ADMIN/v2/control-planes" |
  python3 -c 'import json,sys; print(next(c["id"] for c in json.load(sys.stdin)["data"] if c["name"] == "default"))')
python3 - "$work/cp/gantry.db" "$NODES" <<'PY'
import json, sqlite3, sys, time, uuid
db, n = sys.argv[1], int(sys.argv[2])
now = int(time.time())
statuses = ["connected"] * 7 + ["out_of_sync", "incompatible", "disconnected"]
con = sqlite3.connect(db)
for i in range(n):
    st = statuses[i % len(statuses)]
    nid = str(uuid.UUID(int=i + 1))
    doc = {"id": nid, "hostname": f"dp-{i:04}", "ip": f"10.0.{i // 250}.{i % 250 + 1}",
           "version": "0.2.0", "labels": {"zone": f"z{i % 3}"}, "status": st,
           "sync_status": "normal", "config_version": 0, "config_hash": "0" * 32,
           "last_seen": now, "cert_details": {"expiry_timestamp": now + (i % 60) * 86400},
           "last_error": None, "reason": "plugin 'x' is not enabled on the data plane" if st == "incompatible" else None,
           "control_plane": "", "created_at": now, "updated_at": now}
    con.execute("INSERT INTO clustering_data_planes (id, doc, session, last_seen, cp) VALUES (?, ?, ?, ?, 1)",
                (nid, json.dumps(doc), "bench", now))
con.commit()
PY
echo "console first load, gzipped as served (bytes):"
total=0
for f in / /assets/app.js /assets/app.css; do
  b=$(curl -s -H 'Accept-Encoding: gzip' "http://127.0.0.1:$GUI$f" | wc -c)
  echo "  $f $b"; total=$((total + b))
done
echo "  total $total"
for r in $(seq "$ROUNDS"); do
  CONSOLE_URL="http://127.0.0.1:$GUI" ADMIN_TOKEN="$token" CP_ID="$cp_id" CHROMIUM=/usr/bin/chromium \
    node console/tests/nodes-perf.mjs | sed "s/^/round $r: /"
done
