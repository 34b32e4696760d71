#!/bin/sh
# Every baseline in one run, as recorded in docs/performance.md:
#   sudo bench/run.sh                 (about 8 minutes)
#   SECONDS_PER_RUN=2 REPEAT=1 sudo bench/run.sh   (a quick smoke run)
# PYTHON defaults to the project venv; it needs the bench extra: pip install -e '.[bench]'.
set -eu
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-5}
REPEAT=${REPEAT:-3}

echo "## Per-packet ESP: scapy SecurityAssociation vs groupvpn.crypto.suites"
"$PYTHON" bench/esp_loop.py --repeat 5
echo
echo "## iperf3 host to host: plain routed path, strongSwan kernel-libipsec, groupvpn"
"$PYTHON" bench/throughput.py --seconds "$SECONDS_PER_RUN" --repeat "$REPEAT"
echo
echo "## One data-plane worker, one direction: CPU per packet, packets per CPU-second"
"$PYTHON" bench/worker_rate.py --seconds "$SECONDS_PER_RUN" --repeat "$REPEAT"
