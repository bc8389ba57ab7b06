# Shared by the bench scripts; each sources it after `cd` to the repository root, with
# BENCH_NAME set (for messages) and GATEWAY_BIN set (relative to the root).

die() { echo "$BENCH_NAME: error: $*" >&2; exit 1; }
log() { echo "# $*"; }

REPO_ROOT=$(pwd)

# Makes GATEWAY_BIN absolute. The default, target/release/gateway, is built first when it is
# missing or older than the sources (`cargo build --release` at the root does not build it).
gateway_binary() {
    local stale=""
    if [[ $GATEWAY_BIN == target/release/gateway ]]; then
        if [[ -x $GATEWAY_BIN ]]; then
            stale=$(find gateway Cargo.toml Cargo.lock -type f -newer "$GATEWAY_BIN" -print -quit 2>/dev/null || true)
        fi
        if [[ ! -x $GATEWAY_BIN || -n $stale ]]; then
            log "${stale:+$stale is newer than $GATEWAY_BIN; }building: cargo build --release --locked -p gateway (minutes on 2 cores)"
            cargo build --release --locked -p gateway
        fi
    fi
    [[ -x $GATEWAY_BIN ]] || die "GATEWAY_BIN=$GATEWAY_BIN not found (relative to $(pwd))"
    GATEWAY_BIN=$(cd "$(dirname "$GATEWAY_BIN")" && pwd)/$(basename "$GATEWAY_BIN")
}

# Finds oha (also in ~/.cargo/bin), installing it with BENCH_INSTALL=1; sets OHA_JSON to the
# flag that makes it print JSON. Returns 1, having said why, when there is no usable oha (callers
# run it in a condition, where `set -e` does not apply, so every failure is checked here).
find_oha() {
    local help
    if ! command -v oha >/dev/null 2>&1 && [[ -x $HOME/.cargo/bin/oha ]]; then
        PATH=$HOME/.cargo/bin:$PATH
    fi
    if ! command -v oha >/dev/null 2>&1; then
        if [[ ${BENCH_INSTALL:-0} != 1 ]]; then
            echo "$BENCH_NAME: oha is missing; install it with:  cargo install --locked oha  (or rerun with BENCH_INSTALL=1)" >&2
            return 1
        fi
        log "oha not found: cargo install --locked oha (a few minutes on 2 cores)"
        cargo install --locked oha || { echo "$BENCH_NAME: cargo install --locked oha failed" >&2; return 1; }
        PATH=$HOME/.cargo/bin:$PATH
    fi
    # Read whole first: `oha --help | grep -q` fails under pipefail when grep stops early.
    help=$(oha --help 2>&1) || true
    if ! grep -q -- '--latency-correction' <<<"$help"; then
        echo "$BENCH_NAME: this oha has no --latency-correction; upgrade it (cargo install --locked oha)" >&2
        return 1
    fi
    # oha >= 1.5 writes JSON with --output-format json; older versions with -j.
    if grep -q -- '--output-format' <<<"$help"; then OHA_JSON=(--output-format json); else OHA_JSON=(-j); fi
}

# Prints "ok bad rps p50 p99 p99.9" for one oha run's JSON: 200s, everything else (other
# statuses and errors), requests/s, latencies in ms ("nan" when oha gave none).
oha_summary() { # JSON
    python3 - "$1" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
codes = {str(k): v for k, v in (d.get("statusCodeDistribution") or {}).items()}
ok = codes.get("200", 0)
bad = sum(codes.values()) - ok + sum((d.get("errorDistribution") or {}).values())
p = d.get("latencyPercentiles") or {}
def ms(key):
    v = p.get(key)
    return "nan" if v is None else f"{v * 1000:.3f}"
rps = (d.get("summary") or {}).get("requestsPerSec") or 0
print(ok, bad, f"{rps:.0f}", ms("p50"), ms("p99"), ms("p99.9"))
PY
}

# A temp dir in $tmp, and PIDS for the processes the script starts: on exit every one is
# stopped (TERM, then KILL after 5 s, children included, e.g. nginx workers) and the dir removed
# (kept with BENCH_KEEP_TMP=1).
bench_tmp() { # NAME
    tmp=$(mktemp -d "${TMPDIR:-/tmp}/bench-$1.XXXXXX")
    PIDS=()
    trap bench_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

bench_cleanup() {
    local rc=$? pid i
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for ((i = 0; i < 50; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            pkill -KILL -P "$pid" 2>/dev/null || true
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    done
    if [[ ${BENCH_KEEP_TMP:-0} == 1 ]]; then
        echo "# temp dir kept: $tmp" >&2
    else
        rm -rf "$tmp"
    fi
    exit "$rc"
}

# Writes $tmp/NAME.conf: one nginx worker (as root when the script is), its pid, logs and temp
# files under $tmp, no access log, long keep-alive; SERVER_BLOCK_BODY goes in the one `server`
# block and HTTP_EXTRA (an `upstream` block, say) beside it.
nginx_conf() { # NAME SERVER_BLOCK_BODY [HTTP_EXTRA]
    local name=$1 body=$2 extra=${3:-} user=""
    [[ $EUID == 0 ]] && user="user root;"
    mkdir -p "$tmp/$name"
    cat >"$tmp/$name.conf" <<EOF
$user
worker_processes 1;
pid $tmp/$name.pid;
error_log $tmp/$name.error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    default_type application/octet-stream;
    keepalive_requests 1000000;
    client_body_temp_path $tmp/$name/client_body;
    proxy_temp_path $tmp/$name/proxy;
    fastcgi_temp_path $tmp/$name/fastcgi;
    uwsgi_temp_path $tmp/$name/uwsgi;
    scgi_temp_path $tmp/$name/scgi;
$extra
    server {
$body
    }
}
EOF
}

# The nginx proxy_pass peer: keep-alive to the backend and the same forwarding work the gateway
# does on every request (SPEC.md's Headers), so both proxies put the same headers on the wire
# and the backend and wrk, which share a CPU, parse the same bytes: X-Forwarded-For/-Proto/-Host,
# an X-Request-Id sent upstream and returned, a W3C traceparent of a new trace (made from
# $request_id), and the deadline header the gateway sends (a constant here). EDGE=0 gives the
# bare proxy_pass, which forwards none of them, for reference.
nginx_proxy_conf() { # NAME PORT BACKEND_PORT EDGE(1|0)
    local headers="" map=""
    if [[ $4 == 1 ]]; then
        headers='
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $http_host;
            proxy_set_header X-Request-Id $request_id;
            proxy_set_header traceparent 00-$request_id-$bench_parent_id-01;
            proxy_set_header x-request-timeout-ms 5000;
            add_header X-Request-Id $request_id;'
        map='
    map $request_id $bench_parent_id { "~^(?<p>[0-9a-f]{16})" $p; }'
    fi
    nginx_conf "$1" "        listen 127.0.0.1:$2;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";$headers
        }" \
"    upstream backend {
        server 127.0.0.1:$3;
        keepalive 64;
        keepalive_requests 1000000;
    }$map"
}

# The plain proxy target's gateway config: one thread, one backend, round robin, no breaker, no
# retries, every path to it with no auth (as the foundation's proxy was). proxy.sh adds its other
# targets after it; paired.sh runs it as is.
plain_gateway_toml() { # LISTEN_PORT BACKEND_PORT
    cat <<EOF
[server]
listen = "127.0.0.1:$1"
worker_threads = 1

[services.bench]
urls = ["http://127.0.0.1:$2"]
load_balancing = "round_robin"
[services.bench.circuit_breaker]
enabled = false
[services.bench.retry]
attempts = 1

[[routes]]
prefix = "/"
service = "bench"
auth = "none"
EOF
}
