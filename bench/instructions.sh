#!/usr/bin/env bash
# Instructions credgate executes per proxied request, counted by callgrind: unlike
# req/s on this shared 2-core machine, the count repeats from run to run, so it
# can tell a 5% change in the hot path from noise. Kernel time is not counted.
#
#   bench/instructions.sh                 # the current release build
#   CREDGATE_BIN=/tmp/old bench/instructions.sh
#   TARGET=nginx bench/instructions.sh    # the nginx proxy of the same benchmark
#
# Needs: valgrind, and what bench/proxy-throughput.sh needs.
set -euo pipefail
cd "$(dirname "$0")/.."
REQUESTS=${REQUESTS:-5000}
out=$(mktemp -d)
log="$out/hold.log"
TARGET=${TARGET:-credgate}
callgrind="valgrind --tool=callgrind --callgrind-out-file=$out/callgrind.%p"
case $TARGET in
    credgate) export CREDGATE_WRAPPER=$callgrind ;;
    nginx) export NGINX_WRAPPER=$callgrind ;;
    *) echo "TARGET is credgate or nginx" >&2; exit 1 ;;
esac
HOLD=1 bash bench/proxy-throughput.sh >"$log" 2>&1 &
holder=$!
trap 'kill $holder 2>/dev/null; pkill -P $holder 2>/dev/null; rm -rf "$out"' EXIT
for _ in $(seq 600); do grep -q '^origin' "$log" && break; sleep 0.2; done
read -r origin nginx credgate <<<"$(sed -nE 's/^origin :([0-9]+) +nginx :([0-9]+) +credgate :([0-9]+).*/\1 \2 \3/p' "$log")"
proxy=${!TARGET}
[ -n "$proxy" ] || { cat "$log" >&2; exit 1; }

# Keep-alive requests, one at a time, through the proxy.
drive() {
    python3 - "$proxy" "$origin" "$1" <<'PY'
import http.client, sys
proxy, origin, count = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
conn = http.client.HTTPConnection("127.0.0.1", proxy)
for _ in range(count):
    conn.request("GET", "/", headers={"Host": f"127.0.0.1:{origin}", "credgate-account": "bench"})
    response = conn.getresponse()
    response.read()
    assert response.status == 200, response.status
PY
}

drive 500 # warm the cache and the upstream pool
callgrind_control --zero >/dev/null 2>&1
drive "$REQUESTS"
callgrind_control --dump=measured >/dev/null 2>&1
# The first explicit dump holds exactly what ran since --zero.
total=$(awk '/^(summary|totals):/ { sum += $2; nextfile } END { print sum }' "$out"/callgrind.*.1)
awk -v t="$total" -v n="$REQUESTS" -v target="$TARGET" \
    'BEGIN { printf "%s: instructions per request: %.0f (%d requests)\n", target, t / n, n }'
if [ -n "${KEEP:-}" ]; then # KEEP=file: keep the profile(s) for callgrind_annotate
    dumps=("$out"/callgrind.*.1)
    if [ ${#dumps[@]} -eq 1 ]; then
        cp "${dumps[0]}" "$KEEP"
    else
        for i in "${!dumps[@]}"; do cp "${dumps[$i]}" "$KEEP.$i"; done
    fi
fi
