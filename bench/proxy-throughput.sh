#!/usr/bin/env bash
# Whole-proxy throughput on this machine, in one run:
#   origin directly | nginx injecting a static Authorization (upstream keep-alive)
#   | credgate injecting from an encrypted stored account
# at -c1 and -c32, printing req/s, p50 and p99 and the ratios to direct.
#
# Needs: nginx, wrk (apt-get install nginx-light wrk), a release build of credgate.
# Everything listens on 127.0.0.1 only; each wrk run is bounded by -d.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
for tool in nginx wrk curl; do
    command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install nginx-light wrk curl" >&2; exit 1; }
done
cargo build --release -q -p credgate
work=$(mktemp -d)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ORIGIN=$(free_port); NGINX=$(free_port); PROXY=$(free_port); ADMIN=$(free_port)

cat > "$work/nginx.conf" <<NGINX
worker_processes 2;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    upstream origin { server 127.0.0.1:$ORIGIN; keepalive 128; }
    server {
        listen 127.0.0.1:$ORIGIN;
        location / { default_type application/json; return 200 '{"ok":true}'; }
    }
    server {
        listen 127.0.0.1:$NGINX;
        location / {
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Authorization "Bearer static-token-for-the-benchmark";
        }
    }
}
NGINX
nginx -c "$work/nginx.conf" -p "$work" -g 'daemon off;' &
pids+=($!)

mkdir -p "$work/integrations"
cat > "$work/integrations/bench.yaml" <<YAML
name: bench
base_urls: [ "http://127.0.0.1:$ORIGIN" ]
credentials: { format: api_key }
authorization: { format: bearer, config: { path: api_key } }
YAML
cat > "$work/credgate.yaml" <<YAML
proxy: { listen: 127.0.0.1:$PROXY, allow_private_upstreams: true }
admin: { listen: 127.0.0.1:$ADMIN }
store: { url: "sqlite://credgate.db" }
keys: [ { id: k1, from_env: CREDGATE_KEY } ]
integrations_dir: integrations
YAML
CREDGATE_KEY=$(./target/release/credgate keygen) CREDGATE_LOG=warn \
    ./target/release/credgate serve --config "$work/credgate.yaml" 2>"$work/credgate.log" &
pids+=($!)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$ADMIN/healthz" >/dev/null && break; sleep 0.1; done
curl -sf -X POST "http://127.0.0.1:$ADMIN/v1/accounts" -H 'content-type: application/json' \
    -d '{"id":"bench","integration":"bench","credentials":{"api_key":"sk_bench_0123456789abcdefghij"}}' >/dev/null
curl -sf "http://127.0.0.1:$NGINX/" >/dev/null
curl -sf -H "Host: 127.0.0.1:$ORIGIN" -H 'credgate-account: bench' "http://127.0.0.1:$PROXY/" >/dev/null

# wrk prints latency percentiles with --latency; convert them to milliseconds.
run() { # run <name> <connections> <url> [headers…]
    local name=$1 conns=$2 url=$3; shift 3
    local threads=$(( conns < 2 ? 1 : 2 ))
    local out; out=$(wrk -t"$threads" -c"$conns" -d"$DURATION" --latency "$@" "$url")
    local rps p50 p99
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    p50=$(awk '$1=="50%" {print $2}' <<<"$out")
    p99=$(awk '$1=="99%" {print $2}' <<<"$out")
    printf '%s %s %s %s %s\n' "$name" "$conns" "$rps" "$(ms "$p50")" "$(ms "$p99")"
}
ms() { awk -v v="$1" 'BEGIN { n=v+0; if (v ~ /us$/) n/=1000; else if (v ~ /ms$/) n=n; else if (v ~ /s$/) n*=1000; printf "%.3f", n }'; }

if [ -n "${STRACE:-}" ]; then
    # STRACE=1: count credgate's syscalls during a fixed number of requests.
    pid=$(pgrep -f "credgate serve --config $work" | head -1)
    strace ${STRACE_ARGS:--c} -f -p "$pid" -o "${STRACE_OUT:-strace.txt}" &
    strace_pid=$!
    sleep 1
    wrk -t1 -c4 -d3s "http://127.0.0.1:$PROXY/" -H "Host: 127.0.0.1:$ORIGIN" -H 'credgate-account: bench' | awk '/requests in/ {print "requests:", $1}'
    kill -INT "$strace_pid"; wait "$strace_pid" || true
    exit 0
fi

if [ -n "${PROFILE:-}" ]; then
    # PROFILE=1: record where credgate spends CPU under -c32, then exit.
    perf record -F 499 -e cpu-clock -g -o "${PROFILE_OUT:-perf.data}" -p "$(pgrep -f "credgate serve --config $work" | head -1)" &
    perf_pid=$!
    wrk -t2 -c32 -d"$DURATION" "http://127.0.0.1:$PROXY/" -H "Host: 127.0.0.1:$ORIGIN" -H 'credgate-account: bench' >/dev/null
    kill -INT "$perf_pid"; wait "$perf_pid" || true
    exit 0
fi

results=()
for c in 1 32; do
    results+=("$(run direct "$c" "http://127.0.0.1:$ORIGIN/")")
    results+=("$(run nginx "$c" "http://127.0.0.1:$NGINX/")")
    results+=("$(run credgate "$c" "http://127.0.0.1:$PROXY/" -H "Host: 127.0.0.1:$ORIGIN" -H 'credgate-account: bench')")
done

printf '%-9s %4s %12s %9s %9s %10s %13s\n' target conns req/s p50_ms p99_ms rps/direct p99-direct_ms
for c in 1 32; do
    direct=$(printf '%s\n' "${results[@]}" | awk -v c="$c" '$1=="direct" && $2==c')
    read -r _ _ drps _ dp99 <<<"$direct"
    printf '%s\n' "${results[@]}" | awk -v c="$c" -v drps="$drps" -v dp99="$dp99" \
        '$2==c { printf "%-9s %4s %12.0f %9.3f %9.3f %10.2f %13.3f\n", $1, $2, $3, $4, $5, $3/drps, $5-dp99 }'
done
