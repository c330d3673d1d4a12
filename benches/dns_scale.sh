#!/usr/bin/env bash
# Scale checks of `meridian dns`: start-up time and resident memory with the large synthetic
# GeoIP database, with 10,000 GSLB names, and with a zone of 1,000,000 records; then
# queries/s with the server on both cores (its default: one UDP worker per CPU).
#
#   benches/dns_scale.sh               # ~2 min; needs dnsperf for the last part
#   GSLB_NAMES=1000 ZONE_RECORDS=100000 benches/dns_scale.sh
#
# Start-up is from spawning the process to its ready file appearing (polled every 10 ms);
# RSS is read from /proc/<pid>/status right then. The two-core run shares CPU 1 between the
# server and dnsperf (there are only two): its queries/s is the machine's, not the server's.
# Everything goes to a temporary folder (kept with KEEP_WORK=1); every server is stopped
# when the script exits.
set -euo pipefail
cd "$(dirname "$0")/.."

gslb_names=${GSLB_NAMES:-10000}
zone_records=${ZONE_RECORDS:-1000000}
seconds=${BENCH_SECONDS:-10}
target=${CARGO_TARGET_DIR:-target}/release
work=$(mktemp -d /tmp/meridian-scale.XXXXXX)
server_pid=

cleanup() {
  if [[ -n $server_pid ]]; then kill "$server_pid" 2>/dev/null || true; fi
  if [[ ${KEEP_WORK:-} == 1 ]]; then echo "work kept in $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

echo "dns_scale.sh: building (release)"
nice cargo build --quiet --release --bin meridian --example dns_peers
meridian="$target/meridian"
db="$work/synthetic-city.mmdb"
"$target/examples/dns_peers" write-db "$db" >/dev/null

# The bundled config with absolute paths, the large database, no metrics listener.
base_config() { # zone-file
  sed -e "s|^database = .*|database = \"$db\"|" \
    -e "s|^file = \"example.test.zone\"|file = \"$1\"|" \
    -e "s|^metrics_listen = .*|# no metrics listener|" \
    -e "s|^operator_state = .*|operator_state = \"$work/operator-state.json\"|" \
    zones/meridian.toml
}

# Starts the server on $1 (config) pinned to CPUs $2; sets startup_ms and rss_mib.
start() {
  local ready="$work/ready.json"
  rm -f "$ready"
  local started
  started=$(date +%s%N)
  taskset -c "$2" "$meridian" dns --config "$1" --listen 127.0.0.1:0 --ready-file "$ready" \
    >"$work/server.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 1 6000); do
    [[ -s $ready ]] && break
    kill -0 "$server_pid" 2>/dev/null || { cat "$work/server.log" >&2; exit 1; }
    sleep 0.01
  done
  [[ -s $ready ]] || { echo "no ready file after 60 s" >&2; exit 1; }
  local now rss
  now=$(date +%s%N)
  rss=$(awk '/^VmRSS/ {print $2}' "/proc/$server_pid/status")
  startup_ms=$(((now - started) / 1000000))
  rss_mib=$(awk -v k="$rss" 'BEGIN {printf "%.1f", k / 1024}')
}

stop() {
  kill "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  server_pid=
}

port() { tr -d ' \n' <"$work/ready.json" | grep -o '"udp":\["127.0.0.1:[0-9]*' | sed 's/.*://'; }

printf '| case | start-up ms | RSS at ready MiB |\n| --- | --- | --- |\n'

base_config "$PWD/zones/example.test.zone" >"$work/large-db.toml"
start "$work/large-db.toml" 0
stop
echo "| bundled config, large GeoIP DB | $startup_ms | $rss_mib |"

# 10k GSLB names: each a copy of api.example.test's geo policy (same continent map).
{
  base_config "$PWD/zones/example.test.zone"
  for i in $(seq 1 "$gslb_names"); do
    cat <<EOF

[[gslb]]
name = "api$i.example.test."
mode = "geo"
regions = ["us-east", "eu-west", "ap-south"]
answers = 1
ttl = 30
ecs = true

[gslb.geo]
default = ["us-east"]
continents = { EU = ["eu-west", "us-east"], AF = ["eu-west", "us-east"], NA = ["us-east", "eu-west"], SA = ["us-east", "eu-west"], AS = ["ap-south", "eu-west"], OC = ["ap-south", "us-east"] }
EOF
  done
} >"$work/many-gslb.toml"
start "$work/many-gslb.toml" 0
stop
echo "| $gslb_names GSLB names (geo, ECS), large GeoIP DB | $startup_ms | $rss_mib |"

# A zone of 1M records: the bundled zone plus host-N A records.
{
  cat zones/example.test.zone
  awk -v n="$zone_records" 'BEGIN {
    for (i = 0; i < n; i++)
      printf "host-%d IN A 10.%d.%d.%d\n", i, int(i / 65536) % 256, int(i / 256) % 256, i % 256
  }'
} >"$work/big.zone"
base_config "$work/big.zone" >"$work/big-zone.toml"
start "$work/big-zone.toml" 0
stop
echo "| zone of $zone_records extra A records, large GeoIP DB | $startup_ms | $rss_mib |"
rm -f "$work/big.zone"

if command -v dnsperf >/dev/null; then
  printf 'api.example.test A\n' >"$work/gslb.txt"
  printf '\n| server CPUs | workers | q/s (GSLB A, no ECS) |\n| --- | --- | --- |\n'
  for cpus in 0 0,1; do
    start "$work/large-db.toml" "$cpus"
    threads=$(ls "/proc/$server_pid/task" | wc -l)
    qps=$(taskset -c 1 dnsperf -s 127.0.0.1 -p "$(port)" -l "$seconds" -e -c 4 -d "$work/gslb.txt" \
      2>&1 | awk '/Queries per second/ {printf "%.0f", $4}')
    stop
    echo "| $cpus | $([[ $cpus == 0 ]] && echo 1 || echo 2) UDP ($threads threads) | $qps |"
  done
fi
