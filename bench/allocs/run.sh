#!/usr/bin/env bash
# Heap allocations per proxied request: uprobes on mimalloc's entry points (what Rust's global
# allocator calls) in the Gantry binary, counted by `perf stat` while wrk drives one worker
# through a plain route. Needs root (uprobes) and perf. GANTRY=path measures another build.
set -uo pipefail
cd "$(dirname "$0")/../.."
command -v wrk >/dev/null || apt-get install -y wrk >/dev/null
command -v nginx >/dev/null || apt-get install -y nginx-light >/dev/null
GANTRY=${GANTRY:-target/release/gantry}
[ -x "$GANTRY" ] || cargo build --release
UP=18931 GAN=18933
. bench/lib.sh
export KONG_UPSTREAM_KEEPALIVE_POOL_SIZE=128 KONG_UPSTREAM_KEEPALIVE_MAX_REQUESTS=1000000
start_upstream $UP
plain_config "$work/kong.yml" $UP
start_gantry "$work/kong.yml" $GAN gantry gan_pid
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$GAN/" >/dev/null && break; sleep 0.1; done
wrk -t1 -c50 -d1s "http://127.0.0.1:$GAN/" >/dev/null
probes=(mi_malloc_aligned mi_zalloc_aligned mi_realloc_aligned)
perf probe -q -d 'probe_gantry*:*' 2>/dev/null
for f in "${probes[@]}"; do perf probe -q -x "$GANTRY" "$f"; done
group=$(perf probe -l 2>/dev/null | awk -F: '/mi_malloc_aligned/ {gsub(/ /,"",$1); print $1; exit}')
perf stat -e "$group:*" -p "$gan_pid" -o "$work/allocs.txt" -- sleep 3 & ps=$!
sleep 0.2
n=$(wrk -t1 -c50 -d2s "http://127.0.0.1:$GAN/" | awk '/requests in/ {print $1}')
wait $ps
perf probe -q -d "$group:*"
echo "requests: $n (the counts cover the whole wrk run; an idle worker allocates nothing)"
awk -v n="$n" '/probe_/ {gsub(",","",$1); printf "%s: %.2f per request\n", $2, $1/n}' "$work/allocs.txt"
