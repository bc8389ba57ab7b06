#!/usr/bin/env bash
# Reverse-proxy benchmark: direct backend vs gateway vs nginx proxy_pass.
#
#   bench/proxy.sh                        # full run (builds the gateway if missing)
#   ROUNDS=3 DURATION=5s bench/proxy.sh   # shorter run
#   BENCH_SKIP_GATEWAY=1 bench/proxy.sh   # only direct and the nginx rows (no gateway needed)
#   BENCH_INSTALL=1 bench/proxy.sh        # apt-get install nginx/wrk if missing
#
# Environment:
#   GATEWAY_BIN         gateway binary, relative to the repo root (default target/release/gateway)
#   ROUNDS              interleaved rounds (default 5)
#   DURATION            wrk duration per measured run (default 10s)
#   WARMUP              wrk duration of the per-target warm-up (default 2s)
#   CONNS               wrk connections (default 50)
#   LOAD_CPU            CPU for wrk and the backend (default 0)
#   PROXY_CPU           CPU for the proxy under test (default 1)
#   CHECK_DURATION      wrk duration of the per-round CPU check (default 3s; see bench/README.md)
#   LATENCY_RATE        open-loop phase: oha's request rate (default 5000; 0 = skip the phase)
#   LATENCY_ROUNDS      open-loop phase: interleaved rounds (default 3)
#   LATENCY_SECONDS     open-loop phase: seconds per run (default 5)
#   BENCH_SKIP_GATEWAY  1 = skip the gateway (direct and nginx only)
#   BENCH_INSTALL       1 = apt-get install nginx and wrk when missing (and oha, with cargo, and
#                       nginx's stream module for the nginx-l4 row)
#   BENCH_KEEP_TMP      1 = keep the temp dir (configs, logs, raw wrk output)
#   BENCH_OTLP          1 = also measure gw-otlp: spans made for every request and exported
#                       to a collector that refuses connections (informational, no target)
#
# See bench/README.md for how to read the output.
set -euo pipefail

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
CHECK_DURATION=${CHECK_DURATION:-3s}
CONNS=${CONNS:-50}
LOAD_CPU=${LOAD_CPU:-0}
PROXY_CPU=${PROXY_CPU:-1}
SKIP_GW=${BENCH_SKIP_GATEWAY:-0}
GATEWAY_BIN=${GATEWAY_BIN:-target/release/gateway}
LATENCY_RATE=${LATENCY_RATE:-5000}
LATENCY_ROUNDS=${LATENCY_ROUNDS:-3}
LATENCY_SECONDS=${LATENCY_SECONDS:-5}
BODY_BYTES=1024

cd "$(dirname "${BASH_SOURCE[0]}")/.."
BENCH_NAME=proxy.sh
source bench/lib.sh

[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer (got '$ROUNDS')"
[[ $CONNS =~ ^[1-9][0-9]*$ ]] || die "CONNS must be a positive integer (got '$CONNS')"
[[ $LATENCY_RATE =~ ^(0|[1-9][0-9]*)$ ]] || die "LATENCY_RATE must be a number of requests/s (got '$LATENCY_RATE')"
[[ $LATENCY_ROUNDS =~ ^[1-9][0-9]*$ ]] || die "LATENCY_ROUNDS must be a positive integer (got '$LATENCY_ROUNDS')"
[[ $LATENCY_SECONDS =~ ^[1-9][0-9]*$ ]] || die "LATENCY_SECONDS must be a positive integer (got '$LATENCY_SECONDS')"

# ---------------------------------------------------------------- tools
missing=()
for tool in nginx wrk; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if ((${#missing[@]})); then
    if [[ ${BENCH_INSTALL:-0} == 1 ]]; then
        log "installing: ${missing[*]}"
        apt-get update
        DEBIAN_FRONTEND=noninteractive apt-get install -y nginx wrk
    else
        echo "proxy.sh: missing: ${missing[*]}" >&2
        echo "install with:  apt-get install -y nginx wrk   (or rerun with BENCH_INSTALL=1)" >&2
        exit 1
    fi
fi
# nginx-l4, a byte relay (nginx's stream module): the cheapest hop any proxy can be, so the
# floor under the others' figures on this rig. Debian ships the module as libnginx-mod-stream.
stream_module() { # -> "" when built in, the load_module path when dynamic; fails when absent
    local v dir f
    v=$(nginx -V 2>&1)
    [[ " $v " =~ [[:space:]]--with-stream[[:space:]] ]] && return 0
    [[ $v == *"--with-stream=dynamic"* ]] || return 1
    dir=$(sed -n 's/.*--modules-path=\([^ ]*\).*/\1/p' <<<"$v")
    for f in "${dir:-/usr/lib/nginx/modules}/ngx_stream_module.so" /usr/lib/nginx/modules/ngx_stream_module.so; do
        [[ -f $f ]] && { echo "$f"; return 0; }
    done
    return 1
}
if ! stream_module >/dev/null && [[ ${BENCH_INSTALL:-0} == 1 ]]; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libnginx-mod-stream; } >/dev/null || true
fi
HAVE_L4=1
STREAM_MODULE=$(stream_module) || { HAVE_L4=0; log "no nginx stream module: the nginx-l4 row is skipped (apt-get install libnginx-mod-stream)"; }
for tool in curl python3 taskset; do
    command -v "$tool" >/dev/null 2>&1 || die "'$tool' is required but not found"
done
# oha is only for the open-loop phase: without it the phase is skipped (find_oha says why).
HAVE_OHA=0
if ((LATENCY_RATE > 0)) && find_oha; then HAVE_OHA=1; fi
taskset -c "$LOAD_CPU" true 2>/dev/null || die "cannot pin to CPU $LOAD_CPU (LOAD_CPU)"
taskset -c "$PROXY_CPU" true 2>/dev/null || die "cannot pin to CPU $PROXY_CPU (PROXY_CPU); needs >= 2 CPUs"
[[ $LOAD_CPU != "$PROXY_CPU" ]] || die "LOAD_CPU and PROXY_CPU must differ"

# ---------------------------------------------------------------- gateway binary
if [[ $SKIP_GW != 1 ]]; then
    gateway_binary
fi

# Keep this script, the RSS sampler and curl off the proxy's CPU; the
# processes under test are pinned explicitly below.
taskset -pc "$LOAD_CPU" $$ >/dev/null
ulimit -n 65536 2>/dev/null || true

# ---------------------------------------------------------------- temp dir, cleanup
bench_tmp proxy

# ---------------------------------------------------------------- ports
read -r BACKEND_PORT NGINX_PORT NGINX_BARE_PORT GW_PORT OBS_PORT ADMIN_PORT OTLP_PORT DEAD_PORT CHECK_PORT L4_PORT < <(python3 - <<'EOF'
import socket
socks = []
for _ in range(10):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks:
    s.close()
EOF
)

# ---------------------------------------------------------------- configs
BODY=$(printf '%*s' "$BODY_BYTES" '' | tr ' ' 'x')

BACKEND_LOCATION="        location / { return 200 \"$BODY\"; }"
nginx_conf backend "        listen 127.0.0.1:$BACKEND_PORT;
$BACKEND_LOCATION"
# The same backend on the proxy's CPU, for the CPU check: `direct` run there instead.
nginx_conf backend-check "        listen 127.0.0.1:$CHECK_PORT;
$BACKEND_LOCATION"

nginx_proxy_conf proxy "$NGINX_PORT" "$BACKEND_PORT" 1
nginx_proxy_conf proxy-bare "$NGINX_BARE_PORT" "$BACKEND_PORT" 0
if ((HAVE_L4)); then
    # Each client connection relayed byte for byte over one backend connection of its own.
    cat >"$tmp/proxy-l4.conf" <<EOF
${STREAM_MODULE:+load_module $STREAM_MODULE;}
$([[ $EUID == 0 ]] && echo "user root;")
worker_processes 1;
pid $tmp/proxy-l4.pid;
error_log $tmp/proxy-l4.error.log warn;
events { worker_connections 4096; }
stream {
    server {
        listen 127.0.0.1:$L4_PORT;
        proxy_pass 127.0.0.1:$BACKEND_PORT;
    }
}
EOF
fi

# Auth targets: the same gateway, routes /hs and /rs that need a valid HS256 / RS256 token. Each
# wrk connection reuses one token, as real clients do.
HS_SECRET=bench-secret-0123456789abcdef0123456789
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$tmp/rs.pem" 2>/dev/null ||
    die "openssl could not create the RS256 bench key"
openssl pkey -in "$tmp/rs.pem" -pubout -out "$tmp/rs.pub.pem"
# mint_token ALG KID -> a JWT valid for 1 h (HS256 with HS_SECRET, RS256 with rs.pem)
mint_token() {
    python3 - "$1" "$2" "$HS_SECRET" "$tmp/rs.pem" <<'PY'
import base64, hashlib, hmac, json, subprocess, sys, time
alg, kid, secret, pem = sys.argv[1:5]
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
now = int(time.time())
head = b64(json.dumps({"alg": alg, "typ": "JWT", "kid": kid}).encode())
body = b64(json.dumps({"sub": "bench", "iss": "bench", "aud": "gateway", "iat": now,
                       "exp": now + 3600, "scope": "bench"}).encode())
msg = f"{head}.{body}".encode()
if alg == "HS256":
    sig = hmac.new(secret.encode(), msg, hashlib.sha256).digest()
else:
    sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", pem], input=msg,
                         capture_output=True, check=True).stdout
print(f"{head}.{body}.{b64(sig)}")
PY
}
HS_TOKEN=$(mint_token HS256 hs)
RS_TOKEN=$(mint_token RS256 rs)

# The plain target (lib.sh), then the others.
plain_gateway_toml "$GW_PORT" "$BACKEND_PORT" >"$tmp/gateway.toml"
cat >>"$tmp/gateway.toml" <<EOF

# The same backend with every resilience feature configured, none triggered.
[services.resilient]
urls = ["http://127.0.0.1:$BACKEND_PORT"]
load_balancing = "least_requests"
max_concurrent = 10000
[services.resilient.health_check]
path = "/"
interval = "1s"
[services.resilient.circuit_breaker]
failure_rate = 0.5
min_requests = 20
slow_call = "2s"
[services.resilient.retry]
attempts = 3
budget = 0.2

[auth.jwt]
issuers = ["bench"]
audiences = ["gateway"]
[[auth.jwt.keys]]
kid = "hs"
algorithm = "HS256"
secret = "$HS_SECRET"
[[auth.jwt.keys]]
kid = "rs"
algorithm = "RS256"
public_key_pem = "$tmp/rs.pub.pem"
[auth.jwt.forward]
"x-user-id" = "sub"

[[routes]]
prefix = "/hs"
service = "bench"
scopes = ["bench"]

[[routes]]
prefix = "/rs"
service = "bench"
scopes = ["bench"]

# Rate limiting with a limit no one reaches: the cost of counting, per client IP.
[rate_limits.generous]
requests = 1000000000
per = "1s"
key = "ip"

[[routes]]
prefix = "/resil"
service = "resilient"
auth = "none"

[[routes]]
prefix = "/rl"
service = "bench"
auth = "none"
rate_limit = "generous"
EOF

# ---------------------------------------------------------------- start + readiness
# wait_ready NAME PORT PID LOGFILE
wait_ready() {
    local name=$1 port=$2 pid=$3 logf=$4 out="" deadline=$((SECONDS + 10))
    while ((SECONDS < deadline)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "proxy.sh: $name exited during startup; last lines of its log:" >&2
            tail -n 50 "$logf" >&2 || true
            exit 1
        fi
        out=$(curl -s -o /dev/null -w '%{http_code} %{size_download}' --max-time 1 \
            "http://127.0.0.1:$port/" 2>/dev/null || true)
        if [[ $out == "200 "* ]]; then
            [[ $out == "200 $BODY_BYTES" ]] ||
                die "$name on port $port answered 200 but with ${out#200 } body bytes (expected $BODY_BYTES)"
            return 0
        fi
        sleep 0.1
    done
    echo "proxy.sh: $name not ready on 127.0.0.1:$port after 10 s (last curl: '${out:-none}'); last lines of its log:" >&2
    tail -n 50 "$logf" >&2 || true
    exit 1
}

start_nginx() { # NAME CPU PORT
    local name=$1 cpu=$2 port=$3
    taskset -c "$cpu" nginx -p "$tmp/" -e "$tmp/$name.error.log" -c "$tmp/$name.conf" \
        -g 'daemon off;' >"$tmp/$name.stdout.log" 2>&1 &
    PIDS+=($!)
    wait_ready "nginx $name" "$port" "$!" "$tmp/$name.error.log"
    NGINX_MASTER[$name]=$!
}
declare -A NGINX_MASTER=()

start_nginx backend "$LOAD_CPU" "$BACKEND_PORT"
start_nginx backend-check "$PROXY_CPU" "$CHECK_PORT"
start_nginx proxy "$PROXY_CPU" "$NGINX_PORT"
start_nginx proxy-bare "$PROXY_CPU" "$NGINX_BARE_PORT"
((HAVE_L4)) && start_nginx proxy-l4 "$PROXY_CPU" "$L4_PORT"

# A proxy's one worker process, whose CPU time is measured like the gateway's.
worker_of() { # NAME -> the pid of nginx NAME's worker
    local pid
    pid=$(pgrep -P "${NGINX_MASTER[$1]}" | head -n1 || true)
    [[ -n $pid ]] || die "cannot find the worker process of nginx $1"
    echo "$pid"
}

TARGETS=(direct)
declare -A PORT_OF=([direct]=$BACKEND_PORT [nginx]=$NGINX_PORT [nginx-bare]=$NGINX_BARE_PORT [gateway]=$GW_PORT
    [gw-hs256]=$GW_PORT [gw-rs256]=$GW_PORT [gw-rlimit]=$GW_PORT [gw-resil]=$GW_PORT
    [gw-observed]=$OBS_PORT [gw-otlp]=$OTLP_PORT [cpu-check]=$CHECK_PORT [nginx-l4]=$L4_PORT)
# The CPU wrk runs on: LOAD_CPU but for the CPU check.
declare -A WRK_CPU_OF=([cpu-check]=$PROXY_CPU)
declare -A PID_OF=()
PID_OF[nginx]=$(worker_of proxy)
PID_OF[nginx-bare]=$(worker_of proxy-bare)
if ((HAVE_L4)); then PID_OF[nginx-l4]=$(worker_of proxy-l4); fi
declare -A PATH_OF=([gw-hs256]=/hs [gw-rs256]=/rs [gw-rlimit]=/rl [gw-resil]=/resil)
declare -A TOKEN_OF=([gw-hs256]=$HS_TOKEN [gw-rs256]=$RS_TOKEN)
GW_PID=""
# start_gateway NAME PORT RUST_LOG [EXTRA_TOML]: the benchmark's gateway.toml listening on PORT,
# plus EXTRA_TOML (printf %b escapes), as a process of its own pinned to the proxy's CPU, logging
# to $tmp/NAME.log; sets PID_OF[NAME] once it answers.
start_gateway() {
    local name=$1 port=$2 filter=$3 extra=${4:-} conf=$tmp/$1.run.toml
    sed "s/^listen = \"127.0.0.1:$GW_PORT\"/listen = \"127.0.0.1:$port\"/" "$tmp/gateway.toml" >"$conf"
    printf '%b' "$extra" >>"$conf"
    RUST_LOG=$filter taskset -c "$PROXY_CPU" "$GATEWAY_BIN" run --config "$conf" >"$tmp/$name.log" 2>&1 &
    PID_OF[$name]=$!
    PIDS+=("$!")
    wait_ready "$name" "$port" "$!" "$tmp/$name.log"
}
if [[ $SKIP_GW != 1 ]]; then
    # Access lines off, like the nginx proxy's `access_log off` (GATEWAY_LOG to change).
    start_gateway gateway "$GW_PORT" "${GATEWAY_LOG:-info,access=off}"
    GW_PID=${PID_OF[gateway]}
    for t in gw-hs256 gw-rs256 gw-rlimit gw-resil; do PID_OF[$t]=$GW_PID; done

    # gw-observed: the same config with the admin listener (so the Prometheus recorder counts
    # every request) and the access log on, on a process of its own on the same CPU.
    start_gateway gw-observed "$OBS_PORT" info "\n[admin]\nlisten = \"127.0.0.1:$ADMIN_PORT\"\n"
    OBSERVED=(gw-observed)

    if [[ ${BENCH_OTLP:-0} == 1 ]]; then
        # gw-otlp: every request makes its spans, exported to a port nothing listens on.
        start_gateway gw-otlp "$OTLP_PORT" info,access=off \
            "\n[telemetry]\notlp_endpoint = \"http://127.0.0.1:$DEAD_PORT\"\n"
        OBSERVED+=(gw-otlp)
    fi
    for t in gw-hs256 gw-rs256; do
        code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer ${TOKEN_OF[$t]}" \
            "http://127.0.0.1:$GW_PORT${PATH_OF[$t]}")
        [[ $code == 200 ]] || die "$t: the gateway answered $code to a valid token (see $tmp/gateway.log)"
    done
    code=$(curl -s -D - -o /dev/null "http://127.0.0.1:$GW_PORT/rl" | tr -d '\r' | grep -ci '^ratelimit:')
    [[ $code == 1 ]] || die "gw-rlimit: /rl answered without a RateLimit header (see $tmp/gateway.log)"
    TARGETS+=(gateway gw-hs256 gw-rs256 gw-rlimit gw-resil "${OBSERVED[@]}")
fi
TARGETS+=(nginx nginx-bare)
((HAVE_L4)) && TARGETS+=(nginx-l4)

# ---------------------------------------------------------------- RSS
rss_kib() { # PID -> VmRSS in KiB (0 if unavailable)
    local k v _
    while read -r k v _; do
        [[ $k == VmRSS: ]] && { echo "$v"; return; }
    done 2>/dev/null <"/proc/$1/status" || true
    echo 0
}
kib_to_mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

RSS_MAX_FILE=$tmp/rss_max
echo 0 >"$RSS_MAX_FILE"
rss_sampler() { # runs in background while the gateway is under load
    local max v
    max=$(<"$RSS_MAX_FILE")
    while :; do
        v=$(rss_kib "$GW_PID")
        ((v > max)) && { max=$v; echo "$max" >"$RSS_MAX_FILE"; }
        sleep 0.5
    done
}

GW_RSS_IDLE=0
if [[ -n $GW_PID ]]; then
    sleep 1   # let it settle after the readiness probe; no load has been applied yet
    GW_RSS_IDLE=$(rss_kib "$GW_PID")
fi

# ---------------------------------------------------------------- load
to_ms() { # "1.23ms" / "850.00us" / "1.02s" / "1.5m" -> ms
    awk -v x="$1" 'BEGIN {
        if (match(x, /^[0-9.]+/)) { n = substr(x, 1, RLENGTH); u = substr(x, RLENGTH + 1) } else exit 1
        if (u == "us") f = 0.001; else if (u == "ms") f = 1; else if (u == "s") f = 1000;
        else if (u == "m") f = 60000; else if (u == "h") f = 3600000; else exit 1
        printf "%.3f", n * f }'
}

# run_wrk TARGET DURATION OUTFILE ; sets WRK_RPS, WRK_P99_MS, WRK_ERRORS
# (no subshell, so a failure here really aborts the script)
cpu_ticks() { # PID -> the process's user + system CPU time, in clock ticks
    awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0
}

cpu_busy_ticks() { # CPU -> that CPU's busy time (user, nice, system, irq, softirq, steal), in clock ticks
    awk -v c="cpu$1" '$1 == c { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat
}

us_per_request() { # TICKS_BEFORE TICKS_AFTER WRK_OUTPUT -> µs of CPU per request wrk completed
    awk -v t0="$1" -v t1="$2" -v hz="$(getconf CLK_TCK)" \
        '/requests in/ { printf "%.2f", (t1 - t0) / hz * 1e6 / $1 }' "$3"
}

run_wrk() {
    local target=$1 dur=$2 out=$3 sampler="" p99 auth=()
    local cpu0=0 wrk_cpu=${WRK_CPU_OF[$target]:-$LOAD_CPU} load0
    if [[ $target == g* ]]; then rss_sampler & sampler=$!; fi
    [[ -n ${PID_OF[$target]:-} ]] && cpu0=$(cpu_ticks "${PID_OF[$target]}")
    [[ -n ${TOKEN_OF[$target]:-} ]] && auth=(-H "Authorization: Bearer ${TOKEN_OF[$target]}")
    load0=$(cpu_busy_ticks "$wrk_cpu")
    if ! taskset -c "$wrk_cpu" wrk -t1 -c"$CONNS" -d"$dur" --latency "${auth[@]}" \
        "http://127.0.0.1:${PORT_OF[$target]}${PATH_OF[$target]:-/}" >"$out" 2>&1; then
        cat "$out" >&2
        die "wrk against $target failed"
    fi
    if [[ -n $sampler ]]; then
        kill "$sampler" 2>/dev/null || true
        wait "$sampler" 2>/dev/null || true
    fi
    # The gateway's CPU time per request (user + system, from /proc): far less sensitive to a
    # noisy machine than requests/s, since it does not count the time the proxy waited.
    WRK_CPU_US=0
    if [[ -n ${PID_OF[$target]:-} ]]; then
        WRK_CPU_US=$(us_per_request "$cpu0" "$(cpu_ticks "${PID_OF[$target]}")" "$out")
    fi
    # What the target's traffic cost the CPU wrk and the backend share, per request: at
    # saturation the p99 depends on that CPU as much as on the proxy's (bench/README.md).
    WRK_LOAD_US=$(us_per_request "$load0" "$(cpu_busy_ticks "$wrk_cpu")" "$out")
    WRK_RPS=$(awk '/^Requests\/sec:/ { print $2 }' "$out")
    p99=$(awk '$1 == "99%" { print $2 }' "$out")
    [[ -n $WRK_RPS && -n $p99 ]] || { cat "$out" >&2; die "could not parse wrk output for $target"; }
    WRK_P99_MS=$(to_ms "$p99") || die "unknown latency unit in '$p99'"
    WRK_ERRORS=$(awk '/Non-2xx or 3xx responses:/ { n += $NF }
                      /Socket errors:/ { gsub(/,/, ""); n += $4 + $6 + $8 + $10 }
                      END { print n + 0 }' "$out")
}

echo "# proxy benchmark: $(nginx -v 2>&1 | sed 's/.*: //'), $(wrk -v 2>&1 | head -n1 | awk '{print $1, $2}')"
echo "# cpus: wrk+backend on $LOAD_CPU, proxy under test on $PROXY_CPU ($(getconf _NPROCESSORS_ONLN) online)"
echo "# wrk -t1 -c$CONNS -d$DURATION, warm-up $WARMUP, rounds $ROUNDS, body $BODY_BYTES B"
echo "# ports: backend $BACKEND_PORT, nginx $NGINX_PORT, nginx-bare $NGINX_BARE_PORT$([[ -n $GW_PID ]] && echo ", gateway $GW_PORT")$( ((HAVE_L4)) && echo ", nginx-l4 $L4_PORT"), cpu-check backend $CHECK_PORT"
[[ -n $GW_PID ]] || echo "# gateway skipped (BENCH_SKIP_GATEWAY=1)"

for t in "${TARGETS[@]}" cpu-check; do
    log "warm-up $t ($WARMUP)"
    run_wrk "$t" "$WARMUP" "$tmp/warmup-$t.txt"
done

RESULTS=$tmp/results.tsv
: >"$RESULTS"
echo
ROW='%-6s %-10s %12.0f %10.3f %7s %9s %9s\n'
TSV='%s\t%s\t%s\t%s\t%s\t%s\t%s\n'
printf '%-6s %-10s %12s %10s %7s %9s %9s\n' round target "req/s" "p99 ms" errors "cpu us/req" "load us"
for ((r = 1; r <= ROUNDS; r++)); do
    for t in "${TARGETS[@]}"; do
        run_wrk "$t" "$DURATION" "$tmp/round$r-$t.txt"
        printf "$ROW" "$r" "$t" "$WRK_RPS" "$WRK_P99_MS" "$WRK_ERRORS" "$WRK_CPU_US" "$WRK_LOAD_US"
        printf "$TSV" "$r" "$t" "$WRK_RPS" "$WRK_P99_MS" "$WRK_ERRORS" "$WRK_CPU_US" "$WRK_LOAD_US" >>"$RESULTS"
        if [[ $t == direct ]]; then
            # The CPU check, right after: `direct`'s work (wrk and a backend) on the proxy's CPU.
            run_wrk cpu-check "$CHECK_DURATION" "$tmp/round$r-check.txt"
            printf "$ROW" "$r" cpu-check "$WRK_RPS" "$WRK_P99_MS" "$WRK_ERRORS" - "$WRK_LOAD_US"
            printf "$TSV" "$r" check "$WRK_RPS" "$WRK_P99_MS" "$WRK_ERRORS" 0 "$WRK_LOAD_US" >>"$RESULTS"
        fi
    done
done

if [[ -n ${PID_OF[gw-observed]:-} ]]; then
    # The observed gateway really counted and logged: its metrics and access lines are there.
    # Read whole first: `curl | grep -q` fails under pipefail when grep stops before curl is done.
    metrics=$(curl -s "http://127.0.0.1:$ADMIN_PORT/metrics")
    grep -q '^http_server_request_duration_seconds_count{' <<<"$metrics" ||
        die "gw-observed: /metrics has no request counts (see $tmp/gw-observed.log)"
    grep -q ' access: ' "$tmp/gw-observed.log" ||
        die "gw-observed: no access lines in $tmp/gw-observed.log"
fi

# ---------------------------------------------------------------- open-loop latency
# wrk keeps CONNS requests in flight and sends the next as soon as one is answered: at
# saturation its p99 is mostly the queue (CONNS requests in flight over the rate). oha sends
# LATENCY_RATE requests/s over CONNS connections whatever the answers, and counts a request that
# had to wait for a free connection from when it was due (--latency-correction): the latency a
# hop adds below saturation.
OPEN=$tmp/open.tsv
: >"$OPEN"
OPEN_TARGETS=(direct)
[[ -n $GW_PID ]] && OPEN_TARGETS+=(gateway)
OPEN_TARGETS+=(nginx nginx-bare)
((HAVE_L4)) && OPEN_TARGETS+=(nginx-l4)
if ((LATENCY_RATE > 0 && HAVE_OHA)); then
    echo
    log "open loop: oha -c $CONNS -q $LATENCY_RATE --latency-correction, ${LATENCY_SECONDS}s per run, rounds $LATENCY_ROUNDS"
    printf '%-6s %-10s %12s %10s %10s %10s %7s\n' round target "req/s" "p50 ms" "p99 ms" "p99.9 ms" errors
    for ((r = 1; r <= LATENCY_ROUNDS; r++)); do
        for t in "${OPEN_TARGETS[@]}"; do
            out=$tmp/open$r-$t.json
            if ! taskset -c "$LOAD_CPU" oha --no-tui "${OHA_JSON[@]}" -n $((LATENCY_RATE * LATENCY_SECONDS)) \
                -q "$LATENCY_RATE" --latency-correction -c "$CONNS" "http://127.0.0.1:${PORT_OF[$t]}/" \
                >"$out" 2>"$out.err"; then
                cat "$out.err" >&2
                die "oha against $t failed"
            fi
            read -r _ bad rps p50 p99 p999 < <(oha_summary "$out")
            printf '%-6s %-10s %12s %10s %10s %10s %7s\n' "$r" "$t" "$rps" "$p50" "$p99" "$p999" "$bad"
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$t" "$rps" "$p50" "$p99" "$p999" "$bad" >>"$OPEN"
        done
    done
fi

GW_RSS_LOAD=$(<"$RSS_MAX_FILE")
GW_RSS_AFTER=0
[[ -n $GW_PID ]] && GW_RSS_AFTER=$(rss_kib "$GW_PID")

# ---------------------------------------------------------------- summary
echo
python3 - "$RESULTS" "${TARGETS[*]}" "$GW_RSS_IDLE" "$GW_RSS_LOAD" "$GW_RSS_AFTER" "$OPEN" "$LATENCY_RATE" "$CONNS" <<'EOF'
import statistics, sys

path, targets, rss_idle, rss_load, rss_after, open_path, open_rate, conns = sys.argv[1:9]
targets = targets.split()
rows = [line.rstrip("\n").split("\t") for line in open(path) if line.strip()]
med, errors, cpu, cpu_best, load = {}, {}, {}, {}, {}
for t in targets:
    rs = [r for r in rows if r[1] == t]
    med[t] = (statistics.median(float(r[2]) for r in rs),
              statistics.median(float(r[3]) for r in rs))
    errors[t] = sum(int(r[4]) for r in rs)
    cpu[t] = statistics.median(float(r[5]) for r in rs)
    # Noise from other tenants only adds CPU time, so the cheapest round is the steadiest estimate.
    cpu_best[t] = min(float(r[5]) for r in rs)
    load[t] = statistics.median(float(r[6]) for r in rs)

def verdict(ok):
    return "PASS" if ok else "FAIL"

def spread(values):
    """How far a reference's figures moved across rounds, as a share of their median."""
    return (max(values) - min(values)) / statistics.median(values) if len(values) > 1 and min(values) else 0.0

# How far a reference target's rate may move between rounds before the run counts as noisy.
NOISY = 0.15
# How far apart the two CPUs may run the same work (the CPU check) before the run counts as noisy.
CPUS_APART = 0.10
# How far direct's open-loop p99 may move between rounds (it is 0.4-0.5 ms on a quiet host).
OPEN_NOISY = 0.50

print("medians")
print(f"{'target':<10} {'req/s':>12} {'p99 ms':>10} {'errors':>7} {'cpu us/req':>10} {'load us':>9}")
for t in targets:
    print(f"{t:<10} {med[t][0]:>12.0f} {med[t][1]:>10.3f} {errors[t]:>7} {cpu[t]:>10.2f} {load[t]:>9.2f}")
print()
# What each proxy's traffic costs the CPU wrk and the backend share, against `direct`: the
# saturated p99 depends on that CPU as much as on the proxy's own (bench/README.md, session 13).
print("load CPU per request (wrk and the backend, us): " + ", ".join(
    f"{t} {load[t]:.2f}" for t in ("direct", "gateway", "nginx", "nginx-bare", "nginx-l4") if t in load))

nginx_added = med["nginx"][1] - med["direct"][1]
l4 = med.get("nginx-l4")

def floor(rest=""):
    """The byte relay's p99 added and rate, under the p99 line."""
    print(f"  the floor, nginx-l4 (a byte relay, no HTTP): {l4[1] - med['direct'][1]:.2f} ms added "
          f"at {l4[0]:.0f} req/s{rest}")

if "gateway" in med:
    gw, ng = med["gateway"], med["nginx"]
    rps_ratio = gw[0] / ng[0] if ng[0] else float("nan")
    p99_ratio = gw[1] / ng[1] if ng[1] else float("nan")
    gw_added = gw[1] - med["direct"][1]
    idle_mib = int(rss_idle) / 1024
    load_mib = int(rss_load) / 1024
    print(f"ratio gateway/nginx req/s: {rps_ratio:.2f} (target >= 1.00)  {verdict(rps_ratio >= 1.0)}")
    print(f"ratio gateway/nginx p99: {p99_ratio:.2f}")
    bare = med["nginx-bare"][0] or float("nan")
    print(f"ratio gateway/nginx-bare req/s: {gw[0] / bare:.2f} (for information: nginx forwarding "
          f"none of the gateway's headers; nginx/nginx-bare {ng[0] / bare:.2f})")
    if cpu["nginx"] and cpu["gateway"]:
        # CPU per request, nginx's cost / the gateway's: the same comparison, steadier on a
        # shared machine (>= 1.00 means the gateway does a request with less CPU).
        print(f"ratio by CPU per request nginx/gateway: {cpu['nginx']:.2f} / {cpu['gateway']:.2f} us "
              f"= {cpu['nginx'] / cpu['gateway']:.2f}; cheapest rounds "
              f"{cpu_best['nginx'] / cpu_best['gateway']:.2f}")
    # The target's two readings: here at saturation, and below in open loop. On two CPUs the
    # saturated tail is the load CPU's as much as the proxy's (nginx misses 1 ms about as often
    # as the gateway; bench/README.md, session 14).
    print(f"p99 added over direct (wrk, {conns} in flight, saturated): gateway {gw_added:.2f} ms, "
          f"nginx {nginx_added:.2f} ms (target <= 1 ms)  {verdict(gw_added <= 1.0)}")
    if l4:
        floor(f"; gateway/nginx-l4 req/s {gw[0] / l4[0]:.2f}")
    print(f"gateway RSS idle: {idle_mib:.1f} MiB (target <= 20), under load: {load_mib:.1f} MiB "
          f"(target <= 50)  {verdict(idle_mib <= 20 and load_mib <= 50)}")
    print(f"gateway RSS after load: {int(rss_after) / 1024:.1f} MiB")
    for t, target in (("gw-hs256", 0.9), ("gw-rs256", 0.9), ("gw-rlimit", 0.95), ("gw-resil", 0.95),
                      ("gw-observed", 0.95), ("gw-otlp", 0.0)):
        if t in med:
            ratio = med[t][0] / gw[0] if gw[0] else float("nan")
            print(f"ratio {t}/gateway req/s: {ratio:.2f} (target >= {target:.2f})  {verdict(ratio >= target)}")
            # The same comparison by CPU per request (gateway's cost / target's cost).
            by_cpu = cpu["gateway"] / cpu[t] if cpu[t] else float("nan")
            print(f"  by CPU per request: {cpu[t]:.2f} vs {cpu['gateway']:.2f} us = {by_cpu:.2f}  "
                  f"{verdict(by_cpu >= target)}")
            best = cpu_best["gateway"] / cpu_best[t] if cpu_best[t] else float("nan")
            print(f"  by CPU per request, cheapest rounds: {cpu_best[t]:.2f} vs {cpu_best['gateway']:.2f} us "
                  f"= {best:.2f}  {verdict(best >= target)}")
else:
    print(f"p99 added over direct: nginx {nginx_added:.2f} ms")
    if l4:
        floor()
    print("gateway: skipped (BENCH_SKIP_GATEWAY=1)")
open_rows = [line.rstrip("\n").split("\t") for line in open(open_path) if line.strip()]
if open_rows:
    print()
    print(f"open loop at {open_rate} req/s, {conns} connections (oha --latency-correction), medians")
    print(f"{'target':<10} {'req/s':>12} {'p50 ms':>10} {'p99 ms':>10} {'p99.9 ms':>10} {'errors':>7}")
    omed = {}
    for t in dict.fromkeys(r[1] for r in open_rows):
        rs = [r for r in open_rows if r[1] == t]
        col = lambda i: statistics.median(float(r[i]) for r in rs)
        omed[t] = (col(2), col(3), col(4), col(5), sum(int(r[6]) for r in rs))
        print(f"{t:<10} {omed[t][0]:>12.0f} {omed[t][1]:>10.3f} {omed[t][2]:>10.3f} {omed[t][3]:>10.3f} {omed[t][4]:>7}")
    added = {t: omed[t][2] - omed["direct"][2] for t in omed if t != "direct"}
    if "gateway" in added:
        relay = f", nginx-l4 {added['nginx-l4']:.2f} ms" if "nginx-l4" in added else ""
        print(f"p99 added over direct (open loop at {open_rate} req/s): gateway {added['gateway']:.2f} ms, "
              f"nginx {added['nginx']:.2f} ms, nginx-bare {added['nginx-bare']:.2f} ms{relay} (target <= 1 ms)  "
              f"{verdict(added['gateway'] <= 1.0)}")
    if any(v[4] for v in omed.values()):
        print("WARNING: some open-loop runs had non-2xx responses or errors")
    # direct does the same work every round: when its p99 moves, the host moved it.
    p99s = [float(r[4]) for r in open_rows if r[1] == "direct"]
    if spread(p99s) > OPEN_NOISY:
        print(f"WARNING: a noisy host in the open loop: direct's p99 ranged {min(p99s):.3f}-{max(p99s):.3f} ms "
              f"across rounds ({spread(p99s):.0%} of its median, over {OPEN_NOISY:.0%}); rerun on a quieter machine")
elif "gateway" in med:
    print("p99 added over direct (open loop): NOT JUDGED (the phase did not run: LATENCY_RATE=0, or no usable oha)")
if any(errors.values()):
    print("WARNING: some runs had non-2xx responses or socket errors; see the errors column")
# The CPU check: direct's work on the proxy's CPU against direct on the load CPU, round by round.
checks = {r[0]: float(r[2]) for r in rows if r[1] == "check"}
direct = {r[0]: float(r[2]) for r in rows if r[1] == "direct"}
speeds = [checks[k] / direct[k] for k in checks if direct.get(k)]
if speeds:
    speed = statistics.median(speeds)
    print(f"CPU check: direct's work on the proxy's CPU / on the load CPU: {speed:.2f} "
          f"(rounds {min(speeds):.2f}-{max(speeds):.2f})")
    if abs(speed - 1) > CPUS_APART:
        slower = "proxy" if speed < 1 else "load"
        print(f"WARNING: a noisy host: the two CPUs ran the same work {abs(speed - 1):.0%} apart (the "
              f"{slower} CPU slower) over the run; every proxy's figures, nginx's too, are off by "
              f"about as much; rerun on a quieter machine")
# The references do the same work every round: when their rates move, the host moved them.
for t in ("direct", "nginx-bare"):
    rates = [float(r[2]) for r in rows if r[1] == t]
    if spread(rates) > NOISY:
        print(f"WARNING: a noisy host: {t} ranged {min(rates):.0f}-{max(rates):.0f} req/s across rounds "
              f"({spread(rates):.0%} of its median, over {NOISY:.0%}); read the ratios with care and the "
              f"p99s not at all, or rerun on a quieter machine")
EOF
