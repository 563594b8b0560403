#!/usr/bin/env bash
# The gateway benchmark: throughput and latency of one trivial upstream called directly,
# through shop-gateway (JWT validation, rate limit, balanced client stack), through nginx as a
# plain reverse proxy, and through the floor (bench-proxy: a reverse proxy of hyper and tokio
# alone), in one run on loopback. Results go in BENCHMARKS.md.
#
#   bash benches/gateway.sh            # needs wrk and nginx (apt-get install wrk nginx),
#                                      # and oha for the fixed-rate latency runs (cargo install oha)
#
# DURATION (default 10s), CONNECTIONS (default 64) and THREADS (default 1) tune the wrk runs.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-1}
TARGET=${CARGO_TARGET_DIR:-target}
UPSTREAM=9100 FLOOR=9170 GATEWAY=9180 NGINX=9190
WORK=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  [[ -f "$WORK/nginx.pid" ]] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

cargo build --release --locked -p mainstay-benches --bin bench-upstream --bin bench-proxy
cargo build --release --locked -p shop-gateway --bin shop-gateway

wait_port() { for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }

"$TARGET/release/bench-upstream" "$UPSTREAM" & pids+=($!)
wait_port "$UPSTREAM"
TOKEN=$(curl -sf "http://127.0.0.1:$UPSTREAM/token")

"$TARGET/release/bench-proxy" "$FLOOR" "$UPSTREAM" & pids+=($!)
wait_port "$FLOOR"

source benches/gateway-run.sh
run_gateway >"$WORK/gateway.log" 2>&1 & pids+=($!)
wait_port "$GATEWAY"

cat >"$WORK/nginx.conf" <<NGINX
worker_processes auto;
pid $WORK/nginx.pid;
error_log $WORK/nginx.error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  upstream app { server 127.0.0.1:$UPSTREAM; keepalive 128; }
  server {
    listen 127.0.0.1:$NGINX;
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
    }
  }
}
NGINX
nginx -c "$WORK/nginx.conf" -p "$WORK"
wait_port "$NGINX"

AUTH="Authorization: Bearer $TOKEN"
declare -A URL=(
  [direct]="http://127.0.0.1:$UPSTREAM/me"
  [gateway]="http://127.0.0.1:$GATEWAY/api/v1/me"
  [nginx]="http://127.0.0.1:$NGINX/me"
  [floor]="http://127.0.0.1:$FLOOR/me"
)
for name in direct gateway nginx floor; do
  curl -sf -H "$AUTH" "${URL[$name]}" >/dev/null || { echo "$name does not answer" >&2; exit 1; }
done

echo "== throughput: wrk -t$THREADS -c$CONNECTIONS -d$DURATION, GET with a bearer token"
declare -A RPS
for name in direct gateway nginx floor; do
  wrk -t"$THREADS" -c"$CONNECTIONS" -d2s -H "$AUTH" "${URL[$name]}" >/dev/null # warm-up
  out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -H "$AUTH" "${URL[$name]}")
  RPS[$name]=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out"); p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  errors=$(grep -E "Non-2xx|Socket errors" <<<"$out" || true)
  printf '%-8s %10s req/s   p50 %8s   p99 %8s   %s\n' "$name" "${RPS[$name]}" "$p50" "$p99" "$errors"
done
awk -v d="${RPS[direct]}" -v g="${RPS[gateway]}" -v n="${RPS[nginx]}" -v f="${RPS[floor]}" 'BEGIN {
  printf "gateway / direct = %.2f   nginx / direct = %.2f   gateway / nginx = %.2f   floor / nginx = %.2f   gateway / floor = %.2f\n", g/d, n/d, g/n, f/n, g/f }'

if command -v oha >/dev/null 2>&1; then
  RATE=$(awk -v g="${RPS[gateway]}" 'BEGIN { printf "%d", g/2 }')
  echo "== latency at half the gateway's throughput: oha -q $RATE -z $DURATION -c $CONNECTIONS"
  for name in direct gateway nginx floor; do
    out=$(oha --no-tui -q "$RATE" -z "$DURATION" -c "$CONNECTIONS" -H "$AUTH" "${URL[$name]}")
    p50=$(awk '/50.00% in/ {print $3, $4}' <<<"$out"); p99=$(awk '/99.00% in/ {print $3, $4}' <<<"$out")
    ok=$(awk '/\[200\]/ {print $2}' <<<"$out")
    printf '%-8s p50 %-14s p99 %-14s 200s %s\n' "$name" "$p50" "$p99" "$ok"
  done
else
  echo "(oha not found: skipping the fixed-rate latency runs)"
fi
