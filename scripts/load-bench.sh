#!/usr/bin/env bash
# Load benchmark of `wasmux serve` against nginx and Pingora, with wrk and h2load, on loopback.
#
# Starts, one at a time, on free 127.0.0.1 ports in a temporary directory:
#   upstream                  nginx (1 worker) answering every path with 200 "ok\n"; /check,
#                             the callout's, with 200 "bench" (the fixture copies that body
#                             into a request header, where a newline is not allowed)
#   nginx                     nginx as a plain reverse proxy in front of it (keepalive upstream)
#   pingora                   Pingora's own Server and a ProxyHttp with only `upstream_peer`
#                             (crates/proxy/examples/pingora_baseline.rs, `threads` = WORKERS,
#                             the rest of ServerConf at its defaults): the cost of Pingora
#                             itself, without anything of wasmux
#   wasmux                    `wasmux serve`, a route with no filter
#   wasmux-headers-ENGINE     `wasmux serve` with the headers fixture, one run per engine
#   wasmux-callout-wasmtime   `wasmux serve` with the callout fixture (an HTTP callout to the
#                             upstream's /check for every request), on wasmtime
# Each target gets a bounded wait until it answers, a sanity request, 2 s of warm-up, then two
# phases while it runs:
#   1. saturation (closed loop): wrk -t2 -cCONNS -dSECONDSs --latency http://127.0.0.1:PORT/
#      while its peak RSS (VmRSS, nginx: master + workers) is sampled every 0.5 s: req/s;
#   2. fixed rate (open loop; proxies only, not the upstream), the same rate for every target:
#      h2load --h1 -t1 -cRATE_CONNS --rps=RATE/RATE_CONNS -r1 --rate-period=1ms
#             -nRATE*(1+RATE_SECONDS) --log-file=FILE http://127.0.0.1:PORT/
#      Each of the RATE_CONNS connections sends RATE/RATE_CONNS requests per second (h2load's
#      --rps is per client); -r1 --rate-period=1ms opens them 1 ms apart, so that their request
#      timers do not all tick together (-D, the other way to bound a run, cannot be combined
#      with -r: all clients then start at once and send in bursts of RATE/100 every 10 ms, the
#      period of h2load's timer). The log has one line per request: start (µs since the epoch),
#      status (-1: failed), µs from sending the request to the end of the response. The
#      requests that started in the RATE_SECONDS after the first second are kept: the achieved
#      rate (kept ÷ RATE_SECONDS) and p50/p90/p99/p99.9 (nearest rank, 2xx responses) are
#      computed from them.
# then it is stopped. The proxies take turns, WASMUX_BENCH_ROUNDS times, the even rounds in
# reverse order; the report gives each figure's median over the rounds and their spread. At
# saturation, latency is about connections ÷ throughput, so a p99 difference there mostly
# mirrors a req/s difference; the added latency of a filter is the p99 difference at the fixed
# rate.
# Writes docs/load.json, then runs scripts/load-report.py (docs/LOAD.md, docs/load.svg), and
# prints a summary. Everything it started is stopped on exit, by PID; the directory is removed.
#
# Installs what it needs with scripts/install-deps.sh (cmake, wrk, nginx, nghttp2-client for
# h2load, curl, python3; as root or through sudo; `apt-get update` only when the package lists
# are missing or an install fails). On a machine with systemd, Debian's nginx package also
# starts its own service (port 80); this script neither uses nor stops it. With v8 in the
# features, runs scripts/fetch-v8.sh. Builds the CLI and the Pingora baseline, and runs copies
# of target/PROFILE/wasmux and target/PROFILE/examples/pingora_baseline (another build may
# replace them):
#   cargo build --profile PROFILE -p wasmux-cli --features FEATURES
#   cargo build --profile PROFILE -p wasmux-proxy --example pingora_baseline
#
# Environment:
#   WASMUX_BENCH_FEATURES  cargo features of wasmux-cli (default: wasmtime,wasmer,wasmi,wamr,v8)
#   WASMUX_BENCH_ENGINES   engines for the headers runs, space separated (default: every engine
#                          in the features: wasmtime wasmer wasmer-singlepass wasmi wamr v8)
#   WASMUX_BENCH_SECONDS   length of each wrk run, in seconds (default: 10)
#   WASMUX_BENCH_PROFILE   cargo profile of both builds (default: release-lto, the workspace's
#                          release with fat LTO and one codegen unit: what to run in production;
#                          `release` builds faster)
#   WASMUX_BENCH_WORKERS   wasmux worker threads = nginx proxy worker processes = Pingora
#                          baseline threads (default: 2)
#   WASMUX_BENCH_CONNS     wrk connections (default: $CONNS, else 64)
#   WASMUX_BENCH_RATE      fixed rate of the h2load runs, requests per second in all (default:
#                          5000; keep it well below the slowest target's saturation req/s)
#   WASMUX_BENCH_RATE_CONNS  h2load connections (default: 16, or RATE/100 rounded up when that
#                          is more: h2load's timer ticks every 10 ms at the least, so above 100
#                          requests per second per connection it sends them in back-to-back
#                          bursts, each waiting for the previous response)
#   WASMUX_BENCH_RATE_SECONDS  measured length of each h2load run, after its first second
#                          (default: WASMUX_BENCH_SECONDS)
#   WASMUX_BENCH_ROUNDS    rounds (default: 3): every proxy target is started and measured
#                          once per round, the targets taking turns (the even rounds in reverse
#                          order), and the report gives the median of the rounds (and their
#                          spread): one run of each on a shared 2-core machine swings by
#                          10-30 %. The upstream is measured in the first round.
#   WASMUX_BENCH_LOG       WASMUX_LOG of the wasmux processes (default: warn,wasmux::filter=error:
#                          the headers fixture logs a warning for every request, and nginx's
#                          access log is off; set `warn` to pay for those lines too)
#   WASMUX_BENCH_KEEP      1: keep the temporary directory (configurations, logs, wrk and h2load
#                          outputs, h2load's per-request logs)
#
# Usage: scripts/load-bench.sh [--help]
set -euo pipefail

usage() {
    awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"
}
case "${1:-}" in
    -h | --help)
        usage
        exit 0
        ;;
    "") ;;
    *)
        usage >&2
        exit 2
        ;;
esac

cd "$(dirname "$0")/.."
root="$PWD"

features="${WASMUX_BENCH_FEATURES:-wasmtime,wasmer,wasmi,wamr,v8}"
seconds="${WASMUX_BENCH_SECONDS:-10}"
profile="${WASMUX_BENCH_PROFILE:-release-lto}"
[[ "$profile" =~ ^[A-Za-z0-9_-]+$ ]] || {
    echo "load-bench.sh: WASMUX_BENCH_PROFILE must be a cargo profile name, not \`$profile\`" >&2
    exit 2
}
workers="${WASMUX_BENCH_WORKERS:-2}"
conns="${WASMUX_BENCH_CONNS:-${CONNS:-64}}"
rate="${WASMUX_BENCH_RATE:-5000}"
rate_seconds="${WASMUX_BENCH_RATE_SECONDS:-$seconds}"
rounds="${WASMUX_BENCH_ROUNDS:-3}"
wasmux_log="${WASMUX_BENCH_LOG:-warn,wasmux::filter=error}"
warmup=2
threads=2
rate_settle=1
for v in seconds workers conns rate rate_seconds rounds; do
    [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || {
        echo "load-bench.sh: $v must be a positive integer, not \`${!v}\`" >&2
        exit 2
    }
done
((conns >= threads)) || {
    echo "load-bench.sh: wrk needs at least $threads connections" >&2
    exit 2
}
rate_conns="${WASMUX_BENCH_RATE_CONNS:-$(((rate + 99) / 100 > 16 ? (rate + 99) / 100 : 16))}"
[[ "$rate_conns" =~ ^[1-9][0-9]*$ ]] || {
    echo "load-bench.sh: rate_conns must be a positive integer, not \`$rate_conns\`" >&2
    exit 2
}
((rate_conns <= rate)) || {
    echo "load-bench.sh: WASMUX_BENCH_RATE_CONNS ($rate_conns) is more than WASMUX_BENCH_RATE ($rate)" >&2
    exit 2
}
# h2load's --rps is per connection; it takes a decimal number.
rate_per_conn="$(awk -v r="$rate" -v c="$rate_conns" 'BEGIN { printf "%.4f", r / c }' | sed -E 's/0+$//; s/\.$//')"
if ((rate > rate_conns * 100)); then
    echo "load-bench.sh: warning: $rate_per_conn requests per second per h2load connection, more than 100:" \
        "h2load sends them in bursts every 10 ms (set WASMUX_BENCH_RATE_CONNS to $(((rate + 99) / 100)) or more)" >&2
fi
rate_requests=$((rate * (rate_settle + rate_seconds)))

# Engines: wasmtime is always compiled in (a default feature of wasmux-cli), then every engine
# the features add.
feature_list=" ${features//,/ } "
if [[ -n "${WASMUX_BENCH_ENGINES:-}" ]]; then
    read -r -a engines <<<"$WASMUX_BENCH_ENGINES"
else
    engines=(wasmtime)
    [[ "$feature_list" == *" all-engines "* ]] && feature_list+=" wasmer wasmi wamr v8 "
    [[ "$feature_list" == *" wasmer "* ]] && engines+=(wasmer wasmer-singlepass)
    [[ "$feature_list" == *" wasmi "* ]] && engines+=(wasmi)
    [[ "$feature_list" == *" wamr "* ]] && engines+=(wamr)
    [[ "$feature_list" == *" v8 "* ]] && engines+=(v8)
fi
((${#engines[@]})) || {
    echo "load-bench.sh: WASMUX_BENCH_ENGINES is empty" >&2
    exit 2
}

# --- system packages ---------------------------------------------------------------------

echo "== system packages: scripts/install-deps.sh wrk nginx nghttp2-client curl python3"
scripts/install-deps.sh wrk nginx nghttp2-client curl python3
command -v h2load >/dev/null || {
    echo "load-bench.sh: no h2load in PATH (Debian package nghttp2-client)" >&2
    exit 1
}
nginx_bin="$(command -v nginx || echo /usr/sbin/nginx)"
[[ -x "$nginx_bin" ]] || {
    echo "load-bench.sh: no nginx binary (looked in PATH and /usr/sbin)" >&2
    exit 1
}

# --- build -------------------------------------------------------------------------------

if [[ "$feature_list" == *" v8 "* || "$feature_list" == *" all-engines "* ]]; then
    echo "== V8 for the v8 engine: scripts/fetch-v8.sh"
    scripts/fetch-v8.sh
fi
build_cmd="cargo build --profile $profile -p wasmux-cli --features \"$features\""
echo "== $build_cmd"
cargo build --profile "$profile" -p wasmux-cli --features "$features"
built="${CARGO_TARGET_DIR:-$root/target}/$profile/wasmux"
build_pingora_cmd="cargo build --profile $profile -p wasmux-proxy --example pingora_baseline"
echo "== $build_pingora_cmd"
cargo build --profile "$profile" -p wasmux-proxy --example pingora_baseline
built_pingora="${CARGO_TARGET_DIR:-$root/target}/$profile/examples/pingora_baseline"

tmp="$(mktemp -d -t wasmux-load.XXXXXX)"
declare -A running=()     # pid -> what, for every process still to stop
declare -A stop_signal=() # pid -> the signal that stops it, when not TERM
cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM
    for pid in "${!running[@]}"; do
        stop_pid "$pid"
    done
    if [[ "${WASMUX_BENCH_KEEP:-0}" == 1 ]]; then
        echo "kept $tmp"
    else
        rm -rf "$tmp"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Copies of the binaries: another build may replace them in target/ during the runs.
wasmux="$tmp/wasmux"
cp "$built" "$wasmux"
pingora_baseline="$tmp/pingora_baseline"
cp "$built_pingora" "$pingora_baseline"
available="$("$wasmux" engines)"
for e in "${engines[@]}"; do
    grep -qx -- "$e" <<<"$available" || {
        echo "load-bench.sh: engine \`$e\` is not in this build (features: $features; it has: $(tr '\n' ' ' <<<"$available"))" >&2
        exit 1
    }
done
grep -qx wasmtime <<<"$available" || {
    echo "load-bench.sh: the callout run needs wasmtime in the build" >&2
    exit 1
}

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# --- processes ---------------------------------------------------------------------------

# Alive and not a zombie.
alive() {
    local state
    kill -0 "$1" 2>/dev/null || return 1
    state="$(sed -E 's/^.*\) ([A-Za-z]).*$/\1/' "/proc/$1/stat" 2>/dev/null)" || return 1
    [[ "$state" != Z ]]
}

# Stops one process this script started: SIGTERM (or its stop_signal), up to 10 s, then
# SIGKILL; its children (nginx workers) too if they outlive it.
stop_pid() {
    local pid=$1 what=${running[$1]:-} sig=${stop_signal[$1]:-TERM} kids k i
    unset 'running[$pid]' 'stop_signal[$pid]'
    kids="$(pgrep -P "$pid" 2>/dev/null || true)"
    kill -"$sig" "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        alive "$pid" || break
        sleep 0.1
    done
    if alive "$pid"; then
        echo "   pid $pid ($what) ignored SIG$sig for 10 s: SIGKILL" >&2
        kill -KILL "$pid" 2>/dev/null || true
    fi
    for k in $kids; do
        for ((i = 0; i < 50; i++)); do
            alive "$k" || break
            sleep 0.1
        done
        if alive "$k" && [[ "$(cat "/proc/$k/comm" 2>/dev/null)" == nginx ]]; then
            kill -KILL "$k" 2>/dev/null || true
        fi
    done
    alive "$pid" || wait "$pid" 2>/dev/null || true
}

# A free TCP port on 127.0.0.1 (the kernel's pick; a race with other programs is possible, so
# starts are retried on another port).
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# Waits until something answers HTTP on the port while the process lives: at most 600 polls
# and 60 s.
wait_listening() {
    local port=$1 pid=$2 i deadline=$((SECONDS + 60))
    for ((i = 0; i < 600 && SECONDS < deadline; i++)); do
        alive "$pid" || return 1
        curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$port/" && return 0
        sleep 0.1
    done
    return 1
}

# Peak RSS in KiB of a process and its children, every 0.5 s while it lives (at most 1 h),
# written to a file after each sample.
rss_sampler() {
    local out=$1 pid=$2 max=0 sum kb p i
    for ((i = 0; i < 7200; i++)); do
        alive "$pid" || break
        sum=0
        for p in "$pid" $(pgrep -P "$pid" 2>/dev/null || true); do
            kb="$(awk '/^VmRSS:/ { print $2 }' "/proc/$p/status" 2>/dev/null || true)"
            sum=$((sum + ${kb:-0}))
        done
        if ((sum > max)); then max=$sum; fi
        echo "$max" >"$out"
        sleep 0.5
    done
}

nginx_conf() { # file name port worker_processes [upstream_port]
    local file=$1 name=$2 port=$3 procs=$4 up=${5:-} wc=$((conns * 4 > 1024 ? conns * 4 : 1024))
    {
        echo "# $name, written by scripts/load-bench.sh"
        # As root, nginx would switch its workers to nobody; keep the invoking user.
        [[ "$(id -u)" == 0 ]] && echo "user $(id -un) $(id -gn);"
        echo "worker_processes $procs;"
        echo "daemon off;"
        echo "master_process on;"
        echo "pid $tmp/$name.pid;"
        echo "error_log $tmp/$name.error.log error;"
        echo "events { worker_connections $wc; }"
        echo "http {"
        echo "    access_log off;"
        echo "    default_type text/plain;"
        echo "    keepalive_requests 1000000;"
        for t in client_body proxy fastcgi uwsgi scgi; do
            echo "    ${t}_temp_path $tmp/$name-temp/$t;"
        done
        if [[ -n "$up" ]]; then
            echo "    upstream backend {"
            echo "        server 127.0.0.1:$up;"
            echo "        keepalive $conns;"
            echo "        keepalive_requests 1000000;"
            echo "    }"
            echo "    server {"
            echo "        listen 127.0.0.1:$port reuseport;"
            echo "        location / {"
            echo "            proxy_pass http://backend;"
            echo "            proxy_http_version 1.1;"
            echo "            proxy_set_header Connection \"\";"
            echo "        }"
            echo "    }"
        else
            echo "    server {"
            echo "        listen 127.0.0.1:$port;"
            echo "        location / { return 200 \"ok\\n\"; }"
            # The callout fixture puts this body in a request header: no newline.
            echo "        location = /check { return 200 \"bench\"; }"
            echo "    }"
        fi
        echo "}"
    } >"$file"
    mkdir -p "$tmp/$name-temp"
}

wasmux_conf() { # file port kind [engine]
    local file=$1 port=$2 kind=$3 engine=${4:-}
    local fixtures="$root/conformance/fixtures/wasm"
    {
        echo "# written by scripts/load-bench.sh"
        echo "workers: $workers"
        echo "drain_seconds: 1"
        echo "listeners:"
        echo "  - name: main"
        echo "    address: \"127.0.0.1:$port\""
        echo "    routes:"
        echo "      - match: { prefix: \"/\" }"
        echo "        cluster: backend"
        case "$kind" in
            headers) echo "        filters: [headers]" ;;
            callout) echo "        filters: [auth]" ;;
        esac
        echo "clusters:"
        echo "  - name: backend"
        echo "    endpoints: [\"127.0.0.1:$upstream_port\"]"
        if [[ "$kind" == callout ]]; then
            echo "  - name: auth-cluster"
            echo "    endpoints: [\"127.0.0.1:$upstream_port\"]"
        fi
        case "$kind" in
            headers)
                echo "plugins:"
                echo "  - name: headers"
                echo "    vm: { runtime: $engine, code: \"$fixtures/headers.wasip1.wasm\" }"
                ;;
            callout)
                echo "plugins:"
                echo "  - name: auth"
                echo "    vm: { runtime: $engine, code: \"$fixtures/callout.wasip1.wasm\" }"
                ;;
        esac
    } >"$file"
}

# Starts target $1 (upstream, nginx, pingora, wasmux-*) on a free port, up to 3 ports; sets
# $port, $pid, $start_cmd and $config_file. Returns 1 when it never answers.
start_target() {
    local id=$1 kind=$2 engine=${3:-} attempt conf
    for attempt in 1 2 3; do
        port="$(free_port)"
        case "$id" in
            upstream | nginx)
                conf="$tmp/$id.conf"
                if [[ "$id" == upstream ]]; then
                    nginx_conf "$conf" "$id" "$port" 1
                else
                    nginx_conf "$conf" "$id" "$port" "$workers" "$upstream_port"
                fi
                start_cmd="$nginx_bin -p $tmp/ -e $tmp/$id.error.log -c $conf"
                "$nginx_bin" -p "$tmp/" -e "$tmp/$id.error.log" -c "$conf" >>"$tmp/$id.log" 2>&1 &
                pid=$!
                ;;
            pingora)
                conf=""
                start_cmd="${built_pingora#"$root"/} 127.0.0.1:$port 127.0.0.1:$upstream_port $workers"
                "$pingora_baseline" "127.0.0.1:$port" "127.0.0.1:$upstream_port" "$workers" >>"$tmp/$id.log" 2>&1 &
                pid=$!
                # SIGTERM is Pingora's graceful terminate, with a grace period of 5 minutes by
                # default; SIGINT its fast shutdown.
                stop_signal[$pid]=INT
                ;;
            *)
                conf="$tmp/$id.yaml"
                wasmux_conf "$conf" "$port" "$kind" "$engine"
                start_cmd="WASMUX_LOG=$wasmux_log ${built#"$root"/} serve --config $conf"
                WASMUX_LOG="$wasmux_log" "$wasmux" serve --config "$conf" >>"$tmp/$id.log" 2>&1 &
                pid=$!
                ;;
        esac
        running[$pid]=$id
        config_file=$conf
        if wait_listening "$port" "$pid"; then
            return 0
        fi
        stop_pid "$pid"
        pid=""
        echo "   $id did not answer on port $port (attempt $attempt); its log:" >&2
        tail -n 5 "$tmp/$id.log" "$tmp/$id.error.log" 2>/dev/null | sed 's/^/     /' >&2 || true
    done
    return 1
}

# One request that must succeed before the load: 200, the upstream's body, and the headers
# fixture's response header where it runs. Prints what is wrong.
sanity() {
    local port=$1 kind=$2 code
    code="$(curl -s --max-time 5 -D "$tmp/sanity.headers" -o "$tmp/sanity.body" -w '%{http_code}' "http://127.0.0.1:$port/" || true)"
    if [[ "$code" != 200 ]]; then
        echo "sanity request: HTTP ${code:-no answer}: $(head -c 200 "$tmp/sanity.body" 2>/dev/null | tr '\n' ' ')"
    elif [[ "$(cat "$tmp/sanity.body")" != ok ]]; then
        echo "sanity request: unexpected body: $(head -c 200 "$tmp/sanity.body" | tr '\n' ' ')"
    elif [[ "$kind" == headers ]] && ! grep -qi '^x-wasmux-response: seen' "$tmp/sanity.headers"; then
        echo "sanity request: no x-wasmux-response header from the filter"
    fi
}

manifest="$tmp/manifest.tsv"
: >"$manifest"
failures=0

# Runs one target: start, sanity request, warm-up, wrk with RSS sampling, then (not for the
# upstream) h2load at the fixed rate, stop (not the upstream, which serves every run).
# Appends a line to the manifest.
run_target() {
    local id=$1 name=$2 kind=$3 engine=${4:-} error="" sampler rss_file="" wrk_cmd url log_lines f
    local rate_cmd="" rate_error="" rate_out="" rate_log="" out="$tmp/$1.r$round"
    echo "== $name (round $round of $rounds)"
    port="" pid="" start_cmd="" config_file=""
    if ! start_target "$id" "$kind" "$engine"; then
        error="did not start or answer (log: $(tail -n 3 "$tmp/$id.log" 2>/dev/null | tr '\n\t' '  '))"
    fi
    url="http://127.0.0.1:$port/"
    wrk_cmd="wrk -t$threads -c$conns -d${seconds}s --latency $url"
    if [[ -z "$error" ]]; then
        error="$(sanity "$port" "$kind")"
    fi
    if [[ -z "$error" ]]; then
        timeout -k 5 $((warmup + 30)) wrk -t$threads -c"$conns" -d${warmup}s "$url" >"$out.warmup" 2>&1 || true
        if [[ "$id" != upstream ]]; then
            rss_file="$out.rss"
            rss_sampler "$rss_file" "$pid" &
            sampler=$!
            running[$sampler]="rss sampler"
        fi
        echo "   $wrk_cmd"
        if ! timeout -k 5 $((seconds + 30)) wrk -t$threads -c"$conns" -d"${seconds}s" --latency "$url" >"$out.wrk" 2>&1; then
            error="wrk failed: $(tail -n 3 "$out.wrk" | tr '\n\t' '  ')"
        fi
        [[ -z "$rss_file" ]] || stop_pid "$sampler"
        if ! alive "$pid"; then
            error="${error:+$error; }the process exited during the run (log: $(tail -n 3 "$tmp/$id.log" 2>/dev/null | tr '\n\t' '  '))"
        fi
    fi
    if [[ -n "$error" ]]; then
        echo "   FAILED: $error" >&2
        failures=$((failures + 1))
    elif [[ "$id" != upstream ]]; then
        # The fixed-rate phase. h2load appends to an existing log file: start from none.
        rate_out="$out.h2load"
        rate_log="$out.h2load.log"
        rm -f "$rate_log"
        rate_cmd="h2load --h1 -t1 -c$rate_conns --rps=$rate_per_conn -r1 --rate-period=1ms -n$rate_requests --log-file=$id.r$round.h2load.log $url"
        echo "   $rate_cmd"
        if ! timeout -k 5 $((2 * (rate_settle + rate_seconds) + 30)) h2load --h1 -t1 -c"$rate_conns" --rps="$rate_per_conn" \
            -r1 --rate-period=1ms -n"$rate_requests" --log-file="$rate_log" "$url" >"$rate_out" 2>&1; then
            rate_error="h2load failed: $(grep -v '^progress' "$rate_out" | tail -n 3 | tr '\n\t' '  ')"
        elif [[ ! -s "$rate_log" ]]; then
            rate_error="h2load wrote no per-request log"
        fi
        if ! alive "$pid"; then
            rate_error="${rate_error:+$rate_error; }the process exited during the run (log: $(tail -n 3 "$tmp/$id.log" 2>/dev/null | tr '\n\t' '  '))"
        fi
        if [[ -n "$rate_error" ]]; then
            echo "   FAILED at the fixed rate: $rate_error" >&2
            failures=$((failures + 1))
        fi
    fi
    if [[ "$id" != upstream && -n "$pid" ]]; then
        stop_pid "$pid"
    fi
    # Lines the proxy wrote to stderr and its error log: a log line per request costs.
    log_lines=0
    for f in "$tmp/$id.log" "$tmp/$id.error.log"; do
        [[ ! -f "$f" ]] || log_lines=$((log_lines + $(wc -l <"$f")))
    done
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$id" "$name" "$kind" "$engine" "$error" \
        "$out.wrk" "$rss_file" "$start_cmd" "$config_file" "$wrk_cmd" "$log_lines" \
        "$rate_cmd" "$rate_out" "$rate_log" "$rate_error" "$round" >>"$manifest"
}

# --- runs --------------------------------------------------------------------------------

load_start="$(cut -d' ' -f1-3 /proc/loadavg)"
date_utc="$(date -u +%Y-%m-%dT%H:%M:%SZ)"

upstream_port=""
round=1
run_target upstream "upstream (nginx, direct)" upstream
upstream_port="$port"
upstream_pid="$pid"
if ! alive "${upstream_pid:-0}" || [[ -n "$(tail -n 1 "$manifest" | cut -f5)" ]]; then
    echo "load-bench.sh: the upstream does not work; stopping" >&2
    exit 1
fi
# The proxy targets (id|name|kind|engine), in the order of the odd rounds; the even rounds run
# them in reverse, so that of two neighbours each runs first as often as the other (give or
# take a round): in paired checks, the second run of a pair gained about 5 % by position alone.
targets=("nginx|nginx (reverse proxy)|nginx|" "pingora|pingora (no wasmux)|pingora|" "wasmux|wasmux, no filter|plain|")
for e in "${engines[@]}"; do
    targets+=("wasmux-headers-$e|wasmux + headers ($e)|headers|$e")
done
targets+=("wasmux-callout-wasmtime|wasmux + callout (wasmtime)|callout|wasmtime")
for ((round = 1; round <= rounds; round++)); do
    for ((i = 0; i < ${#targets[@]}; i++)); do
        at=$(( round % 2 == 1 ? i : ${#targets[@]} - 1 - i ))
        IFS='|' read -r t_id t_name t_kind t_engine <<<"${targets[at]}"
        run_target "$t_id" "$t_name" "$t_kind" "$t_engine"
    done
done
stop_pid "$upstream_pid"
load_end="$(cut -d' ' -f1-3 /proc/loadavg)"

# --- results -----------------------------------------------------------------------------

script_cmd="WASMUX_BENCH_PROFILE=$profile WASMUX_BENCH_FEATURES=$features WASMUX_BENCH_ENGINES=\"${engines[*]}\" WASMUX_BENCH_SECONDS=$seconds"
script_cmd+=" WASMUX_BENCH_WORKERS=$workers WASMUX_BENCH_CONNS=$conns WASMUX_BENCH_RATE=$rate WASMUX_BENCH_RATE_CONNS=$rate_conns"
script_cmd+=" WASMUX_BENCH_RATE_SECONDS=$rate_seconds WASMUX_BENCH_ROUNDS=$rounds WASMUX_BENCH_LOG=$wasmux_log scripts/load-bench.sh"

mkdir -p docs
MANIFEST="$manifest" OUT="docs/load.json" DATE_UTC="$date_utc" LOAD_START="$load_start" LOAD_END="$load_end" \
    SCRIPT_CMD="$script_cmd" BUILD_CMD="$build_cmd" BUILD_PINGORA_CMD="$build_pingora_cmd" FEATURES="$features" \
    SECONDS_RUN="$seconds" CONNS="$conns" THREADS="$threads" NPROC="$(nproc)" WORKERS="$workers" WARMUP="$warmup" \
    RATE="$rate" RATE_CONNS="$rate_conns" RATE_PER_CONN="$rate_per_conn" RATE_SECONDS="$rate_seconds" \
    RATE_SETTLE="$rate_settle" RATE_REQUESTS="$rate_requests" ROUNDS="$rounds" WASMUX_LOG_SETTING="$wasmux_log" \
    NGINX_VERSION="$("$nginx_bin" -v 2>&1 | head -n 1)" WRK_VERSION="$(wrk -v 2>&1 | head -n 1 || true)" \
    H2LOAD_VERSION="$(h2load --version 2>&1 | head -n 1 || true)" \
    GIT_COMMIT="$(git rev-parse HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (with local changes)')" \
    python3 - <<'EOF'
import json, math, os, platform, re

UNITS = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6, "h": 3600e6}

def micros(text):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    return round(float(m.group(1)) * UNITS[m.group(2)], 1) if m else None

def parse_wrk(path):
    out = {"req_s": None, "p50_us": None, "p99_us": None}
    try:
        text = open(path, encoding="utf-8", errors="replace").read()
    except OSError:
        return out
    m = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.M)
    if m:
        out["req_s"] = round(float(m.group(1)), 1)
    for pct, key in (("50", "p50_us"), ("99", "p99_us")):
        m = re.search(rf"^\s+{pct}(?:\.0+)?%\s+(\S+)", text, re.M)
        if m:
            out[key] = micros(m.group(1))
    m = re.search(r"^\s+(\d+) requests in ([\d.]+\w+)", text, re.M)
    if m:
        out["requests"] = int(m.group(1))
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    out["non_2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    out["socket_errors"] = dict(zip(("connect", "read", "write", "timeout"), map(int, m.groups()))) if m else None
    return out

def percentile(values, p):
    """Nearest rank: the smallest of the sorted values with at least p % of them at or below it."""
    if not values:
        return None
    return values[max(1, math.ceil(p / 100 * len(values))) - 1]

def parse_h2load(out_path, log_path, settle_s, window_s):
    """h2load's summary, and from its per-request log (start µs since the epoch, status or -1,
    µs until the end of the response) the achieved rate and the latency percentiles of the
    requests that started in the window_s seconds after the first settle_s (the connections
    open 1 ms apart, so the last ones end a little after the window: left out too)."""
    out = {}
    try:
        text = open(out_path, encoding="utf-8", errors="replace").read()
    except OSError:
        text = ""
    m = re.search(r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                  r"(\d+) errored, (\d+) timeout", text, re.M)
    if m:
        out.update(zip(("total", "started", "done", "succeeded", "failed", "errored", "timeout"), map(int, m.groups())))
    m = re.search(r"^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text, re.M)
    if m:
        out["status"] = dict(zip(("2xx", "3xx", "4xx", "5xx"), map(int, m.groups())))
    m = re.search(r"^finished in ([\d.]+\w+), ([\d.]+) req/s", text, re.M)
    if m:
        # h2load's own figure: requests ÷ the whole run, the connection ramp included.
        out["h2load_req_s"] = float(m.group(2))
    rows = []
    try:
        with open(log_path, encoding="utf-8") as f:
            for line in f:
                cols = line.split("\t")
                if len(cols) >= 3:
                    rows.append((int(cols[0]), int(cols[1]), int(cols[2])))
    except (OSError, ValueError) as e:
        out["log_error"] = str(e)
    out["log_rows"] = len(rows)
    if rows:
        cut = min(r[0] for r in rows) + settle_s * 1_000_000
        kept = [r for r in rows if cut <= r[0] < cut + window_s * 1_000_000]
        out["measured_requests"] = len(kept)
        out["measured_seconds"] = window_s
        out["achieved_rps"] = round(len(kept) / window_s, 1)
        ok = sorted(r[2] for r in kept if 200 <= r[1] < 300)
        out["measured_non_2xx"] = len(kept) - len(ok)
        for p, key in ((50, "p50_us"), (90, "p90_us"), (99, "p99_us"), (99.9, "p999_us"), (100, "max_us")):
            out[key] = percentile(ok, p)
        out["mean_us"] = round(sum(ok) / len(ok), 1) if ok else None
    return out

def cpu_model():
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"

def mem_kib():
    try:
        for line in open("/proc/meminfo", encoding="utf-8"):
            if line.startswith("MemTotal:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None

def os_name():
    try:
        for line in open("/etc/os-release", encoding="utf-8"):
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.system()

env = os.environ
runs, targets = [], []
with open(env["MANIFEST"], encoding="utf-8") as f:
    for line in f:
        (id_, name, kind, engine, error, wrk, rss, start, config, wrk_cmd, log_lines,
         rate_cmd, rate_out, rate_log, rate_error, round_) = line.rstrip("\n").split("\t")
        t = {"id": id_, "name": name, "kind": kind, "engine": engine or None, "round": int(round_)}
        t.update(parse_wrk(wrk) if not error else {"req_s": None, "p50_us": None, "p99_us": None})
        rss_kib = None
        if rss:
            try:
                rss_kib = int(open(rss, encoding="utf-8").read().strip() or 0) or None
            except (OSError, ValueError):
                pass
        t["rss_kib"] = rss_kib
        if error:
            t["error"] = error
        elif t["req_s"] is None:
            t["error"] = "no Requests/sec in wrk's output"
        t["log_lines"] = int(log_lines or 0)
        t["command"] = start
        t["wrk"] = wrk_cmd
        try:
            t["config"] = open(config, encoding="utf-8").read() if config else None
        except OSError:
            t["config"] = None
        if rate_cmd:
            fr = {"command": rate_cmd, "target_rps": int(env["RATE"]), "clients": int(env["RATE_CONNS"]),
                  "per_client_rps": float(env["RATE_PER_CONN"]), "requested": int(env["RATE_REQUESTS"]),
                  "settle_seconds": int(env["RATE_SETTLE"])}
            fr.update(parse_h2load(rate_out, rate_log, fr["settle_seconds"], int(env["RATE_SECONDS"])))
            # Every request asked for that did not end in a 2xx response: failed, errored,
            # timed out, other statuses, or never sent.
            if "status" in fr:
                fr["errors"] = fr["requested"] - fr["status"]["2xx"]
            if rate_error:
                fr["error"] = rate_error
            elif fr.get("p99_us") is None:
                fr["error"] = (f"no successful request in h2load's log after the first {fr['settle_seconds']} s"
                               if fr.get("log_rows") else "no h2load log")
            t["fixed_rate"] = fr
        else:
            t["fixed_rate"] = None
        runs.append(t)

def median(values):
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2

def spread(values):
    """The lowest and the highest of the values that are there, or (None, None)."""
    values = [v for v in values if v is not None]
    return (min(values), max(values)) if values else (None, None)

# One target per id, in the order of the first round: each figure is the median of its rounds
# (the highest RSS), every round is kept under "rounds", and a round's error is the target's.
for id_ in dict.fromkeys(r["id"] for r in runs):
    rs = [r for r in runs if r["id"] == id_]
    t = {k: rs[0][k] for k in ("id", "name", "kind", "engine", "command", "wrk", "config")}
    for key in ("req_s", "p50_us", "p99_us"):
        t[key] = median(r.get(key) for r in rs)
    t["req_s_min"], t["req_s_max"] = spread(r.get("req_s") for r in rs)
    t["requests"] = sum(r.get("requests") or 0 for r in rs)
    t["non_2xx"] = sum(r.get("non_2xx") or 0 for r in rs)
    errs = [r.get("socket_errors") for r in rs if r.get("socket_errors")]
    t["socket_errors"] = {k: sum(e[k] for e in errs) for k in errs[0]} if errs else None
    t["rss_kib"] = max((r["rss_kib"] for r in rs if r.get("rss_kib")), default=None)
    t["log_lines"] = sum(r["log_lines"] for r in rs)
    errors = [r["error"] for r in rs if r.get("error")]
    if errors:
        t["error"] = f"round {next(r['round'] for r in rs if r.get('error'))}: {errors[0]}"
    frs = [r["fixed_rate"] for r in rs if r.get("fixed_rate")]
    if frs:
        fr = {k: frs[0][k] for k in ("command", "target_rps", "clients", "per_client_rps", "requested",
                                     "settle_seconds") if k in frs[0]}
        for key in ("achieved_rps", "p50_us", "p90_us", "p99_us", "p999_us", "max_us", "mean_us"):
            fr[key] = median(f.get(key) for f in frs)
        fr["p99_us_min"], fr["p99_us_max"] = spread(f.get("p99_us") for f in frs)
        if all("errors" in f for f in frs):
            fr["errors"] = sum(f["errors"] for f in frs)
        fr["measured_requests"] = sum(f.get("measured_requests") or 0 for f in frs)
        rate_errors = [f["error"] for f in frs if f.get("error")]
        if rate_errors:
            fr["error"] = rate_errors[0]
        t["fixed_rate"] = fr
    else:
        t["fixed_rate"] = None
    t["rounds"] = [{k: v for k, v in r.items() if k not in ("id", "name", "kind", "engine", "command", "wrk", "config")}
                   for r in rs]
    targets.append(t)

report = {
    "date": env["DATE_UTC"],
    "machine": {
        "nproc": int(env["NPROC"]),
        "cpu": cpu_model(),
        "kernel": platform.release(),
        "os": os_name(),
        "arch": platform.machine(),
        "memory_kib": mem_kib(),
    },
    "load_average": {"start": [float(x) for x in env["LOAD_START"].split()], "end": [float(x) for x in env["LOAD_END"].split()]},
    "settings": {
        "seconds": int(env["SECONDS_RUN"]),
        "connections": int(env["CONNS"]),
        "wrk_threads": int(env["THREADS"]),
        "workers": int(env["WORKERS"]),
        "warmup_seconds": int(env["WARMUP"]),
        "rounds": int(env["ROUNDS"]),
        "rounds_alternate": True,
        "fixed_rate": {
            "target_rps": int(env["RATE"]),
            "clients": int(env["RATE_CONNS"]),
            "per_client_rps": float(env["RATE_PER_CONN"]),
            "seconds": int(env["RATE_SECONDS"]),
            "settle_seconds": int(env["RATE_SETTLE"]),
            "requests": int(env["RATE_REQUESTS"]),
        },
        "upstream_workers": 1,
        "wasmux_log": env["WASMUX_LOG_SETTING"],
        "features": env["FEATURES"],
    },
    "versions": {"wasmux_commit": env["GIT_COMMIT"], "nginx": env["NGINX_VERSION"], "wrk": env["WRK_VERSION"],
                 "h2load": env["H2LOAD_VERSION"]},
    "commands": {
        "bench": env["SCRIPT_CMD"],
        "build": env["BUILD_CMD"],
        "build_pingora": env["BUILD_PINGORA_CMD"],
        "report": "python3 scripts/load-report.py docs/load.json",
    },
    "targets": targets,
}
with open(env["OUT"], "w", encoding="utf-8") as f:
    json.dump(report, f, indent=2)
    f.write("\n")

def cell(v, fmt):
    return "—" if v is None else fmt.format(v)

print()
print(f"{'target':<32} {'req/s':>10} {'p50 µs':>9} {'p99 µs':>9} {'RSS MiB':>8}  notes")
for t in targets:
    notes = t.get("error", "")
    if not notes and t.get("non_2xx"):
        notes = f"{t['non_2xx']} non-2xx responses"
    if not notes and t["log_lines"]:
        notes = f"{t['log_lines']:,} log lines"
    rss = t["rss_kib"] / 1024 if t["rss_kib"] else None
    print(f"{t['name']:<32} {cell(t['req_s'], '{:,.0f}'):>10} {cell(t['p50_us'], '{:,.0f}'):>9} "
          f"{cell(t['p99_us'], '{:,.0f}'):>9} {cell(rss, '{:.1f}'):>8}  {notes}")
print()
print(f"at a fixed rate of {int(env['RATE']):,} req/s ({env['RATE_CONNS']} h2load connections):")
print(f"{'target':<32} {'req/s':>10} {'p50 µs':>9} {'p90 µs':>9} {'p99 µs':>9} {'p99.9 µs':>9} {'errors':>7}  notes")
for t in targets:
    fr = t["fixed_rate"]
    if fr is None:
        continue
    notes = fr.get("error", "")
    if not notes and fr.get("achieved_rps") and fr["achieved_rps"] < 0.95 * fr["target_rps"]:
        notes = "below the rate asked for"
    print(f"{t['name']:<32} {cell(fr.get('achieved_rps'), '{:,.0f}'):>10} {cell(fr.get('p50_us'), '{:,}'):>9} "
          f"{cell(fr.get('p90_us'), '{:,}'):>9} {cell(fr.get('p99_us'), '{:,}'):>9} {cell(fr.get('p999_us'), '{:,}'):>9} "
          f"{cell(fr.get('errors'), '{:,}'):>7}  {notes}")
print(f"(load average {env['LOAD_START']} at the start, {env['LOAD_END']} at the end; nproc {env['NPROC']})")
print()
print(f"wrote {env['OUT']}")
EOF

python3 scripts/load-report.py docs/load.json
if ((failures)); then
    echo "load-bench.sh: $failures target(s) failed; see the notes above" >&2
    exit 1
fi
