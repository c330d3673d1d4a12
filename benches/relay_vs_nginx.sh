#!/usr/bin/env bash
# Puts `meridian relay` and nginx side by side, as TLS reverse proxies in front of the same two
# simulated LLM backends, and measures what a proxy costs an LLM client: the time to first
# token it adds, the streamed requests per second it carries, and its CPU per request.
#
# What it starts, all on 127.0.0.1 and in a temporary folder (/tmp/meridian-relay-bench.*):
# - two `meridian sim-backend`s serving `bench-model` (128 slots each, so that no run queues in
#   a backend; prefill 20 ms; 200 tokens/s; 32 tokens per answer: ~175 ms per request);
# - `meridian relay` over them: HTTPS (h1 + h2 by ALPN) and its plain listener on port 0, HTTP/3
#   off (nginx serves none here), both backends `kind = "vllm"` with 128 slots;
# - nginx (its own config, prefix, pid file and logs in the temporary folder; in the foreground,
#   one worker process, as the current user) as the TLS reverse proxy to the same backends:
#   same certificate, h1 + h2, `proxy_buffering off`, `proxy_http_version 1.1`, upstream
#   `keepalive` and `least_conn` (its closest match to the relay's load-aware balancing),
#   access log off.
# Then `relay_load` (benches/relay_load/load_generator.rs) runs, per concurrency: straight to
# the backends (plain HTTP/1.1, connections split over both), then through each proxy over
# HTTPS with HTTP/1.1 (one connection per worker) and HTTP/2 (concurrency/16 connections).
# Each run is closed-loop: `concurrency` workers, each sending one streamed chat completion as
# soon as its previous one ended, 2 s of warm-up and then BENCH_SECONDS measured.
#
# Added TTFT is the proxy's TTFT percentile minus the direct run's at the same concurrency (a
# difference of percentiles, not a percentile of differences). Proxy CPU per request is the
# proxy's on-CPU time over the run (/proc/<pid>/task/*/schedstat, every process of its group:
# nginx's master and worker) divided by the requests that succeeded in it, warm-up included.
#
# Pinning (with taskset, on 2+ CPUs): the proxies on CPU 0, the backends and the load generator
# on CPU 1, so a proxy has one core to itself (the relay's runtime sizes itself to it) and the
# client side does not compete with it. The script says so, or that it could not.
#
# Needs: nginx (installed from Debian with apt-get when missing and run as root), curl, cargo.
# One command: benches/relay_vs_nginx.sh (about 3.5 minutes with the defaults).
# Environment: BENCH_SECONDS (10), WARMUP_SECONDS (2), CONCURRENCIES ("8 32 128"),
# PROTOCOLS ("h1 h2"), SKIP_BUILD=1 to use the existing release binaries, CARGO_TARGET_DIR,
# MERIDIAN_BIN and RELAY_LOAD_BIN (other binaries; set SKIP_BUILD=1 with them).
# Every process it starts is stopped when it exits, however it exits; every wait is bounded.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${BENCH_SECONDS:-10}
warmup=${WARMUP_SECONDS:-2}
concurrencies=${CONCURRENCIES:-"8 32 128"}
protocols=${PROTOCOLS:-"h1 h2"}
target_dir=${CARGO_TARGET_DIR:-target}
bin=${MERIDIAN_BIN:-$target_dir/release/meridian}
load=${RELAY_LOAD_BIN:-$target_dir/release/examples/relay_load}
model=bench-model
work=$(mktemp -d /tmp/meridian-relay-bench.XXXXXX)
groups=() # process-group ids of everything started (each started with setsid)
load_pid= # the load generator's `timeout`, while one runs

stop_all() {
  local pid alive
  if [ -n "$load_pid" ]; then
    kill -TERM "$load_pid" 2>/dev/null || true
  fi
  for pid in "${groups[@]}"; do
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  done
  for _ in $(seq 1 50); do # at most 5 s for a clean exit
    alive=
    for pid in "${groups[@]}"; do
      kill -0 -- "-$pid" 2>/dev/null && alive=1
    done
    [ -z "$alive" ] && break
    sleep 0.1
  done
  for pid in "${groups[@]}"; do
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  groups=()
}
trap stop_all EXIT
trap 'exit 130' INT TERM HUP

fail() {
  echo "relay_vs_nginx.sh: $*" >&2
  exit 1
}

# --- tools -------------------------------------------------------------------------------------
if ! command -v nginx >/dev/null && [ -x /usr/sbin/nginx ]; then PATH=$PATH:/usr/sbin; fi
if ! command -v nginx >/dev/null; then
  [ "$(id -u)" = 0 ] || fail "nginx is not installed (apt-get install nginx-light, as root)"
  echo "relay_vs_nginx.sh: installing nginx from Debian"
  export DEBIAN_FRONTEND=noninteractive
  timeout 600 apt-get update -qq >"$work/apt.log" 2>&1 || true
  timeout 600 apt-get install -y -qq nginx-light >>"$work/apt.log" 2>&1 ||
    timeout 600 apt-get install -y -qq nginx >>"$work/apt.log" 2>&1 ||
    { cat "$work/apt.log" >&2; fail "cannot install nginx"; }
  PATH=$PATH:/usr/sbin
  command -v nginx >/dev/null || fail "nginx installed but not found"
fi
command -v curl >/dev/null || fail "curl is not installed"
command -v setsid >/dev/null || fail "setsid (util-linux) is not installed"

if [ "${SKIP_BUILD:-}" != 1 ]; then
  echo "relay_vs_nginx.sh: cargo build --release (niced)"
  nice -n 10 cargo build --release --quiet --bin meridian --example relay_load
fi
[ -x "$bin" ] && [ -x "$load" ] || fail "no $bin or $load; run without SKIP_BUILD"

if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
  proxy_cpu=(taskset -c 0)
  client_cpu=(taskset -c 1)
  pinning="proxies pinned to CPU 0, backends and load generator to CPU 1 (taskset)"
else
  proxy_cpu=()
  client_cpu=()
  pinning="NOT pinned (no taskset or fewer than 2 CPUs): proxies and clients share the CPUs"
fi

# Starts a command in its own process group (so that nginx's worker is stopped with its
# master); sets `started` to its pid, which is the group id.
spawn() { # log command...
  local log=$1
  shift
  setsid "$@" >"$log" 2>&1 &
  started=$!
  groups+=("$started")
}

# Waits for a file to exist, at most `tenths` tenths of a second, while `pid` lives.
wait_for_file() { # file pid tenths what
  for _ in $(seq 1 "$3"); do
    [ -s "$1" ] && return 0
    kill -0 "$2" 2>/dev/null || fail "$4 exited before it was ready (see $work)"
    sleep 0.1
  done
  fail "$4 not ready after $(($3 / 10)) s (see $work)"
}

json_addr() { # file key -> the host:port value of "key":"host:port"
  tr -d ' \n' <"$1" | grep -o "\"$2\":\"[^\"]*\"" | cut -d'"' -f4
}

group_cpu_ns() { # pgid -> on-CPU ns of every thread of every process in the group
  local pid total=0 ns
  for pid in $(pgrep -g "$1" 2>/dev/null || true); do
    # A thread may end between the glob and the read: what is left still counts.
    ns=$( (cat /proc/"$pid"/task/*/schedstat 2>/dev/null || true) |
      awk '{ s += $1 } END { printf "%.0f", s }')
    total=$((total + ${ns:-0}))
  done
  echo "$total"
}

# --- certificate and backends ------------------------------------------------------------------
"$bin" certs self-signed --out "$work/certs" --name localhost --name 127.0.0.1 >/dev/null
cert=$work/certs/relay.pem
key=$work/certs/relay-key.pem

backends=()
for name in a b; do
  spawn "$work/sim-$name.log" "${client_cpu[@]}" "$bin" sim-backend --listen 127.0.0.1:0 \
    --model "$model" --slots 128 --queue-limit 256 --ttft-ms 20 --tokens-per-s 200 \
    --max-tokens 32 --ready-file "$work/sim-$name.json"
  wait_for_file "$work/sim-$name.json" "$started" 300 "sim-backend $name"
  backends+=("$(json_addr "$work/sim-$name.json" listen)")
done

# --- the relay ---------------------------------------------------------------------------------
cat >"$work/relay.toml" <<EOF
[relay]
region = "bench"
listen = "127.0.0.1:0"
plain_listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
http3 = false
scrape_interval_ms = 1000

[relay.tls]
cert = "$cert"
key = "$key"

[[backend]]
id = "sim-a"
url = "http://${backends[0]}"
kind = "vllm"
models = ["$model"]
slots = 128

[[backend]]
id = "sim-b"
url = "http://${backends[1]}"
kind = "vllm"
models = ["$model"]
slots = 128

[timeouts]
total_ms = 60000
EOF
spawn "$work/relay.log" "${proxy_cpu[@]}" "$bin" relay --config "$work/relay.toml" \
  --ready-file "$work/relay.json"
relay_pid=$started
wait_for_file "$work/relay.json" "$relay_pid" 300 "the relay"
relay_https=$(json_addr "$work/relay.json" https)
relay_plain=$(json_addr "$work/relay.json" plain)
relay_admin=$(json_addr "$work/relay.json" admin)
# Until its probes have seen both backends up, the relay would not use them both.
for i in $(seq 1 300); do # at most 30 s
  up=$( (curl -s --max-time 2 "http://$relay_admin/admin/backends" || true) |
    { grep -o '"health":"up"' || true; } | wc -l)
  [ "$up" -ge 2 ] && break
  [ "$i" = 300 ] && fail "the relay's backends are not up after 30 s (see $work)"
  sleep 0.1
done
curl -sf --max-time 5 "http://$relay_plain/v1/models" | grep -q "$model" ||
  fail "the relay's plain listener does not list $model"

# --- nginx -------------------------------------------------------------------------------------
nginx_version=$(nginx -v 2>&1 | grep -o '[0-9][0-9.]*' | head -n1)
if [ "$(printf '%s\n1.25.1\n' "$nginx_version" | sort -V | head -n1)" = 1.25.1 ]; then
  h2_listen=""
  h2_directive="http2 on;"
else # before 1.25.1 HTTP/2 is a parameter of `listen`
  h2_listen=" http2"
  h2_directive=""
fi
mkdir -p "$work/nginx/logs" "$work/nginx/temp"
nginx_conf() { # port
  cat <<EOF
daemon off;
master_process on;
worker_processes 1;
pid $work/nginx/nginx.pid;
error_log $work/nginx/logs/error.log warn;
# Only honoured when started as root: keeps the worker the current user, as the relay is.
user $(id -un) $(id -gn);
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work/nginx/temp/body;
  proxy_temp_path $work/nginx/temp/proxy;
  fastcgi_temp_path $work/nginx/temp/fastcgi;
  uwsgi_temp_path $work/nginx/temp/uwsgi;
  scgi_temp_path $work/nginx/temp/scgi;
  # The relay does not close client connections after N requests: nor should nginx here.
  keepalive_requests 1000000;
  upstream backends {
    least_conn;
    server ${backends[0]};
    server ${backends[1]};
    keepalive 256;
    keepalive_requests 1000000;
  }
  server {
    listen 127.0.0.1:$1 ssl$h2_listen;
    $h2_directive
    ssl_certificate $cert;
    ssl_certificate_key $key;
    location / {
      proxy_pass http://backends;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_read_timeout 60s;
    }
  }
}
EOF
}
nginx_port=
for attempt in 1 2 3 4 5; do
  port=$((20000 + RANDOM % 40000))
  if command -v ss >/dev/null && [ -n "$(ss -Htln "sport = :$port" 2>/dev/null)" ]; then
    continue
  fi
  nginx_conf "$port" >"$work/nginx/nginx.conf"
  spawn "$work/nginx/logs/stdout.log" "${proxy_cpu[@]}" nginx -p "$work/nginx" \
    -c "$work/nginx/nginx.conf" -e "$work/nginx/logs/error.log"
  nginx_pid=$started
  for _ in $(seq 1 100); do # at most 10 s
    if curl -sf --max-time 2 --cacert "$cert" --resolve "localhost:$port:127.0.0.1" \
      "https://localhost:$port/v1/models" 2>/dev/null | grep -q "$model"; then
      nginx_port=$port
      break 2
    fi
    kill -0 "$nginx_pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -TERM -- "-$nginx_pid" 2>/dev/null || true
  echo "relay_vs_nginx.sh: nginx did not start on port $port (attempt $attempt)" >&2
done
[ -n "$nginx_port" ] || { cat "$work/nginx/logs/error.log" >&2; fail "nginx did not start"; }

# --- runs --------------------------------------------------------------------------------------
results=$work/results.txt
: >"$results"

run_load() { # label proxy-pgid(or -) load-generator-args...
  local label=$1 pgid=$2 before=0 after=0 line status=0
  shift 2
  # Rows share the two backends: let the relay's next scrape (1 s interval) see the previous
  # row's load gone, or it counts that load as coming from elsewhere and sheds for a moment.
  sleep 1.5
  [ "$pgid" != - ] && before=$(group_cpu_ns "$pgid")
  # In the background and waited for, so that a signal interrupts the wait at once (bash
  # runs traps only between foreground commands) and the trap stops it.
  timeout $((warmup + seconds + 90)) "${client_cpu[@]}" "$load" --label "$label" \
    --model "$model" --max-tokens 32 --duration-s "$seconds" --warmup-s "$warmup" "$@" \
    >"$work/run-$label.txt" 2>>"$work/load.log" &
  load_pid=$!
  wait "$load_pid" || status=$?
  load_pid=
  if line=$(grep '^result ' "$work/run-$label.txt") && [ "$status" = 0 ]; then
    [ "$pgid" != - ] && after=$(group_cpu_ns "$pgid")
    echo "$line cpu_ns=$((after - before))" >>"$results"
  else
    echo "result label=$label failed=1" >>"$results"
    echo "relay_vs_nginx.sh: run $label failed (exit $status; see $work/load.log)" >&2
  fi
  echo "  $label done" >&2
}

echo "relay_vs_nginx.sh: $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg); $pinning"
echo "relay: https $relay_https (plain $relay_plain); nginx $nginx_version: https 127.0.0.1:$nginx_port"
echo "backends: ${backends[*]}; ${warmup} s warm-up + ${seconds} s per run; work in $work"
for c in $concurrencies; do
  run_load "direct-h1-c$c" - --target "http://${backends[0]}" --target "http://${backends[1]}" \
    --concurrency "$c"
  for proto in $protocols; do
    h2=()
    [ "$proto" = h2 ] && h2=(--http2)
    run_load "relay-$proto-c$c" "$relay_pid" --target "https://$relay_https" --ca "$cert" \
      --concurrency "$c" "${h2[@]}"
    run_load "nginx-$proto-c$c" "$nginx_pid" --target "https://127.0.0.1:$nginx_port" \
      --ca "$cert" --concurrency "$c" "${h2[@]}"
  done
done

if grep -qi "warn\|error" "$work/relay.log"; then
  echo "relay log has warnings or errors:"
  grep -i "warn\|error" "$work/relay.log" | tail -n 5
fi

# --- table -------------------------------------------------------------------------------------
echo
awk -v protocols="$protocols" -v concurrencies="$concurrencies" '
  function v(label, key) { return (label SUBSEP key) in r ? r[label, key] : "" }
  function ms(x) { return x == "" ? "-" : sprintf("%.1f", x) }
  function added(x, base) { return (x == "" || base == "") ? "-" : sprintf("%+.1f", x - base) }
  function ratio(a, b) { return (a == "" || b == "" || b + 0 == 0) ? "-" : sprintf("%.2f", a / b) }
  function cpu(label) {
    n = v(label, "completed_total")
    return (n == "" || n + 0 == 0 || v(label, "cpu_ns") == "") ? "" : v(label, "cpu_ns") / n / 1000
  }
  function row(name, proto, c, label, base) {
    if (v(label, "failed") != "") { printf "| %s | %s | %s | failed | | | | | | |\n", name, proto, c; return }
    printf "| %s | %s | %s | %.0f | %s | %s | %s | %s | %s | %s |\n", name, proto, c,
      v(label, "rps"), ms(v(label, "ttft_p50_ms")), ms(v(label, "ttft_p99_ms")),
      base == "" ? "-" : added(v(label, "ttft_p50_ms"), v(base, "ttft_p50_ms")),
      base == "" ? "-" : added(v(label, "ttft_p99_ms"), v(base, "ttft_p99_ms")),
      base == "" || cpu(label) == "" ? "-" : sprintf("%.0f", cpu(label)),
      v(label, "errors") == 0 ? "0" : v(label, "errors") " (" v(label, "error_kinds") ")"
  }
  {
    for (i = 2; i <= NF; i++) {
      split($i, kv, "=")
      if (kv[1] == "label") label = kv[2]
    }
    for (i = 2; i <= NF; i++) {
      eq = index($i, "=")
      r[label, substr($i, 1, eq - 1)] = substr($i, eq + 1)
    }
  }
  END {
    nc = split(concurrencies, cs, " ")
    np = split(protocols, ps, " ")
    print "| path | protocol | concurrency | req/s | TTFT p50 ms | TTFT p99 ms | added TTFT p50 ms | added TTFT p99 ms | proxy CPU µs/req | errors |"
    print "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    for (j = 1; j <= nc; j++) {
      c = cs[j]
      row("direct", "h1 (plain)", c, "direct-h1-c" c, "")
      for (k = 1; k <= np; k++) {
        row("relay", ps[k], c, "relay-" ps[k] "-c" c, "direct-h1-c" c)
        row("nginx", ps[k], c, "nginx-" ps[k] "-c" c, "direct-h1-c" c)
      }
    }
    print ""
    print "| protocol | concurrency | req/s relay/nginx | CPU per request relay/nginx | added TTFT p50 relay − nginx ms | added TTFT p99 relay − nginx ms |"
    print "| --- | --- | --- | --- | --- | --- |"
    for (j = 1; j <= nc; j++) {
      c = cs[j]
      for (k = 1; k <= np; k++) {
        R = "relay-" ps[k] "-c" c; N = "nginx-" ps[k] "-c" c
        # The direct baseline cancels out of the difference of the added TTFTs.
        printf "| %s | %s | %s | %s | %s | %s |\n", ps[k], c, ratio(v(R, "rps"), v(N, "rps")),
          ratio(cpu(R), cpu(N)), added(v(R, "ttft_p50_ms"), v(N, "ttft_p50_ms")),
          added(v(R, "ttft_p99_ms"), v(N, "ttft_p99_ms"))
      }
    }
  }' "$results"
echo
echo "raw results: $results"
