#!/usr/bin/env bash
# Rate-limiter memory with many distinct clients: wrk sends requests through the gateway, each
# with a new client address in X-Forwarded-For (the gateway trusts 127.0.0.1 as a proxy, and the
# policy counts per IP), until KEYS distinct clients have been counted. The gateway's RSS is read
# before, right after (every client still remembered: one request costs 30 s of quota), and after
# the clients have gone idle and the sweep has forgotten them.
#
#   bench/ratelimit-keys.sh                 # 1,000,000 clients, about 2.5 min
#   KEYS=200000 bench/ratelimit-keys.sh     # quicker
#
# Needs nginx (the backend), wrk, curl, python3, taskset; GATEWAY_BIN as in proxy.sh.
set -euo pipefail

KEYS=${KEYS:-1000000}
IDLE_WAIT=${IDLE_WAIT:-90}
LOAD_CPU=${LOAD_CPU:-0}
PROXY_CPU=${PROXY_CPU:-1}
GATEWAY_BIN=${GATEWAY_BIN:-target/release/gateway}

cd "$(dirname "${BASH_SOURCE[0]}")/.."
BENCH_NAME=ratelimit-keys.sh
source bench/lib.sh
[[ $KEYS =~ ^[1-9][0-9]*$ ]] || die "KEYS must be a positive integer"
for tool in nginx wrk curl python3 taskset; do
    command -v "$tool" >/dev/null || die "'$tool' is required (apt-get install -y nginx wrk)"
done
gateway_binary
taskset -pc "$LOAD_CPU" $$ >/dev/null
ulimit -n 65536 2>/dev/null || true

bench_tmp rlkeys

read -r BACKEND_PORT GW_PORT < <(python3 -c '
import socket
s = [socket.socket() for _ in range(2)]
for x in s: x.bind(("127.0.0.1", 0))
print(*(x.getsockname()[1] for x in s))')

nginx_conf backend "    listen 127.0.0.1:$BACKEND_PORT; location / { return 200 \"ok\"; }"
taskset -c "$LOAD_CPU" nginx -p "$tmp/" -c "$tmp/backend.conf" -g 'daemon off;' &
PIDS+=($!)

# One request per client costs 30 s of its quota, so every client stays remembered until the
# load ends; 30-60 s after that, the sweep (every 10 s) forgets them.
cat >"$tmp/gateway.toml" <<EOF
[server]
listen = "127.0.0.1:$GW_PORT"
worker_threads = 1
trusted_proxies = ["127.0.0.1"]
rate_limit = "per_ip"

[services.bench]
urls = ["http://127.0.0.1:$BACKEND_PORT"]

[rate_limits.per_ip]
requests = 1
per = "30s"
burst = 10
key = "ip"

[[routes]]
prefix = "/"
service = "bench"
auth = "none"
EOF
taskset -c "$PROXY_CPU" "$GATEWAY_BIN" run --config "$tmp/gateway.toml" >"$tmp/gateway.log" 2>&1 &
GW_PID=$!
PIDS+=("$GW_PID")
for _ in $(seq 100); do
    curl -sf -o /dev/null "http://127.0.0.1:$GW_PORT/" && break
    sleep 0.1
done
curl -sf -o /dev/null "http://127.0.0.1:$GW_PORT/" || { cat "$tmp/gateway.log"; die "gateway not ready"; }

rss_mib() { awk '/^VmRSS:/ { printf "%.1f", $2 / 1024 }' "/proc/$GW_PID/status"; }

# Each request carries the next client address (10.x.y.z; one wrk thread, so one counter). After
# KEYS requests the script drops a marker file, and wrk is stopped (it would otherwise run out -d).
cat >"$tmp/keys.lua" <<EOF
local n, keys = 0, $KEYS
request = function()
  n = n + 1
  if n == keys then local f = io.open("$tmp/done", "w"); f:write("done"); f:close() end
  local ip = string.format("10.%d.%d.%d", math.floor(n / 65536) % 256, math.floor(n / 256) % 256, n % 256)
  return wrk.format("GET", "/", { ["X-Forwarded-For"] = ip })
end
EOF

before=$(rss_mib)
log "gateway RSS before: $before MiB; sending $KEYS distinct clients"
start=$SECONDS
taskset -c "$LOAD_CPU" wrk -t1 -c10 -d900s -s "$tmp/keys.lua" "http://127.0.0.1:$GW_PORT/" >"$tmp/wrk.txt" 2>&1 &
WRK_PID=$!
while [[ ! -e $tmp/done ]] && kill -0 "$WRK_PID" 2>/dev/null; do sleep 0.2; done
kill -INT "$WRK_PID" 2>/dev/null || true
wait "$WRK_PID" || true
[[ -e $tmp/done ]] || { cat "$tmp/wrk.txt"; die "wrk ended before sending $KEYS requests"; }
loaded=$(rss_mib)
sent=$(awk '/requests in/ { print $1 }' "$tmp/wrk.txt")
log "wrk: $sent requests in $((SECONDS - start)) s ($(awk '/^Requests\/sec:/ { print $2 }' "$tmp/wrk.txt") req/s)"
non2xx=$(awk '/Non-2xx/ { print $NF }' "$tmp/wrk.txt")
[[ -z $non2xx ]] || log "WARNING: $non2xx non-2xx responses"

log "waiting up to $IDLE_WAIT s for the idle clients to be forgotten"
after=$loaded
for ((i = 0; i < IDLE_WAIT; i += 5)); do
    sleep 5
    after=$(rss_mib)
done

python3 - "$before" "$loaded" "$after" "$KEYS" <<'PY'
import sys
before, loaded, after, keys = map(float, sys.argv[1:5])
growth = loaded - before
print(f"gateway RSS: before {before:.1f} MiB, with {int(keys):,} clients {loaded:.1f} MiB, "
      f"after they went idle {after:.1f} MiB")
print(f"RSS growth for {int(keys):,} clients: {growth:.1f} MiB (target <= 64)  "
      f"{'PASS' if growth <= 64 else 'FAIL'}")
reclaimed = (loaded - after) / growth if growth > 0 else 1.0
print(f"reclaimed after idle: {reclaimed * 100:.0f}% of the growth")
PY
