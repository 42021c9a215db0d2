#!/usr/bin/env bash
# Configuration propagation from one control plane to data planes, and what data planes cost.
#   DPS=100 CHANGES=50 ROUTES=1000,10000,100000 BIG_CHANGES=50 CONSUMERS=50000 \
#   MEM_SERVICES=5000 MEM_ROUTES=100000 START_ROUTES=10000 HOLD=1000 bash bench/propagation/run.sh
# The control plane is a release `gantry` process on SQLite. The many-data-plane parts use
# in-process clients speaking the real protocol (TLS, WebSocket, deltas, acks); the large
# configurations, memory and cached start use data plane processes. 1,000 connections need more
# file descriptors than the usual default of 1,024.
set -euo pipefail
cd "$(dirname "$0")/../.."
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
cargo bench -p gantry --bench propagation 2>&1 | grep -v "^\s*Running\|^\s*Finished\|^\s*Compiling"
