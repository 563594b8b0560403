#!/usr/bin/env bash
# The flash crowd of issue 11: uncached searches through the gateway in front of the real
# catalog (SQLite, the seeded demo catalog), from more connections than the catalog can serve,
# then ordinary requests once the crowd has gone. Release builds; results go in BENCHMARKS.md.
#
#   bash benches/crowd.sh              # needs wrk (apt-get install wrk)
#
# DURATION (default 8s) and CONNECTIONS (default 256) shape the crowd. GATEWAY_BIN and
# CATALOG_BIN run other builds (another commit's, to compare) instead of this checkout's.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-8s}
CONNECTIONS=${CONNECTIONS:-256}
TARGET=${CARGO_TARGET_DIR:-target}
CATALOG=9282 GATEWAY=9280
WORK=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

if [[ -z "${GATEWAY_BIN:-}" || -z "${CATALOG_BIN:-}" ]]; then
  cargo build --release --locked -p shop-gateway -p shop-catalog
fi
GATEWAY_BIN=${GATEWAY_BIN:-$TARGET/release/shop-gateway}
CATALOG_BIN=${CATALOG_BIN:-$TARGET/release/shop-catalog}

wait_port() { for _ in $(seq 1 300); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }

PORT=$CATALOG DATABASE_URL="sqlite://$WORK/catalog.db?mode=rwc" SEED_DEMO_CATALOG=true \
  RUST_LOG=error "$CATALOG_BIN" >"$WORK/catalog.log" 2>&1 & pids+=($!)
wait_port "$CATALOG"
# Per-address limits raised: the crowd stands for many users behind one address.
PORT=$GATEWAY CATALOG_URLS="http://127.0.0.1:$CATALOG" USERS_URLS="http://127.0.0.1:9" \
  RATE_LIMIT_PER_IP=1000000000/1 RUST_LOG=error \
  "$GATEWAY_BIN" >"$WORK/gateway.log" 2>&1 & pids+=($!)
wait_port "$GATEWAY"

# Every request a search nobody made before: no cache answers it.
cat >"$WORK/crowd.lua" <<'LUA'
local counter = 0
request = function()
  counter = counter + 1
  local q = "kettle" .. math.random(1, 1000000000) .. "x" .. counter
  return wrk.format("GET", "/api/v1/products/search?q=" .. q)
end
LUA

echo "== crowd: $CONNECTIONS connections for $DURATION"
wrk -t1 -c"$CONNECTIONS" -d"$DURATION" -s "$WORK/crowd.lua" "http://127.0.0.1:$GATEWAY" \
  | tee "$WORK/wrk.txt"
total=$(awk '/requests in/ {print $1}' "$WORK/wrk.txt")
failed=$(awk '/Non-2xx or 3xx responses/ {print $5}' "$WORK/wrk.txt")
failed=${failed:-0}
echo "served during the crowd: $((total - failed)) of $total"

# The crowd has gone: ordinary searches, one after another, for two seconds.
ok=0 refused=0 first_ok=""
start=$(date +%s%N)
for i in $(seq 1 40); do
  status=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$GATEWAY/api/v1/products/search?q=after$i")
  if [[ $status == 200 ]]; then
    ok=$((ok + 1))
    [[ -z $first_ok ]] && first_ok=$(( ($(date +%s%N) - start) / 1000000 ))
  else
    refused=$((refused + 1))
  fi
  sleep 0.05
done
echo "after the crowd: $ok of 40 served, $refused refused; first served after ${first_ok:-never} ms"

# The catalog's own capacity for these searches, for reference: the same crowd, called directly.
sed -i 's|/api/v1/products/search|/products/search|' "$WORK/crowd.lua"
echo "== the same crowd straight at the catalog"
wrk -t1 -c"$CONNECTIONS" -d"$DURATION" -s "$WORK/crowd.lua" "http://127.0.0.1:$CATALOG" \
  | tee "$WORK/direct.txt"
total=$(awk '/requests in/ {print $1}' "$WORK/direct.txt")
failed=$(awk '/Non-2xx or 3xx responses/ {print $5}' "$WORK/direct.txt")
failed=${failed:-0}
echo "served by the catalog alone: $((total - failed)) of $total"
