#!/usr/bin/env bash
# Instructions per proxied request through the release gateway (callgrind counts instructions,
# not seconds: repeatable whatever else the machine does). Results go in BENCHMARKS.md.
#
#   bash benches/gateway-callgrind.sh        # needs valgrind and wrk (apt-get install valgrind wrk)
#   bash benches/gateway-callgrind.sh floor  # the same for bench-proxy, hyper and tokio alone
#
# Prints requests served under callgrind, instructions per request over the whole process
# (start-up and idle work included) and inside hyper's connection dispatcher (each request's
# own work, the upstream connection task aside).
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${CARGO_TARGET_DIR:-target}
UPSTREAM=9100 GATEWAY=9180
FLOOR=${1:-}
OUT=$(mktemp -d)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT

cargo build --release --locked -p mainstay-benches --bin bench-upstream --bin bench-proxy
cargo build --release --locked -p shop-gateway --bin shop-gateway

wait_for() { for _ in $(seq 1 200); do curl -sf -o /dev/null "$@" && return 0; sleep 0.5; done; echo "no answer from $*" >&2; exit 1; }

"$TARGET/release/bench-upstream" "$UPSTREAM" & pids+=($!)
wait_for "http://127.0.0.1:$UPSTREAM/token"
TOKEN=$(curl -sf "http://127.0.0.1:$UPSTREAM/token")
source benches/gateway-run.sh
callgrind=(valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.out")
if [[ $FLOOR == floor ]]; then
  "${callgrind[@]}" "$TARGET/release/bench-proxy" "$GATEWAY" "$UPSTREAM" >"$OUT/gateway.log" 2>&1 & gateway=$!
else
  run_gateway "${callgrind[@]}" >"$OUT/gateway.log" 2>&1 & gateway=$!
fi
wait_for -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$GATEWAY/api/v1/me"
wrk -t1 -c8 -d20s -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$GATEWAY/api/v1/me" >"$OUT/wrk.txt"
# The gateway drains on SIGINT; the floor has no handler, and valgrind holds SIGINT from it.
if [[ $FLOOR == floor ]]; then kill -TERM "$gateway"; else kill -INT "$gateway"; fi
wait "$gateway" || true
requests=$(awk '/requests in/ {print $1}' "$OUT/wrk.txt")
callgrind_annotate "$OUT/callgrind.out" >"$OUT/exclusive.txt" 2>/dev/null
callgrind_annotate --inclusive=yes "$OUT/callgrind.out" >"$OUT/inclusive.txt" 2>/dev/null
total=$(awk '/PROGRAM TOTALS/ {gsub(",","",$1); print $1; exit}' "$OUT/exclusive.txt")
dispatcher=$(awk '/Dispatcher.*poll_catch/ {gsub(",","",$1); print $1; exit}' "$OUT/inclusive.txt")
echo "requests $requests; instructions per request: $((total / requests)) in all, $((dispatcher / requests)) inside hyper's dispatcher"
echo "profile: $OUT/callgrind.out (callgrind_annotate --inclusive=yes)"
trap - EXIT; cleanup
