#!/usr/bin/env bash
# GraphQL fan-out benchmark: one query over three backends that each answer after 20 ms, the
# user first and then its orders and recommendations side by side, so the ideal answer takes
# 40 ms. The same query with every call cached (`cache: "600s"`) shows the gateway's own cost.
#
#   bench/graphql.sh                          # about 3-4 minutes (builds the gateway if needed)
#   DURATION=3s RATES="100 400 1600" bench/graphql.sh
#   GATEWAY_BIN=target/release/gateway bench/graphql.sh
#
# What it prints, for the uncached query and then the warm-cache one:
#   1. p50 at a low open-loop rate (LOW_RATE) against the ideal: the latency the gateway adds;
#   2. open-loop load at rising RATES (oha -q RATE --latency-correction, so a late request counts
#      its wait): p50/p99 per rate, and the highest rate whose p99 stays within ideal + P99_SLACK_MS
#      with no errors. Each uncached rate is preceded by the same load sent straight to the backend
#      (3 calls per query, so 3 x RATE), to show the backend is not what gives way;
#   3. the gateway's CPU time per request at CPU_RATE (utime + stime of /proc/PID/stat).
#
# Environment:
#   GATEWAY_BIN       gateway binary, relative to the repo root (default target/release/gateway,
#                     built with `cargo build --release --locked -p gateway` when missing or older
#                     than the sources)
#   LOW_RATE          req/s of the p50 run (default 20), for LOW_DURATION (default 10s)
#   RATES             rising req/s of the uncached query (default "100 200 400 800 1200 1600 2400 3200")
#   WARM_RATES        rising req/s of the warm-cache query (default "500 1000 2000 4000 8000 16000")
#   DURATION          per rate (default 5s); the rising runs stop at the first rate that fails
#   CPU_RATE          req/s of the CPU-per-request runs (default 300), CPU_ROUNDS runs (default 3)
#                     of CPU_DURATION (default 5s); the cheapest run is the steadiest figure, since
#                     a noisy host only ever adds CPU time
#   CONNS             oha connections (default 256)
#   P99_SLACK_MS      the p99 allowance over the ideal (default 20)
#   LOAD_CPU          CPU for oha, the backend and this script (default 0)
#   GATEWAY_CPU       CPU for the gateway (default 1)
#   BENCH_KEEP_TMP    1 = keep the temp dir (oha JSON, logs)
#
# Needs oha (`cargo install --locked oha`; this script offers to run it when missing with
# BENCH_INSTALL=1), python3, curl and taskset. See bench/README.md.
set -euo pipefail

LOW_RATE=${LOW_RATE:-20}
LOW_DURATION=${LOW_DURATION:-10s}
RATES=${RATES:-100 200 400 800 1200 1600 2400 3200}
WARM_RATES=${WARM_RATES:-500 1000 2000 4000 8000 16000}
DURATION=${DURATION:-5s}
CPU_RATE=${CPU_RATE:-300}
CPU_DURATION=${CPU_DURATION:-5s}
CPU_ROUNDS=${CPU_ROUNDS:-3}
CONNS=${CONNS:-256}
P99_SLACK_MS=${P99_SLACK_MS:-20}
LOAD_CPU=${LOAD_CPU:-0}
GATEWAY_CPU=${GATEWAY_CPU:-1}
GATEWAY_BIN=${GATEWAY_BIN:-target/release/gateway}
DELAY_MS=20               # each backend call; must match schema/bench.graphql
IDEAL_MS=$((2 * DELAY_MS)) # the user, then orders and recommendations at once
WARMUP_S=2

cd "$(dirname "${BASH_SOURCE[0]}")/.."
BENCH_NAME=graphql.sh
source bench/lib.sh
BENCH_DIR=$REPO_ROOT/bench/graphql

secs() { # "5s" / "500ms" / "2m" / "7" -> seconds (may be fractional)
    awk -v x="$1" 'BEGIN {
        if (match(x, /^[0-9.]+/)) { n = substr(x, 1, RLENGTH); u = substr(x, RLENGTH + 1) } else exit 1
        if (u == "" || u == "s") f = 1; else if (u == "ms") f = 0.001; else if (u == "m") f = 60; else exit 1
        print n * f }'
}
for v in LOW_RATE CPU_RATE CPU_ROUNDS CONNS P99_SLACK_MS; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer (got '${!v}')"
done
for r in $RATES $WARM_RATES; do
    [[ $r =~ ^[1-9][0-9]*$ ]] || die "RATES and WARM_RATES must be positive integers (got '$r')"
done
for v in DURATION LOW_DURATION CPU_DURATION; do
    secs "${!v}" >/dev/null || die "$v must be a duration like 5s (got '${!v}')"
done

# ---------------------------------------------------------------- tools
for tool in curl python3 taskset getconf; do
    command -v "$tool" >/dev/null 2>&1 || die "'$tool' is required but not found"
done
find_oha || exit 1
taskset -c "$LOAD_CPU" true 2>/dev/null || die "cannot pin to CPU $LOAD_CPU (LOAD_CPU)"
taskset -c "$GATEWAY_CPU" true 2>/dev/null || die "cannot pin to CPU $GATEWAY_CPU (GATEWAY_CPU); needs >= 2 CPUs"
[[ $LOAD_CPU != "$GATEWAY_CPU" ]] || die "LOAD_CPU and GATEWAY_CPU must differ"

# ---------------------------------------------------------------- gateway binary
gateway_binary

# This script, curl and python stay off the gateway's CPU; oha and the backend are pinned below.
taskset -pc "$LOAD_CPU" $$ >/dev/null
ulimit -n 65536 2>/dev/null || true

# ---------------------------------------------------------------- temp dir, cleanup
bench_tmp graphql

# ---------------------------------------------------------------- ports
read -r BACKEND_PORT GW_PORT < <(python3 - <<'EOF'
import socket
socks = []
for _ in range(2):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks:
    s.close()
EOF
)
BACKEND=http://127.0.0.1:$BACKEND_PORT
GW=http://127.0.0.1:$GW_PORT

# ---------------------------------------------------------------- start + readiness
# wait_ready NAME URL PID LOGFILE
wait_ready() {
    local name=$1 url=$2 pid=$3 logf=$4 code="" deadline=$((SECONDS + 15))
    while ((SECONDS < deadline)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "graphql.sh: $name exited during startup; last lines of its log:" >&2
            tail -n 50 "$logf" >&2 || true
            exit 1
        fi
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$url" 2>/dev/null || true)
        [[ $code == 200 ]] && return 0
        sleep 0.1
    done
    echo "graphql.sh: $name not ready at $url after 15 s (last status '${code:-none}'); its log:" >&2
    tail -n 50 "$logf" >&2 || true
    exit 1
}

taskset -c "$LOAD_CPU" python3 "$BENCH_DIR/backend.py" "$BACKEND_PORT" >"$tmp/backend.log" 2>&1 &
BACKEND_PID=$!
PIDS+=("$BACKEND_PID")
wait_ready backend "$BACKEND/health" "$BACKEND_PID" "$tmp/backend.log"

BENCH_BACKEND_URL=$BACKEND RUST_LOG=${RUST_LOG:-warn} taskset -c "$GATEWAY_CPU" \
    "$GATEWAY_BIN" run --config "$BENCH_DIR/routes.toml" --listen "127.0.0.1:$GW_PORT" \
    >"$tmp/gateway.log" 2>&1 &
GW_PID=$!
PIDS+=("$GW_PID")
# A GET without a query is a GraphQL-over-HTTP 400; any HTTP answer means it is listening.
deadline=$((SECONDS + 15))
until curl -s -o /dev/null --max-time 1 "$GW/graphql"; do
    kill -0 "$GW_PID" 2>/dev/null || { tail -n 50 "$tmp/gateway.log" >&2; die "the gateway exited during startup"; }
    ((SECONDS < deadline)) || { tail -n 50 "$tmp/gateway.log" >&2; die "the gateway is not listening on $GW after 15 s"; }
    sleep 0.1
done

# ---------------------------------------------------------------- the queries
SELECTION='id name orders { id status total items { productId quantity } } recommendations { id name price inStock }'
COLD_QUERY="{ user(id: \\\"u1\\\") { $SELECTION } }"
WARM_QUERY="{ cachedUser(id: \\\"u1\\\") { $SELECTION } }"
COLD_BODY="{\"query\":\"$COLD_QUERY\"}"
WARM_BODY="{\"query\":\"$WARM_QUERY\"}"

backend_calls() { # total calls the backend has answered (users + orders + catalog)
    curl -s --max-time 2 "$BACKEND/stats" | python3 -c 'import json,sys; print(sum(json.load(sys.stdin).values()))'
}

# check_query NAME BODY: one request must be a 200 with data and no errors; otherwise print the
# exact request and response and stop.
check_query() {
    local name=$1 body=$2 out
    out=$(curl -s -i --max-time 5 "$GW/graphql" -H 'content-type: application/json' -d "$body" || true)
    if ! printf '%s' "$out" | python3 -c '
import json, sys
raw = sys.stdin.read()
head, _, body = raw.replace("\r\n", "\n").partition("\n\n")
ok = head.split("\n")[0].split(" ")[1:2] == ["200"]
doc = json.loads(body) if ok else {}
ok = ok and not doc.get("errors") and all(
    isinstance(v, dict) and len(v.get("orders", [])) == 2 and len(v.get("recommendations", [])) == 3
    for v in (doc.get("data") or {"x": None}).values())
sys.exit(0 if ok else 1)'; then
        echo "graphql.sh: the gateway's answer to the $name query is not the expected data" >&2
        echo "request:  curl -s -i $GW/graphql -H 'content-type: application/json' -d '$body'" >&2
        echo "response:" >&2
        printf '%s\n' "$out" >&2
        exit 1
    fi
}

calls0=$(backend_calls)
check_query uncached "$COLD_BODY"
calls1=$(backend_calls)
((calls1 - calls0 == 3)) || die "the uncached query made $((calls1 - calls0)) backend calls (expected 3)"
check_query warm-cache "$WARM_BODY"   # fills the cache
calls2=$(backend_calls)
check_query warm-cache "$WARM_BODY"
calls3=$(backend_calls)
((calls3 == calls2)) || die "the warm-cache query still made $((calls3 - calls2)) backend calls"

# ---------------------------------------------------------------- load
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$GW_PID/stat"; }
HZ=$(getconf CLK_TCK)

# run_oha OUT RATE DURATION URL [oha args...]: an open-loop run of RATE x DURATION requests.
# Sets R_OK R_BAD R_P50 R_P99 R_RPS R_CPU_MS (gateway CPU ms per successful request) R_CALLS
# (backend calls during the run).
run_oha() {
    local out=$1 rate=$2 dur=$3 url=$4 n t0 t1 c0 c1
    shift 4
    n=$(awk -v r="$rate" -v d="$(secs "$dur")" 'BEGIN { printf "%d", r * d }')
    ((n > 0)) || n=1
    c0=$(backend_calls)
    t0=$(cpu_ticks)
    if ! taskset -c "$LOAD_CPU" oha --no-tui "${OHA_JSON[@]}" -n "$n" -q "$rate" --latency-correction \
        -c "$CONNS" "$@" "$url" >"$out" 2>"$out.err"; then
        cat "$out.err" >&2
        die "oha failed against $url (rate $rate)"
    fi
    t1=$(cpu_ticks)
    c1=$(backend_calls)
    read -r R_OK R_BAD R_RPS R_P50 R_P99 _ < <(oha_summary "$out")
    R_CPU_MS=$(awk -v t0="$t0" -v t1="$t1" -v hz="$HZ" -v n="$R_OK" \
        'BEGIN { if (n > 0) printf "%.3f", (t1 - t0) / hz * 1000 / n; else print "nan" }')
    R_CALLS=$((c1 - c0))
}

gw_oha() { # OUT RATE DURATION BODY
    run_oha "$1" "$2" "$3" "$GW/graphql" -m POST -H 'content-type: application/json' -d "$4"
}
direct_oha() { # OUT RATE DURATION: the backend alone, one 20 ms call per request
    run_oha "$1" "$2" "$3" "$BACKEND/users/u1?delay_ms=$DELAY_MS"
}

# cpu_rounds NAME BODY: CPU_ROUNDS runs at CPU_RATE; sets CPU_MIN, CPU_MED, CPU_BAD, CPU_CALLS, CPU_OK
cpu_rounds() {
    local name=$1 body=$2 i all=()
    CPU_BAD=0 CPU_CALLS=0 CPU_OK=0
    for ((i = 1; i <= CPU_ROUNDS; i++)); do
        gw_oha "$tmp/cpu-$name-$i.json" "$CPU_RATE" "$CPU_DURATION" "$body"
        echo "cpu run $i at $CPU_RATE req/s for $CPU_DURATION: $R_CPU_MS ms/request ($R_OK requests, $R_BAD errors, p50 $R_P50 ms, p99 $R_P99 ms, $R_CALLS backend calls)"
        all+=("$R_CPU_MS")
        CPU_BAD=$((CPU_BAD + R_BAD)) CPU_CALLS=$((CPU_CALLS + R_CALLS)) CPU_OK=$((CPU_OK + R_OK))
    done
    read -r CPU_MIN CPU_MED < <(printf '%s\n' "${all[@]}" | sort -g | awk '{ v[NR] = $1 } END {
        m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "%.3f %.3f\n", v[1], m }')
    echo "cpu: cheapest $CPU_MIN ms/request, median $CPU_MED ms/request"
}

RESULTS=$tmp/results.tsv
: >"$RESULTS"
record() { printf '%s\n' "$*" | tr ' ' '\t' >>"$RESULTS"; }

# rising NAME BODY STOP_MS RATES_LIST WITH_DIRECT: rising open-loop rates until one has errors
# or a p99 over STOP_MS (the summary then finds the highest rate within ideal + P99_SLACK_MS).
rising() {
    local name=$1 body=$2 stop=$3 rates=$4 with_direct=$5 r cpr verdict
    printf '%-8s %-8s %8s %8s %9s %7s %12s %11s\n' target rate/s "p50 ms" "p99 ms" "achieved" errors "calls/req" "cpu ms/req"
    for r in $rates; do
        if [[ $with_direct == 1 ]]; then
            direct_oha "$tmp/direct-$r.json" $((3 * r)) "$DURATION"
            printf '%-8s %-8s %8s %8s %9s %7s %12s %11s\n' direct $((3 * r)) "$R_P50" "$R_P99" "$R_RPS" "$R_BAD" - -
            record "$name-direct" $((3 * r)) "$R_P50" "$R_P99" "$R_RPS" "$R_BAD" 0 0
        fi
        gw_oha "$tmp/$name-$r.json" "$r" "$DURATION" "$body"
        cpr=$(awk -v c="$R_CALLS" -v n="$R_OK" 'BEGIN { if (n > 0) printf "%.2f", c / n; else print "nan" }')
        printf '%-8s %-8s %8s %8s %9s %7s %12s %11s\n' "$name" "$r" "$R_P50" "$R_P99" "$R_RPS" "$R_BAD" "$cpr" "$R_CPU_MS"
        record "$name" "$r" "$R_P50" "$R_P99" "$R_RPS" "$R_BAD" "$cpr" "$R_CPU_MS"
        verdict=$(awk -v p="$R_P99" -v l="$stop" -v e="$R_BAD" 'BEGIN { print (p != "nan" && p <= l && e == 0) ? "ok" : "over" }')
        [[ $verdict == ok ]] || break
    done
}

echo "# GraphQL fan-out benchmark: $(oha --version 2>/dev/null | head -n1), python $(python3 -c 'import platform; print(platform.python_version())')"
echo "# gateway: $GATEWAY_BIN ($(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$REPO_ROOT" diff --quiet HEAD -- gateway 2>/dev/null || echo ', gateway/ has uncommitted changes'))"
echo "# cpus: oha + backend on $LOAD_CPU, gateway on $GATEWAY_CPU (worker_threads = 1); $(getconf _NPROCESSORS_ONLN) online"
echo "# each backend call answers after $DELAY_MS ms; ideal $IDEAL_MS ms uncached, 0 ms warm; oha -c $CONNS, open loop with --latency-correction"
echo

# Warm up connection pools on both sides (not measured).
gw_oha "$tmp/warmup-cold.json" 100 "${WARMUP_S}s" "$COLD_BODY"
gw_oha "$tmp/warmup-warm.json" 500 "${WARMUP_S}s" "$WARM_BODY"

echo "## uncached: user -> (orders | recommendations), 3 backend calls of $DELAY_MS ms"
# The backend alone: one delayed call, and /health (no delay: oha + loopback + Python's parsing).
direct_oha "$tmp/low-direct.json" "$LOW_RATE" "$LOW_DURATION"
LOW_DIRECT_P50=$R_P50
run_oha "$tmp/low-floor.json" "$LOW_RATE" "$LOW_DURATION" "$BACKEND/health"
LOW_FLOOR_P50=$R_P50
gw_oha "$tmp/low-cold.json" "$LOW_RATE" "$LOW_DURATION" "$COLD_BODY"
LOW_COLD_P50=$R_P50 LOW_COLD_P99=$R_P99 LOW_COLD_BAD=$R_BAD
echo "low rate $LOW_RATE req/s for $LOW_DURATION: gateway p50 $R_P50 ms, p99 $R_P99 ms, errors $R_BAD"
echo "  backend alone: one $DELAY_MS ms call p50 $LOW_DIRECT_P50 ms, /health (no delay) p50 $LOW_FLOOR_P50 ms"
echo
# Keep rising while p99 stays within P99_SLACK_MS of the ideal or of the low-rate p50, whichever
# is higher: when the gateway misses the ideal even unloaded, this still finds where load hurts.
stop_at() { awk -v a="$1" -v b="$2" -v s="$P99_SLACK_MS" 'BEGIN { print (a > b ? a : b) + s }'; }
rising cold "$COLD_BODY" "$(stop_at "$IDEAL_MS" "$LOW_COLD_P50")" "$RATES" 1
echo
cpu_rounds cold "$COLD_BODY"
COLD_CPU=$CPU_MIN COLD_CPU_MED=$CPU_MED COLD_CPU_BAD=$CPU_BAD COLD_CPU_CALLS=$CPU_CALLS COLD_CPU_OK=$CPU_OK
echo

echo "## warm cache: the same three calls with cache: \"600s\", no backend call"
check_query warm-cache "$WARM_BODY"   # (re)fills the cache if it ever expired
gw_oha "$tmp/low-warm.json" "$LOW_RATE" "$LOW_DURATION" "$WARM_BODY"
LOW_WARM_P50=$R_P50 LOW_WARM_P99=$R_P99 LOW_WARM_BAD=$R_BAD
echo "low rate $LOW_RATE req/s for $LOW_DURATION: gateway p50 $R_P50 ms, p99 $R_P99 ms, errors $R_BAD, backend calls $R_CALLS"
echo
rising warm "$WARM_BODY" "$(stop_at 0 "$LOW_WARM_P50")" "$WARM_RATES" 0
echo
cpu_rounds warm "$WARM_BODY"
WARM_CPU=$CPU_MIN WARM_CPU_MED=$CPU_MED WARM_CPU_BAD=$CPU_BAD WARM_CPU_CALLS=$CPU_CALLS
echo

# ---------------------------------------------------------------- summary
python3 - "$RESULTS" "$IDEAL_MS" "$P99_SLACK_MS" "$DELAY_MS" "$LOW_RATE" \
    "$LOW_COLD_P50" "$LOW_DIRECT_P50" "$LOW_FLOOR_P50" "$LOW_WARM_P50" "$COLD_CPU" "$WARM_CPU" \
    "$COLD_CPU_MED" "$WARM_CPU_MED" "$CPU_RATE" \
    "$((LOW_COLD_BAD + LOW_WARM_BAD + COLD_CPU_BAD + WARM_CPU_BAD))" "$COLD_CPU_CALLS" "$COLD_CPU_OK" "$WARM_CPU_CALLS" <<'EOF'
import sys

(path, ideal, slack, delay, low_rate, cold_p50, direct_p50, floor_p50, warm_p50, cold_cpu,
 warm_cpu, cold_med, warm_med, cpu_rate, errors, cold_calls, cold_ok, warm_calls) = sys.argv[1:19]
ideal, slack, delay = float(ideal), float(slack), float(delay)
rows = [l.rstrip("\n").split("\t") for l in open(path) if l.strip()]

def verdict(ok):
    return "PASS" if ok else "FAIL"

def best_rate(name, limit):
    best, last = None, None
    for r in rows:
        if r[0] != name:
            continue
        last = int(r[1])
        if r[3] != "nan" and float(r[3]) <= limit and int(r[5]) == 0:
            best = int(r[1])
        else:
            break
    return best, last

def knee(name, p50):
    best, _ = best_rate(name, p50 + slack)
    tried = [int(r[1]) for r in rows if r[0] == name]
    more = " (every rate tried passed)" if tried and best == tried[-1] else ""
    return f"{best if best else 'none'} req/s{more}"

print("summary")
cold_p50, direct_p50, floor_p50, warm_p50 = map(float, (cold_p50, direct_p50, floor_p50, warm_p50))
added = cold_p50 - ideal
print(f"uncached p50 at {low_rate} req/s: {cold_p50:.2f} ms vs ideal {ideal:.0f} ms: "
      f"added {added:.2f} ms (target <= 1 ms)  {verdict(added <= 1.0)}")
# The ideal-based figure also holds the backend's own time beyond 20 ms per call (asyncio's timer
# granularity, Python's parsing): this one takes it out. A perfect gateway would answer in one
# client round trip plus two backend calls: 2 x (one direct call) - (one direct round trip).
real_ideal = 2 * direct_p50 - floor_p50
print(f"  over the measured backend (2 x {direct_p50:.2f} - {floor_p50:.2f} = {real_ideal:.2f} ms): "
      f"added {cold_p50 - real_ideal:.2f} ms")
best, last = best_rate("cold", ideal + slack)
tried = [int(r[1]) for r in rows if r[0] == "cold"]
print(f"uncached: highest rate with p99 <= {ideal + slack:.0f} ms and no errors: "
      f"{best if best else 'none'} req/s" + (" (every rate tried passed; raise RATES)" if best == tried[-1] else ""))
print(f"  highest rate with p99 <= low-rate p50 + {slack:.0f} ms ({cold_p50 + slack:.1f} ms) and no errors: "
      f"{knee('cold', cold_p50)}")
print(f"uncached: gateway CPU at {cpu_rate} req/s {float(cold_cpu):.3f} ms/request, cheapest run "
      f"(median {float(cold_med):.3f}; bar 0.10-0.15 ms)  {verdict(float(cold_cpu) <= 0.15)}")
if int(cold_ok) and int(cold_calls) != 3 * int(cold_ok):
    print(f"  note: {cold_calls} backend calls for {cold_ok} requests (expected 3 per request)")
print(f"warm cache p50 at {low_rate} req/s: {warm_p50:.2f} ms vs ideal 0 ms: added {warm_p50:.2f} ms "
      f"(target <= 1 ms)  {verdict(warm_p50 <= 1.0)}")
best, last = best_rate("warm", slack)
tried = [int(r[1]) for r in rows if r[0] == "warm"]
print(f"warm cache: highest rate with p99 <= {slack:.0f} ms and no errors: "
      f"{best if best else 'none'} req/s" + (" (every rate tried passed; raise WARM_RATES)" if best == tried[-1] else ""))
print(f"  highest rate with p99 <= low-rate p50 + {slack:.0f} ms ({warm_p50 + slack:.1f} ms) and no errors: "
      f"{knee('warm', warm_p50)}")
print(f"warm cache: gateway CPU at {cpu_rate} req/s {float(warm_cpu):.3f} ms/request, cheapest run "
      f"(median {float(warm_med):.3f})")
if int(warm_calls):
    print(f"  note: {warm_calls} backend calls during the warm-cache CPU runs (expected 0)")
if int(errors) or any(int(r[5]) for r in rows if not r[0].endswith("direct")):
    print("WARNING: some runs had non-200 responses or connection errors (see the errors columns)")
EOF
