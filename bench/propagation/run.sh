#!/usr/bin/env bash
# Configuration propagation from one control plane to many data planes.
#   DPS=100 CHANGES=50 ROUTES=10000 HOLD=1000 bash bench/propagation/run.sh
# Data planes are in-process clients speaking the real protocol (TLS, WebSocket, deltas, acks);
# the control plane is a release `gantry` process on SQLite. 1,000 connections need more file
# descriptors than the usual default of 1,024.
set -euo pipefail
cd "$(dirname "$0")/../.."
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
cargo bench -p gantry --bench propagation 2>&1 | grep -v "^\s*Running\|^\s*Finished\|^\s*Compiling"
