#!/usr/bin/env bash
# Load-tests the real `meridian dns` server on loopback with dnsperf, and measures what the
# micro-benchmarks cannot: server CPU per query through the sockets and the async runtime,
# start-up time and resident memory, with the demo GeoIP database and with a large one.
#
# The server is pinned to CPU 0 and dnsperf to CPU 1, so they do not compete for a core. CPU
# per query is the server's on-CPU time (the first field of /proc/<pid>/task/*/schedstat,
# summed over its threads) across a run, divided by the queries dnsperf saw answered.
#
# Needs: dnsperf (`apt-get install dnsperf`), taskset, a release build
# (`cargo build --release`). For the large-database rows, first let the bench write the
# database and its config where this script can find them:
#   MERIDIAN_BENCH_DIR=/tmp/meridian-bench cargo bench --bench dns_path -- large_geoip
#   MERIDIAN_BENCH_DIR=/tmp/meridian-bench benches/dnsperf.sh
# Environment: MERIDIAN_BIN (default target/release/meridian), DNSPERF_SECONDS (default 12).
# Traffic goes to 127.0.0.1 only; the server is stopped on exit, whatever happens.
set -euo pipefail
cd "$(dirname "$0")/.."

bin=${MERIDIAN_BIN:-${CARGO_TARGET_DIR:-target}/release/meridian}
seconds=${DNSPERF_SECONDS:-12}
large_dir=${MERIDIAN_BENCH_DIR:-}
work=$(mktemp -d /tmp/meridian-dnsperf.XXXXXX)
server_pid=
port=
startup_ms=

stop_server() {
  if [ -n "$server_pid" ]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=
  fi
}
trap stop_server EXIT

for tool in dnsperf taskset; do
  command -v "$tool" >/dev/null || { echo "dnsperf.sh: $tool is not installed" >&2; exit 1; }
done
[ -x "$bin" ] || { echo "dnsperf.sh: no $bin; run cargo build --release" >&2; exit 1; }

# The bundled config with absolute paths, pointed at a database, without a metrics listener.
config_for() { # database output
  sed -e "s|^database = .*|database = \"$1\"|" \
      -e "s|^file = \"example.test.zone\"|file = \"$PWD/zones/example.test.zone\"|" \
      -e "s|^metrics_listen = .*|# metrics_listen: none while load testing|" \
      zones/meridian.toml >"$2"
}

# Starts the server on CPU 0; sets server_pid, port and startup_ms (spawn to ready file).
start_server() { # config label
  local ready="$work/ready-$2.json" started now
  rm -f "$ready"
  port=
  started=$(date +%s%N)
  taskset -c 0 "$bin" dns --config "$1" --listen 127.0.0.1:0 --ready-file "$ready" \
    >"$work/server-$2.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 1 6000); do # at most 60 s
    # The ready file appears complete (written, then renamed); its JSON is pretty-printed.
    [ -f "$ready" ] && port=$(tr -d ' \n' <"$ready" | grep -o '"udp":\["127.0.0.1:[0-9]*' |
      grep -o '[0-9]*$' || true)
    if [ -n "$port" ]; then
      now=$(date +%s%N)
      startup_ms=$(((now - started) / 1000000))
      return
    fi
    kill -0 "$server_pid" 2>/dev/null || { cat "$work/server-$2.log" >&2; exit 1; }
    sleep 0.01
  done
  echo "dnsperf.sh: server not ready after 60 s" >&2
  exit 1
}

server_cpu_ns() {
  # %.0f, not %d: mawk's %d stops at 2^31 ns.
  cat /proc/"$server_pid"/task/*/schedstat | awk '{ sum += $1 } END { printf "%.0f", sum }'
}

rss_mib() {
  awk '/^VmRSS:/ { printf "%.1f", $2 / 1024 }' /proc/"$server_pid"/status
}

# One dnsperf run: prints a table row.
run_case() { # name label query-file [dnsperf options...]
  local label=$2 queries=$3 out="$work/dnsperf-$1.txt" before after completed
  shift 3
  before=$(server_cpu_ns)
  taskset -c 1 dnsperf -s 127.0.0.1 -p "$port" -d "$queries" -l "$seconds" -e "$@" >"$out" 2>&1
  after=$(server_cpu_ns)
  completed=$(awk '/Queries completed:/ { print $3 }' "$out")
  awk -v label="$label" -v cpu=$((after - before)) -v done="$completed" '
    /Queries lost:/        { lost = $3 }
    /Response codes:/      { sub(/.*Response codes: */, ""); codes = $0 }
    /Queries per second:/  { qps = $4 }
    /Average Latency/      { sub(/.*Average Latency \(s\): */, ""); split($0, l, " "); lat = l[1] }
    END {
      printf "| %s | %d | %s | %.0f | %.1f | %.1f | %s |\n",
        label, done, lost, qps, lat * 1e6, cpu / done / 1000, codes
    }' "$out"
}

printf 'www.example.test A\n' >"$work/static.txt"
printf 'api.example.test A\n' >"$work/gslb.txt"
# ECS 81.2.69.0/24: family 1, source /24, scope 0, address 81.2.69 (RFC 7871 §6).
ecs_london=8:00011800510245

echo "dnsperf.sh: $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg), ${seconds} s per run, work in $work"
echo
echo "| run | queries | lost | QPS | avg latency µs | server CPU µs/query | rcodes |"
echo "| --- | --- | --- | --- | --- | --- | --- |"

config_for "$PWD/geoip/demo.mmdb" "$work/demo.toml"
start_server "$work/demo.toml" demo
demo_start=$startup_ms
demo_rss=$(rss_mib)
run_case demo-static "demo DB: static A" "$work/static.txt"
run_case demo-gslb "demo DB: GSLB A, no ECS" "$work/gslb.txt"
run_case demo-gslb-ecs "demo DB: GSLB A, ECS /24" "$work/gslb.txt" -E "$ecs_london"
# Below saturation each query pays more wake-ups: the figure for a lightly loaded server.
run_case demo-gslb-ecs-20k "demo DB: GSLB A, ECS /24, paced 20k QPS" "$work/gslb.txt" \
  -E "$ecs_london" -Q 20000
stop_server

large_db="$large_dir/synthetic-city.mmdb"
if [ -n "$large_dir" ] && [ -f "$large_db" ]; then
  config_for "$large_db" "$work/large.toml"
  start_server "$work/large.toml" large
  large_start=$startup_ms
  large_rss=$(rss_mib)
  run_case large-gslb-ecs "large DB: GSLB A, ECS /24" "$work/gslb.txt" -E "$ecs_london"
  stop_server
fi

echo
echo "start-up, spawn to ready file: demo DB ${demo_start} ms (RSS ${demo_rss} MiB)"
if [ -n "${large_start:-}" ]; then
  echo "start-up, spawn to ready file: large DB ${large_start} ms (RSS ${large_rss} MiB)"
fi
