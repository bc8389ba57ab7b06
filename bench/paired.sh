#!/usr/bin/env bash
# Paired comparison of two gateway builds on the proxy path, in both orders.
#
#   bench/paired.sh OLD_BINARY NEW_BINARY            # 9 rounds of 3 s per order
#   ROUNDS=15 DURATION=5s bench/paired.sh A B
#
# Both gateways (worker_threads = 1) and an nginx proxy_pass reference share PROXY_CPU; an nginx
# backend (`return 200` with 1 KiB) and wrk (-c CONNS) run on LOAD_CPU. Each round runs wrk
# against A, B and nginx in turn, reading each one's CPU time from /proc/PID/stat. On a shared VM
# the slot a gateway runs in biases the ratio by several per cent (the same binary as A and B
# measured 1.047), so the whole comparison runs twice, the second time with A and B swapped, and
# the two ratios are combined (geometric mean). It prints NEW/OLD for requests/s and OLD/NEW for
# CPU per request (above 1 = the new build is better), and each build against nginx.
#
# Copy the binaries somewhere stable first (cargo overwrites target/release/gateway):
#   git stash; cargo build --release -p gateway; cp target/release/gateway /tmp/gw-old
#   git stash pop; cargo build --release -p gateway; cp target/release/gateway /tmp/gw-new
#   bench/paired.sh /tmp/gw-old /tmp/gw-new
set -euo pipefail

[[ $# == 2 ]] || { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
ROUNDS=${ROUNDS:-9}
DURATION=${DURATION:-3s}
CONNS=${CONNS:-50}
LOAD_CPU=${LOAD_CPU:-0}
PROXY_CPU=${PROXY_CPU:-1}
OLD=$(realpath "$1")
NEW=$(realpath "$2")

cd "$(dirname "${BASH_SOURCE[0]}")/.."
BENCH_NAME=paired.sh
GATEWAY_BIN=$OLD
source bench/lib.sh
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer (got '$ROUNDS')"
for bin in "$OLD" "$NEW"; do [[ -x $bin ]] || die "$bin is not an executable"; done
for tool in nginx wrk python3 taskset curl; do
    command -v "$tool" >/dev/null 2>&1 || die "'$tool' is required (apt-get install -y nginx wrk)"
done
taskset -pc "$LOAD_CPU" $$ >/dev/null
bench_tmp paired

read -r BACKEND_PORT NGINX_PORT PORT_A PORT_B < <(python3 - <<'EOF'
import socket
socks = [socket.socket() for _ in range(4)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
)
BODY=$(printf '%*s' 1024 '' | tr ' ' 'x')
nginx_conf backend "listen 127.0.0.1:$BACKEND_PORT; location / { return 200 \"$BODY\"; }"
nginx_proxy_conf proxy "$NGINX_PORT" "$BACKEND_PORT" 1

wait_ready() { # PORT
    local deadline=$((SECONDS + 10))
    until curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$1/"; do
        ((SECONDS < deadline)) || die "nothing answers on port $1 (see $tmp)"
        sleep 0.1
    done
}

taskset -c "$LOAD_CPU" nginx -p "$tmp/" -c "$tmp/backend.conf" -g 'daemon off;' 2>>"$tmp/backend.error.log" &
PIDS+=($!)
taskset -c "$PROXY_CPU" nginx -p "$tmp/" -c "$tmp/proxy.conf" -g 'daemon off;' 2>>"$tmp/proxy.error.log" &
NGINX_MASTER=$!
PIDS+=($!)
wait_ready "$BACKEND_PORT"
wait_ready "$NGINX_PORT"
NGINX_WORKER=$(pgrep -P "$NGINX_MASTER" | head -n1)

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# compare FIRST SECOND: one pass of ROUNDS rounds; prints "rps_first rps_second rps_nginx
# cpu_first cpu_second cpu_nginx" (medians) on its last line.
compare() {
    local first=$1 second=$2 pa pb
    plain_gateway_toml "$PORT_A" "$BACKEND_PORT" >"$tmp/a.toml"
    plain_gateway_toml "$PORT_B" "$BACKEND_PORT" >"$tmp/b.toml"
    RUST_LOG=warn taskset -c "$PROXY_CPU" "$first" run --config "$tmp/a.toml" >"$tmp/a.log" 2>&1 &
    pa=$!
    RUST_LOG=warn taskset -c "$PROXY_CPU" "$second" run --config "$tmp/b.toml" >"$tmp/b.log" 2>&1 &
    pb=$!
    PIDS+=("$pa" "$pb")
    wait_ready "$PORT_A"
    wait_ready "$PORT_B"
    local -A port=([a]=$PORT_A [b]=$PORT_B [n]=$NGINX_PORT) pid=([a]=$pa [b]=$pb [n]=$NGINX_WORKER)
    local t r c0 c1 out
    for t in a b n; do taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d2s "http://127.0.0.1:${port[$t]}/" >/dev/null; done
    for r in $(seq "$ROUNDS"); do
        for t in a b n; do
            c0=$(ticks "${pid[$t]}")
            out=$(taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"$DURATION" "http://127.0.0.1:${port[$t]}/")
            c1=$(ticks "${pid[$t]}")
            grep -q "Non-2xx" <<<"$out" && die "$t answered errors: $out"
            echo "$t $(awk '/Requests\/sec/{print $2}' <<<"$out") $(awk '/requests in/{print $1}' <<<"$out") $((c1 - c0))"
        done
    done >"$tmp/pass.txt"
    kill "$pa" "$pb"
    wait "$pa" "$pb" 2>/dev/null || true
    python3 - "$tmp/pass.txt" <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
med = lambda t, f: statistics.median(f(r) for r in rows if r[0] == t)
rps = [med(t, lambda r: float(r[1])) for t in "abn"]
cpu = [med(t, lambda r: int(r[3]) * 10000 / int(r[2])) for t in "abn"]
print(*(f"{x:.2f}" for x in rps + cpu))
EOF
}

# In this shell, not a subshell: a failure stops the script and its cleanup stops the gateways.
log "pass 1 of 2: old as A, new as B ($ROUNDS rounds of $DURATION)"
compare "$OLD" "$NEW" >"$tmp/pass1"
log "pass 2 of 2: new as A, old as B"
compare "$NEW" "$OLD" >"$tmp/pass2"
read -r o1 n1 x1 co1 cn1 cx1 <"$tmp/pass1"
read -r n2 o2 x2 cn2 co2 cx2 <"$tmp/pass2"
python3 - "$o1" "$n1" "$x1" "$co1" "$cn1" "$cx1" "$o2" "$n2" "$x2" "$co2" "$cn2" "$cx2" <<'EOF'
import math, sys
o1, n1, x1, co1, cn1, cx1, o2, n2, x2, co2, cn2, cx2 = map(float, sys.argv[1:])
gm = lambda a, b: math.sqrt(a * b)
print(f"pass 1: old {o1:.0f} req/s {co1:.2f} us/req, new {n1:.0f} req/s {cn1:.2f} us/req, nginx {x1:.0f} req/s {cx1:.2f} us/req")
print(f"pass 2: old {o2:.0f} req/s {co2:.2f} us/req, new {n2:.0f} req/s {cn2:.2f} us/req, nginx {x2:.0f} req/s {cx2:.2f} us/req")
print(f"new/old req/s: {gm(n1 / o1, n2 / o2):.3f} (passes: {n1 / o1:.3f}, {n2 / o2:.3f})")
print(f"old/new CPU per request: {gm(co1 / cn1, co2 / cn2):.3f} (passes: {co1 / cn1:.3f}, {co2 / cn2:.3f})")
print(f"against nginx, req/s: old {gm(o1 / x1, o2 / x2):.3f}, new {gm(n1 / x1, n2 / x2):.3f}")
EOF
