# Sourced by benches/gateway.sh and benches/gateway-callgrind.sh: the gateway as in production,
# over the bench upstream at $UPSTREAM, listening on $GATEWAY, with limits no benchmark client
# reaches (the limiter still runs on every request) and warnings-only logs (nginx's access log
# is off too). Arguments go before the binary (a wrapper such as valgrind). It execs: run it in
# the background (`run_gateway … &`), so that its pid is the gateway's. GATEWAY_WORKERS sets the
# gateway's runtime worker threads (tokio's TOKIO_WORKER_THREADS; one per core by default).
run_gateway() {
  exec env ${GATEWAY_WORKERS:+TOKIO_WORKER_THREADS=$GATEWAY_WORKERS} PORT="$GATEWAY" USERS_URLS="http://127.0.0.1:$UPSTREAM" CATALOG_URLS="http://127.0.0.1:$UPSTREAM" \
    USERS_JWKS_URL="http://127.0.0.1:$UPSTREAM/.well-known/jwks.json" \
    RATE_LIMIT_PER_PRINCIPAL=1000000000/1 RATE_LIMIT_PER_IP=1000000000/1 RUST_LOG=warn \
    "$@" "$TARGET/release/shop-gateway"
}
