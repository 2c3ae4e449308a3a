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
DURATION=${DURATION:-5s}
for tool in nginx wrk curl; do
    command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install nginx-light wrk curl" >&2; exit 1; }
done
# CREDGATE_BIN: measure another build (say, of an earlier commit) instead.
if [ -z "${CREDGATE_BIN:-}" ]; then
    cargo build --release -q -p credgate
fi
CREDGATE_BIN=${CREDGATE_BIN:-./target/release/credgate}
work=$(mktemp -d)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ORIGIN=$(free_port); NGINX=$(free_port); PROXY=$(free_port); ADMIN=$(free_port)

# The origin and the nginx proxy are separate nginx instances (2 workers each), so
# that nginx, like credgate, pays for crossing processes to reach the origin: one
# instance serving both can answer its own upstream requests without a switch.
cat > "$work/origin.conf" <<NGINX
worker_processes 2;
pid $work/origin.pid;
error_log $work/origin-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    server {
        listen 127.0.0.1:$ORIGIN reuseport;
        location / { default_type application/json; return 200 '{"ok":true}'; }
    }
}
NGINX
# NGINX_WRAPPER: a command to run the nginx proxy under (bench/instructions.sh
# TARGET=nginx uses valgrind), as one process: workers would run as another user.
nginx_workers=2 nginx_global='daemon off;'
[ -z "${NGINX_WRAPPER:-}" ] || nginx_workers=1 nginx_global='daemon off; master_process off;'
cat > "$work/nginx.conf" <<NGINX
worker_processes $nginx_workers;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    upstream origin { server 127.0.0.1:$ORIGIN; keepalive 128; }
    server {
        listen 127.0.0.1:$NGINX reuseport;
        location / {
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Authorization "Bearer static-token-for-the-benchmark";
        }
    }
}
NGINX
nginx -c "$work/origin.conf" -p "$work" -g 'daemon off;' &
pids+=($!); origin_master=$!
${NGINX_WRAPPER:-} nginx -c "$work/nginx.conf" -p "$work" -g "$nginx_global" &
pids+=($!); nginx_master=$!

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
# CREDGATE_WRAPPER: a command to run credgate under (bench/instructions.sh uses valgrind).
CREDGATE_KEY=$("$CREDGATE_BIN" keygen) CREDGATE_LOG=warn \
    ${CREDGATE_WRAPPER:-} "$CREDGATE_BIN" serve --config "$work/credgate.yaml" 2>"$work/credgate.log" &
pids+=($!); credgate_pid=$!
for _ in $(seq 600); do curl -sf "http://127.0.0.1:$ADMIN/healthz" >/dev/null && break; sleep 0.1; done
curl -sf -X POST "http://127.0.0.1:$ADMIN/v1/accounts" -H 'content-type: application/json' \
    -d '{"id":"bench","integration":"bench","credentials":{"api_key":"sk_bench_0123456789abcdefghij"}}' >/dev/null
# nginx under NGINX_WRAPPER takes a while to start.
for _ in $(seq 600); do curl -sf "http://127.0.0.1:$NGINX/" >/dev/null && break; sleep 0.1; done
curl -sf -H "Host: 127.0.0.1:$ORIGIN" -H 'credgate-account: bench' "http://127.0.0.1:$PROXY/" >/dev/null

# wrk prints latency percentiles with --latency; convert them to milliseconds.
# CPU time (user + system, in clock ticks) of a process and its children: what
# the proxy itself spent, immune to how busy the rest of the machine was.
cpu_ticks() { # cpu_ticks <pid>
    { cat "/proc/$1/stat"; for child in $(pgrep -P "$1"); do cat "/proc/$child/stat"; done; } |
        awk '{ sum += $14 + $15 } END { print sum }'
}
declare -A measured=([direct]=origin_master [nginx]=nginx_master [credgate]=credgate_pid)

run() { # run <name> <connections> <url> [headers…]
    local name=$1 conns=$2 url=$3; shift 3
    local threads=$(( conns < 2 ? 1 : 2 ))
    local pid=${!measured[$name]} before after
    before=$(cpu_ticks "$pid")
    local out; out=$(wrk -t"$threads" -c"$conns" -d"$DURATION" --latency "$@" "$url")
    after=$(cpu_ticks "$pid")
    local rps p50 p99
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    p50=$(awk '$1=="50%" {print $2}' <<<"$out")
    p99=$(awk '$1=="99%" {print $2}' <<<"$out")
    local requests; requests=$(awk '/requests in/ {print $1}' <<<"$out")
    local cpu_us; cpu_us=$(awk -v t=$((after - before)) -v hz="$(getconf CLK_TCK)" -v n="$requests" 'BEGIN { printf "%.2f", t / hz * 1e6 / n }')
    printf '%s %s %s %s %s %s\n' "$name" "$conns" "$rps" "$(ms "$p50")" "$(ms "$p99")" "$cpu_us"
}
ms() { awk -v v="$1" 'BEGIN { n=v+0; if (v ~ /us$/) n/=1000; else if (v ~ /ms$/) n=n; else if (v ~ /s$/) n*=1000; printf "%.3f", n }'; }

if [ -n "${HOLD:-}" ]; then
    # HOLD=1: leave everything running for experiments by hand.
    echo "origin :$ORIGIN  nginx :$NGINX  credgate :$PROXY (Host: 127.0.0.1:$ORIGIN, credgate-account: bench)"
    wait
fi

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

# ROUNDS rounds, each running every target at both concurrencies in turn, so that
# the machine's slow spells hit all three alike; the table shows medians.
ROUNDS=${ROUNDS:-3}
results=()
for round in $(seq "$ROUNDS"); do
    for c in 1 32; do
        results+=("$(run direct "$c" "http://127.0.0.1:$ORIGIN/")")
        results+=("$(run nginx "$c" "http://127.0.0.1:$NGINX/")")
        results+=("$(run credgate "$c" "http://127.0.0.1:$PROXY/" -H "Host: 127.0.0.1:$ORIGIN" -H 'credgate-account: bench')")
    done
done

printf '%s\n' "${results[@]}" | python3 -c '
import statistics, sys
runs = {}
for line in sys.stdin:
    name, conns, rps, p50, p99, cpu = line.split()
    runs.setdefault((name, int(conns)), []).append((float(rps), float(p50), float(p99), float(cpu)))
median = {key: [statistics.median(column) for column in zip(*values)] for key, values in runs.items()}
print(f"medians of {len(next(iter(runs.values())))} runs")
print("cpu_us/req: CPU time per request of the process under test (for direct: the origin)")
print("%-9s %5s %10s %8s %8s %10s %14s %11s %11s" % ("target", "conns", "req/s", "p50_ms", "p99_ms", "rps/direct", "p99-direct_ms", "rps/nginx", "cpu_us/req"))
for conns in (1, 32):
    drps, _, dp99, _ = median[("direct", conns)]
    nrps = median[("nginx", conns)][0]
    for name in ("direct", "nginx", "credgate"):
        rps, p50, p99, cpu = median[(name, conns)]
        print("%-9s %5d %10.0f %8.3f %8.3f %10.2f %14.3f %11.2f %11.2f" % (name, conns, rps, p50, p99, rps / drps, p99 - dp99, rps / nrps, cpu))
'
