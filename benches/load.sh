#!/usr/bin/env bash
# Throughput over HTTP on loopback: JWKS fetches and minting (RS256, ES256).
# Builds the release binary, starts it on 127.0.0.1:0 with config/example.toml
# and a throwaway keys dir, pins it to core 0 and wrk to core 1, and prints a
# table. Needs wrk (apt-get install wrk).
#
#   bash benches/load.sh            # 10 s per case, 64 connections
#   DURATION=5s CONNS=16 bash benches/load.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
CONNS=${CONNS:-64}
command -v wrk >/dev/null || { echo "wrk is needed: apt-get install wrk" >&2; exit 1; }

cargo build --release --quiet
work=$(mktemp -d)
log="$work/server.log"
taskset -c 0 ./target/release/workload-issuer serve --config config/example.toml \
  --listen 127.0.0.1:0 --keys-dir "$work/keys" 2>"$log" &
pid=$!
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -rf "$work"' EXIT

addr=""
for _ in $(seq 100); do
  addr=$(sed -n 's/.*listening on http:\/\/\([0-9.:]*\).*/\1/p' "$log")
  [ -n "$addr" ] && break
  sleep 0.1
done
[ -n "$addr" ] || { cat "$log"; echo "server did not start" >&2; exit 1; }
export ISSUER_TOKEN
ISSUER_TOKEN=$(cat "$work/keys/admin.token")

run() { # name url [lua]
  local name=$1 url=$2 script=${3:-}
  local args=(-t1 "-c$CONNS" "-d$DURATION" --latency)
  [ -n "$script" ] && args+=(-s "$script")
  local out
  out=$(taskset -c 1 wrk "${args[@]}" "$url")
  local rps p50 p99 bad
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  bad=$(awk '/Non-2xx/ {print $5}' <<<"$out")
  printf '| %-18s | %12s | %8s | %8s | %6s |\n' "$name" "$rps" "$p50" "$p99" "${bad:-0}"
}

echo "workload-issuer $(git rev-parse --short HEAD 2>/dev/null || echo '?'), wrk -t1 -c$CONNS -d$DURATION, server on core 0, wrk on core 1"
printf '| %-18s | %12s | %8s | %8s | %6s |\n' case requests/s p50 p99 errors
printf '|%s|%s|%s|%s|%s|\n' ------------------- -------------- ---------- ---------- --------
base="http://$addr"
run "JWKS (RS256)" "$base/c/demo/openid/v1/jwks"
run "discovery" "$base/c/demo/.well-known/openid-configuration"
run "mint RS256" "$base/c/demo/api/v1/namespaces/bench/serviceaccounts/default/token" benches/mint.lua
run "mint ES256" "$base/c/edge/api/v1/namespaces/bench/serviceaccounts/default/token" benches/mint.lua
if command -v openssl >/dev/null; then
  echo
  echo "the machine's signing limit on core 0 (openssl speed, 3 s each):"
  taskset -c 0 openssl speed -seconds 3 rsa2048 ecdsap256 2>/dev/null | grep -E '^(rsa 2048| *256 bits ecdsa|  *sign)'
fi
