#!/usr/bin/env bash
# The HTTP benchmark: workload-issuer against nginx serving the same bytes as a
# static file and against a bare axum handler (the framework's floor), minting
# against the machine's own signing rate, and 10,000 clusters against one.
#
# Builds the release binaries, starts every server on 127.0.0.1 (ports from
# the OS), pins the servers to core 0 and wrk to core 1, runs the cases in
# interleaved rounds and prints one table with medians and the ratios the
# performance issue asks for, each the median of the rounds' own ratios.
# Needs wrk and nginx (apt-get install wrk nginx).
#
#   bash benches/load.sh                          # 5 rounds of 5 s per case
#   ROUNDS=5 DURATION=10s bash benches/load.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-5s}
ROUNDS=${ROUNDS:-5}
CONNS=${CONNS:-64}
TENANTS=${TENANTS:-10000}
for tool in wrk nginx taskset python3 openssl; do
  command -v "$tool" >/dev/null || { echo "$tool is needed (apt-get install wrk nginx)" >&2; exit 1; }
done
[ "$(nproc)" -ge 2 ] || { echo "needs 2 cores: the servers on one, wrk on the other" >&2; exit 1; }

echo "building release binaries..." >&2
cargo build --release --quiet
cargo bench --no-run --quiet --bench bare_axum 2>/dev/null || cargo bench --no-run --bench bare_axum
bare=$(cargo bench --no-run --bench bare_axum --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "bare_axum" and m.get("executable"):
        print(m["executable"])')
bin=./target/release/workload-issuer

work=$(mktemp -d)
pids=()
cleanup() {
  # Servers started through start() ran in a command substitution: their
  # pids are in files.
  for p in "${pids[@]}" $(cat "$work"/*.pid 2>/dev/null); do kill "$p" 2>/dev/null || true; done
  sleep 0.2
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Starts `$@` pinned to core 0 with its log in $1.log; prints its address.
start() {
  local name=$1; shift
  taskset -c 0 "$@" 2>"$work/$name.log" >/dev/null &
  local pid=$!
  echo "$pid" >"$work/$name.pid"
  for _ in $(seq $((${WAIT_S:-10} * 100))); do
    local addr
    addr=$(sed -n 's/.*listening on http:\/\/\([0-9.:]*\).*/\1/p' "$work/$name.log" | head -1)
    if [ -n "$addr" ]; then echo "$addr"; return; fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.01
  done
  cat "$work/$name.log" >&2
  echo "$name did not start" >&2
  exit 1
}
rss_mb() { awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$1/status"; }

# --- the servers --------------------------------------------------------------
cat >"$work/one.toml" <<EOF
listen = "127.0.0.1:0"
public_url = "https://oidc.example.com"
keys_dir = "$work/keys"
[[clusters]]
id = "demo"
algorithm = "RS256"
[[clusters]]
id = "edge"
algorithm = "ES256"
[[api_clients]]
name = "bench"
token_file = "bench.token"
generate = true
clusters = ["*"]
EOF
issuer=$(start issuer "$bin" serve --config "$work/one.toml")
issuer_pid=$(cat "$work/issuer.pid")
sleep 1
idle_rss=$(rss_mb "$issuer_pid")
export ISSUER_TOKEN
ISSUER_TOKEN=$(cat "$work/keys/bench.token")
jwks_url="http://$issuer/c/demo/openid/v1/jwks"
mkdir -p "$work/www"
curl -s "$jwks_url" -o "$work/www/jwks"
# nginx's workers run as nobody: let them read the file.
chmod 755 "$work" "$work/www"
chmod 644 "$work/www/jwks"
export ETAG
ETAG=$(curl -sI "$jwks_url" | awk -F': ' 'tolower($1)=="etag" {print $2}' | tr -d '\r')

nginx_port=$(free_port)
cat >"$work/nginx.conf" <<EOF
worker_processes 2;
daemon off;
pid $work/nginx.run;
error_log $work/nginx.error.log;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 10000000;
  server {
    listen 127.0.0.1:$nginx_port;
    root $work/www;
    location = /jwks {
      default_type application/jwk-set+json;
      add_header Cache-Control "public, max-age=3600";
      add_header Access-Control-Allow-Origin "*";
    }
  }
}
EOF
taskset -c 0 nginx -c "$work/nginx.conf" -e "$work/nginx.error.log" 2>"$work/nginx.log" &
pids+=($!)
for _ in $(seq 200); do curl -sf "http://127.0.0.1:$nginx_port/jwks" >/dev/null && break; sleep 0.01; done
bare_addr=$(start bare "$bare" --serve 127.0.0.1:0 "$work/www/jwks")

cat >"$work/tenants.lua" <<'EOF'
local n = tonumber(os.getenv("TENANTS"))
math.randomseed(42)
request = function()
  return wrk.format("GET", "/c/c" .. math.random(0, n - 1) .. "/openid/v1/jwks")
end
EOF

# --- measuring ----------------------------------------------------------------
results="$work/results.tsv"
# case conns url [script]: one wrk run on core 1, appended to $results.
measure() {
  local name=$1 conns=$2 url=$3 script=${4:-} header=${5:-}
  local args=(-t1 "-c$conns" "-d$DURATION" --latency)
  [ -n "$script" ] && args+=(-s "$script")
  [ -n "$header" ] && args+=(-H "$header")
  local out
  out=$(taskset -c 1 wrk "${args[@]}" "$url")
  python3 - "$name" "$out" >>"$results" <<'EOF'
import re, sys
name, out = sys.argv[1], sys.argv[2]
def ms(v):
    n, unit = re.match(r"([\d.]+)(\w+)", v).groups()
    return float(n) * {"us": 0.001, "ms": 1, "s": 1000}[unit]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
p50 = ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))
p99 = ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))
bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
err = re.search(r"Socket errors: .*", out)
print(f"{name}\t{rps}\t{p50}\t{p99}\t{int(bad.group(1)) if bad else 0}\t{'socket errors' if err else ''}")
EOF
}

mint_demo="http://$issuer/c/demo/api/v1/namespaces/bench/serviceaccounts/default/token"
mint_edge="http://$issuer/c/edge/api/v1/namespaces/bench/serviceaccounts/default/token"
# The cases come in groups; a group's cases run back to back (a ratio's two
# sides together), and each round starts one group later than the one before,
# so no case always runs first (after the heaviest load) or last.
group_documents() {
  # 200 and 304 take turns to go first: neither gains from the order.
  if [ $((round % 2)) = 1 ]; then
    measure "JWKS workload-issuer" "$CONNS" "$jwks_url"
    measure "JWKS 304" "$CONNS" "$jwks_url" "" "If-None-Match: $ETAG"
  else
    measure "JWKS 304" "$CONNS" "$jwks_url" "" "If-None-Match: $ETAG"
    measure "JWKS workload-issuer" "$CONNS" "$jwks_url"
  fi
}
group_nginx() { measure "JWKS nginx static" "$CONNS" "http://127.0.0.1:$nginx_port/jwks"; }
group_bare() { measure "JWKS bare axum" "$CONNS" "http://$bare_addr/jwks"; }
group_discovery() { measure "discovery" "$CONNS" "http://$issuer/c/demo/.well-known/openid-configuration"; }
group_minting() {
  measure "mint RS256" "$CONNS" "$mint_demo" benches/mint.lua
  measure "mint ES256" "$CONNS" "$mint_edge" benches/mint.lua
  # The machine's own signing rate on the servers' core, right after the
  # mints it is compared with.
  taskset -c 0 openssl speed -seconds 3 rsa2048 ecdsap256 2>/dev/null \
    | awk '$1 == "rsa" && $2 == "2048" {print "rsa\t" (NF >= 11 ? $8 : $6)} /256 bits ecdsa/ {print "ec\t" $7}' >>"$work/speed.tsv"
}
group_saturated() {
  # JWKS latency while RS256 minting saturates the server.
  taskset -c 1 wrk -t1 -c16 "-d$DURATION" -s benches/mint.lua "$mint_demo" >/dev/null &
  local saturate=$!
  sleep 0.5
  measure "JWKS during RS256 load" 4 "$jwks_url"
  wait "$saturate"
}
group_curve() {
  for c in 1 16 64 256; do
    measure "JWKS c=$c" "$c" "$jwks_url"
    measure "mint ES256 c=$c" "$c" "$mint_edge" benches/mint.lua
  done
}
groups=(group_documents group_nginx group_bare group_discovery group_minting group_saturated group_curve)
echo "measuring: $ROUNDS interleaved rounds of $DURATION per case..." >&2
for round in $(seq "$ROUNDS"); do
  echo "  round $round" >&2
  for k in "${!groups[@]}"; do
    "${groups[(k + round - 1) % ${#groups[@]}]}"
  done
done
rss_after_load=$(rss_mb "$issuer_pid")
median_speed() { awk -v k="$1" '$1 == k {print $2}' "$work/speed.tsv" | sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
rsa_sign=$(median_speed rsa)
ec_sign=$(median_speed ec)
# OpenSSL 3.0 prints "rsa 2048 bits ... sign/s verify/s"; 3.2 and later add
# encrypt and decrypt columns. Anything else: say so rather than divide by "".
if [ -z "$rsa_sign" ] || [ -z "$ec_sign" ]; then
  echo "could not read the sign rates from openssl speed's output:" >&2
  taskset -c 0 openssl speed -seconds 1 rsa2048 ecdsap256 2>/dev/null | tail -6 >&2
  exit 1
fi

# --- 10,000 clusters ----------------------------------------------------------
echo "preparing $TENANTS clusters..." >&2
python3 - "$work" "$TENANTS" <<'EOF'
import sys
work, n = sys.argv[1], int(sys.argv[2])
with open(f"{work}/many.toml", "w") as f:
    f.write(f'listen = "127.0.0.1:0"\npublic_url = "https://oidc.example.com"\nkeys_dir = "{work}/many-keys"\n')
    for i in range(n):
        f.write(f'[[clusters]]\nid = "c{i}"\nalgorithm = "ES256"\n')
with open(f"{work}/one-tenant.toml", "w") as f:
    f.write(f'listen = "127.0.0.1:0"\npublic_url = "https://oidc.example.com"\nkeys_dir = "{work}/one-keys"\n')
    f.write('[[clusters]]\nid = "c0"\nalgorithm = "ES256"\n')
EOF
# First start creates the keys; the measured start finds them on disk.
WAIT_S=300 start many-init "$bin" serve --config "$work/many.toml" >/dev/null
kill "$(cat "$work/many-init.pid")"
while kill -0 "$(cat "$work/many-init.pid")" 2>/dev/null; do sleep 0.05; done
rm "$work/many-init.pid"
t0=$(date +%s.%N)
many=$(start many "$bin" serve --config "$work/many.toml")
t1=$(date +%s.%N)
many_pid=$(cat "$work/many.pid")
many_startup=$(python3 -c "print(f'{$t1 - $t0:.2f}')")
many_rss=$(rss_mb "$many_pid")
one=$(start one "$bin" serve --config "$work/one-tenant.toml")
for round in $(seq "$ROUNDS"); do
  TENANTS=$TENANTS measure "JWKS $TENANTS clusters, random" "$CONNS" "http://$many" "$work/tenants.lua"
  TENANTS=1 measure "JWKS 1 cluster, same script" "$CONNS" "http://$one" "$work/tenants.lua"
done
many_rss_load=$(rss_mb "$many_pid")

# --- the table ----------------------------------------------------------------
python3 - "$results" "$work/speed.tsv" <<EOF
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    name, rps, p50, p99, bad, err = line.rstrip("\n").split("\t")
    rows.setdefault(name, []).append((float(rps), float(p50), float(p99), int(bad), err))
speed = {"rsa": [], "ec": []}
for line in open(sys.argv[2]):
    kind, rate = line.split()
    speed[kind].append((float(rate),))
for kind, rates in speed.items():
    if len(rates) != len(rows["mint RS256"]):
        sys.exit(f"openssl speed gave {len(rates)} {kind} rates for {len(rows['mint RS256'])} rounds")
def med(name, i):
    return statistics.median(r[i] for r in rows[name])
print(f"workload-issuer $(git rev-parse --short HEAD 2>/dev/null || echo '?'), {len(next(iter(rows.values())))} rounds of $DURATION, "
      "servers on core 0, wrk -t1 on core 1, medians")
print()
print(f"| {'case':<30} | {'requests/s':>11} | {'p50 ms':>7} | {'p99 ms':>7} | {'non-2xx/3xx':>11} |")
print(f"|{'-'*32}|{'-'*13}|{'-'*9}|{'-'*9}|{'-'*13}|")
for name in rows:
    errs = sum(r[3] for r in rows[name])
    print(f"| {name:<30} | {med(name,0):>11,.0f} | {med(name,1):>7.2f} | {med(name,2):>7.2f} | {errs:>11} |")
rsa, ec = float("$rsa_sign"), float("$ec_sign")
# A ratio compares two cases measured in the same round, minutes apart at
# most: its value is the median of the rounds' ratios, and the spread shows
# how far single rounds strayed on this machine.
def paired(a, b, i=0):
    return [x[i] / y[i] for x, y in zip(a, b)]
def ratio(name, per_round, target, at_least):
    value = statistics.median(per_round)
    ok = value >= target if at_least else value <= target
    spread = f"{min(per_round):.2f}-{max(per_round):.2f}"
    return (name, value, spread, (">= " if at_least else "<= ") + f"{target:.2f}", ok)
def figure(name, value, target, ok):
    return (name, value, "", target, ok)
R = rows
many, one = "JWKS $TENANTS clusters, random", "JWKS 1 cluster, same script"
checks = [
    ratio("JWKS requests/s vs nginx static file", paired(R["JWKS workload-issuer"], R["JWKS nginx static"]), 1.0, True),
    ratio("JWKS requests/s vs bare axum handler", paired(R["JWKS workload-issuer"], R["JWKS bare axum"]), 0.9, True),
    ratio("JWKS p99 vs nginx p99", paired(R["JWKS workload-issuer"], R["JWKS nginx static"], 2), 1.0, False),
    ratio("304 requests/s vs 200", paired(R["JWKS 304"], R["JWKS workload-issuer"]), 1.0, True),
    ratio("RS256 mints/s vs openssl RSA-2048 sign/s", paired(R["mint RS256"], speed["rsa"]), 0.85, True),
    ratio("ES256 mints/s vs openssl P-256 sign/s", paired(R["mint ES256"], speed["ec"]), 0.40, True),
    figure("JWKS p99 ms during RS256 saturation", med("JWKS during RS256 load", 2), "< 5", med("JWKS during RS256 load", 2) < 5),
    ratio("JWKS $TENANTS clusters vs 1 cluster", paired(R[many], R[one]), 0.9, True),
    figure("startup s with $TENANTS clusters", $many_startup, "< 2", $many_startup < 2),
    figure("RSS MB with $TENANTS clusters (after load)", max($many_rss, $many_rss_load), "< 60", max($many_rss, $many_rss_load) < 60),
    figure("RSS MB with 1 cluster, idle", $idle_rss, "< 15", $idle_rss < 15),
]
print()
print(f"machine limits on core 0 (openssl speed, median of the rounds): RSA-2048 sign {rsa:,.0f}/s, P-256 sign {ec:,.0f}/s; "
      f"RSS 2 clusters after load $rss_after_load MB")
print()
print(f"| {'ratio or figure':<44} | {'value':>8} | {'rounds':>9} | {'target':>8} | {'':>4} |")
print(f"|{'-'*46}|{'-'*10}|{'-'*11}|{'-'*10}|{'-'*6}|")
for name, value, spread, target, ok in checks:
    print(f"| {name:<44} | {value:>8.3f} | {spread:>9} | {target:>8} | {'ok' if ok else 'MISS':>4} |")
EOF
