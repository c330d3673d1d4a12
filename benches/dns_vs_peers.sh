#!/usr/bin/env bash
# Meridian, gdnsd and Knot DNS side by side, doing the same geo-DNS work on loopback: the same
# zone (zones/example.test.zone), the same GeoIP database, the same three-region map by
# continent for api.example.test, EDNS Client Subnet honoured by all three.
#
#   benches/dns_vs_peers.sh            # ~8 min; installs dnsperf, gdnsd, knot and
#                                      # knot-module-geoip with apt-get if missing (root)
#   GEOIP_DB=/path/GeoLite2-City.mmdb benches/dns_vs_peers.sh   # a real database instead
#   benches/dns_vs_peers.sh --smoke    # CI: Meridian alone, debug build, ~10 s, checks only
#
# Each server is pinned to CPU 0 and dnsperf to CPU 1 (taskset), every server runs one UDP
# and one TCP worker, and all of them stay up for the whole run so that the repetitions can
# interleave them (rep 1: every workload on every server, then rep 2, ...). Per workload:
#   static-udp    www.example.test A over UDP, from the zone
#   gslb-udp      api.example.test A over UDP without ECS: the client is 127.0.0.1, which no
#                 database places, so every server answers its default (us-east)
#   gslb-ecs-udp  api.example.test A over UDP, each query with ECS from one of ECS_SUBNETS
#                 client subnets sampled from the database (dnsperf -B with a file of packets,
#                 since dnsperf's -E sends one option value per run)
#   static-tcp    www.example.test A over TCP (one connection, queries pipelined)
# each measured twice over:
#   load runs     unpaced, BENCH_SECONDS each, REPETITIONS times: queries/s, server CPU per
#                 answered query, dnsperf's mean latency (at saturation that is queueing:
#                 100 outstanding queries / queries per second)
#   paced run     LATENCY_QPS for LATENCY_SECONDS with dnsperf -v (a line per response):
#                 mean and p99 latency at a load every server carries. dnsperf prints no
#                 percentiles itself, and -v costs dnsperf enough CPU to lower the ceiling
#                 of the load runs, hence a separate run.
# Server CPU per query is the server's on-CPU time (first field of /proc/<pid>/task/*/schedstat,
# summed over its threads) across a run, divided by the queries dnsperf saw answered. The
# table shows medians over the repetitions and lost queries summed over all runs, then the
# ratios meridian/knot and meridian/gdnsd. Its last column is how busy CPU 0 was with anything
# but the server during the load runs (from /proc/stat): on a shared machine, the noise gauge.
#
# Environment: BENCH_SECONDS (10), REPETITIONS (3), LATENCY_QPS (20000), LATENCY_SECONDS (5),
# ECS_SUBNETS (4096), SERVERS ("meridian gdnsd knot"), WORKLOADS (all four), GEOIP_DB (default: the synthetic
# database of benches/support/synthetic_geoip.rs, 300k IPv4 + 100k IPv6 networks),
# KEEP_WORK=1 to keep the temporary folder. Traffic goes to 127.0.0.1 only; every server is
# stopped when the script exits, however it exits.
set -euo pipefail
cd "$(dirname "$0")/.."

smoke=false
case "${1:-}" in
  --smoke) smoke=true ;;
  "") ;;
  *)
    echo "usage: benches/dns_vs_peers.sh [--smoke]" >&2
    exit 2
    ;;
esac

if $smoke; then
  # Figures are not judged here: tiny paced runs that prove every workload gets answers.
  servers="meridian"
  seconds=1
  repetitions=1
  latency_qps=500
  latency_seconds=1
  ecs_subnets=64
  load_limit=(-Q 1000 -q 10)
  profile=debug
else
  servers=${SERVERS:-meridian gdnsd knot}
  seconds=${BENCH_SECONDS:-10}
  repetitions=${REPETITIONS:-3}
  latency_qps=${LATENCY_QPS:-20000}
  latency_seconds=${LATENCY_SECONDS:-5}
  ecs_subnets=${ECS_SUBNETS:-4096}
  load_limit=()
  profile=release
fi
workloads=${WORKLOADS:-"static-udp gslb-udp gslb-ecs-udp static-tcp"}
target=${CARGO_TARGET_DIR:-target}/$profile

work=$(mktemp -d /tmp/meridian-peers.XXXXXX)
declare -A pid=() port=()

die() {
  echo "dns_vs_peers.sh: $*" >&2
  exit 1
}

stop_servers() {
  local status=$? server
  for server in "${!pid[@]}"; do
    kill "${pid[$server]}" 2>/dev/null || true
    wait "${pid[$server]}" 2>/dev/null || true
  done
  if [ "$status" -ne 0 ] || [ -n "${KEEP_WORK:-}" ]; then
    echo "dns_vs_peers.sh: logs and data kept in $work" >&2
  else
    rm -rf "$work"
  fi
}
trap stop_servers EXIT
trap 'exit 130' INT TERM

installed() { # debian-package
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

# --- what the run needs ----------------------------------------------------------------------
if $smoke; then
  for tool in dnsperf dig taskset; do
    command -v "$tool" >/dev/null ||
      die "$tool is not installed (apt-get install dnsperf bind9-dnsutils); --smoke installs nothing"
  done
else
  # dig checks every server's answers before the load; knot-module-geoip is Knot's mod-geoip
  # (a separate package in Debian, /usr/lib/<arch>/knot/modules-3.x/geoip.so).
  missing=()
  for package in dnsperf gdnsd knot knot-module-geoip bind9-dnsutils; do
    installed "$package" || missing+=("$package")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    [ "$(id -u)" -eq 0 ] || die "missing Debian packages: ${missing[*]} (run as root to install them)"
    echo "dns_vs_peers.sh: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
fi
[ "$(nproc)" -ge 2 ] || die "needs 2 CPUs: the servers on CPU 0, dnsperf on CPU 1"

echo "dns_vs_peers.sh: building ($profile)"
if [ "$profile" = release ]; then
  nice cargo build --quiet --release --bin meridian --example dns_peers
else
  nice cargo build --quiet --bin meridian --example dns_peers
fi
meridian_bin="$target/meridian"
prepare="$target/examples/dns_peers"

# --- one GeoIP database and the query files --------------------------------------------------
if [ -n "${GEOIP_DB:-}" ] && ! $smoke; then
  [ -f "$GEOIP_DB" ] || die "GEOIP_DB=$GEOIP_DB is not a file"
  db=$(realpath "$GEOIP_DB")
elif $smoke; then
  db="$work/synthetic-city.mmdb"
  "$prepare" write-db "$db" --smoke
else
  db="$work/synthetic-city.mmdb"
  "$prepare" write-db "$db"
fi
"$prepare" queries "$db" "$work" "$ecs_subnets"
printf 'www.example.test A\n' >"$work/static.txt"
printf 'api.example.test A\n' >"$work/gslb.txt"

workload_options() { # workload -> sets the array `options`
  case $1 in
    static-udp) options=(-e -d "$work/static.txt") ;;
    gslb-udp) options=(-e -d "$work/gslb.txt") ;;
    gslb-ecs-udp) options=(-B -d "$work/gslb-ecs.blob") ;;
    static-tcp) options=(-m tcp -e -d "$work/static.txt") ;;
    *) die "unknown workload $1" ;;
  esac
}

# --- servers ---------------------------------------------------------------------------------
# A port neither bound nor chosen already, for UDP and TCP on 127.0.0.1. Ports in /proc/net
# are hexadecimal.
free_port() {
  local candidate hex
  for _ in $(seq 1 200); do
    candidate=$((20000 + RANDOM % 40000))
    hex=$(printf ':%04X ' "$candidate")
    if ! cat /proc/net/tcp /proc/net/tcp6 /proc/net/udp /proc/net/udp6 2>/dev/null |
      awk '{ print $2 " " }' | grep -q "$hex" &&
      ! printf '%s\n' "${port[@]:-}" | grep -qx "$candidate"; then
      echo "$candidate"
      return
    fi
  done
  die "no free port found"
}

render() { # template output sed-expressions...
  local template=$1 output=$2
  shift 2
  sed "$@" "$template" >"$output"
}

launch() { # server log command...
  local server=$1 log=$2
  shift 2
  taskset -c 0 "$@" >"$log" 2>&1 &
  pid[$server]=$!
}

start_meridian() {
  local ready="$work/meridian/ready.json"
  mkdir -p "$work/meridian"
  # The bundled config as it ships (every GSLB name, the override, `why` on), with absolute
  # paths, the shared database and no metrics listener; the port comes from the ready file.
  render zones/meridian.toml "$work/meridian/meridian.toml" \
    -e "s|^database = .*|database = \"$db\"|" \
    -e "s|^file = \"example.test.zone\"|file = \"$PWD/zones/example.test.zone\"|" \
    -e "s|^metrics_listen = .*|# metrics_listen: none while load testing|"
  launch meridian "$work/meridian/server.log" "$meridian_bin" dns \
    --config "$work/meridian/meridian.toml" --listen 127.0.0.1:0 --ready-file "$ready"
  for _ in $(seq 1 12000); do # at most 120 s
    if [ -f "$ready" ]; then
      port[meridian]=$(tr -d ' \n' <"$ready" | grep -o '"udp":\["127.0.0.1:[0-9]*' |
        grep -o '[0-9]*$' || true)
      [ -n "${port[meridian]}" ] && return
    fi
    kill -0 "${pid[meridian]}" 2>/dev/null || break
    sleep 0.01
  done
  cat "$work/meridian/server.log" >&2
  die "meridian did not start"
}

start_gdnsd() {
  local dir="$work/gdnsd"
  mkdir -p "$dir/zones"
  port[gdnsd]=$(free_port)
  render benches/peers/gdnsd.config "$dir/config" \
    -e "s|@PORT@|${port[gdnsd]}|" -e "s|@RUN_DIR@|$dir/run|" \
    -e "s|@STATE_DIR@|$dir/state|" -e "s|@GEOIP_DB@|$db|"
  # gdnsd 3.8 has no HTTPS or SVCB records: those two lines are left out of its copy.
  {
    awk '!/[[:space:]](HTTPS|SVCB)[[:space:]]/' zones/example.test.zone
    echo 'api 30 DYNA geoip!api'
  } >"$dir/zones/example.test"
  launch gdnsd "$dir/server.log" gdnsd -c "$dir" start
}

start_knot() {
  local dir="$work/knot"
  mkdir -p "$dir/run" "$dir/db"
  port[knot]=$(free_port)
  render benches/peers/knot.conf "$dir/knot.conf" \
    -e "s|@PORT@|${port[knot]}|" -e "s|@KNOT_DIR@|$dir|g" -e "s|@GEOIP_DB@|$db|" \
    -e "s|@ZONE_FILE@|$dir/example.test.zone|"
  cp benches/peers/knot-geo.yaml "$dir/geo.yaml"
  # The zone's own api record is mod-geoip's fallback: clients no view matches get us-east.
  {
    cat zones/example.test.zone
    echo 'api 30 IN A 192.0.2.10'
  } >"$dir/example.test.zone"
  launch knot "$dir/server.log" knotd -c "$dir/knot.conf"
}

# dig's answer, or nothing: one try, short timeout (a server still loading does not answer).
ask() { # server [dig options...]
  local server=$1
  shift
  dig +short +tries=1 +time=1 -p "${port[$server]}" @127.0.0.1 "$@" 2>/dev/null | head -1 || true
}

wait_ready() { # server
  local server=$1
  for _ in $(seq 1 600); do # at most ~120 s
    [ "$(ask "$server" www.example.test A)" = 192.0.2.80 ] && return
    kill -0 "${pid[$server]}" 2>/dev/null || break
    sleep 0.2
  done
  cat "$work/$server/server.log" >&2
  die "$server did not answer on 127.0.0.1:${port[$server]}"
}

# The same answers from every server, checked before any load: static over UDP and TCP, the
# default region, and one ECS subnet per continent the database has.
check_answers() { # server
  local server=$1 subnet continent expected got
  expect_answer() { # expected what dig-options...
    local expected=$1 what=$2
    shift 2
    got=$(ask "$server" "$@")
    [ "$got" = "$expected" ] || die "$server answered '$got' for $what, expected $expected"
  }
  expect_answer 192.0.2.80 "www A" www.example.test A
  expect_answer 192.0.2.80 "www A over TCP" +tcp www.example.test A
  expect_answer 192.0.2.10 "api A without ECS" api.example.test A
  while read -r subnet continent expected; do
    expect_answer "$expected" "api A with ECS $subnet ($continent)" "+subnet=$subnet" api.example.test A
  done <"$work/ecs-checks.txt"
}

# --- measuring -------------------------------------------------------------------------------
cpu_ns() { # pid
  # %.0f, not %d: mawk's %d stops at 2^31 ns.
  cat /proc/"$1"/task/*/schedstat | awk '{ sum += $1 } END { printf "%.0f", sum }'
}

# CPU 0's busy and total time in clock ticks (/proc/stat: user nice system idle iowait irq
# softirq steal). Busy time not charged to the server is what else ran on its core (other
# processes, the hypervisor's steal, interrupts outside the server's context): the noise gauge.
cpu0_ticks() {
  awk '$1 == "cpu0" { print $2 + $3 + $4 + $7 + $8 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat
}
clock_ticks=$(getconf CLK_TCK)

# One dnsperf run; appends a row to results.tsv: server workload kind completed lost noerror
# qps mean_us cpu_us p99_us response_bytes other_cpu0_pct
measure() { # server workload kind seconds [dnsperf options...]
  local server=$1 workload=$2 kind=$3 run_seconds=$4 out before after p99 busy0 total0 busy1 total1
  shift 4
  workload_options "$workload"
  out="$work/dnsperf-$server-$workload-$kind-$((++run_count)).txt"
  read -r busy0 total0 < <(cpu0_ticks)
  before=$(cpu_ns "${pid[$server]}")
  taskset -c 1 dnsperf -s 127.0.0.1 -p "${port[$server]}" -l "$run_seconds" "${options[@]}" "$@" \
    >"$out" 2>&1 || die "dnsperf failed: $(tail -3 "$out")"
  after=$(cpu_ns "${pid[$server]}")
  read -r busy1 total1 < <(cpu0_ticks)
  # With -v every response is a line "> RCODE ... latency"; T and I mark timeouts/interrupts.
  p99=$(awk '$1 == ">" && $2 != "T" && $2 != "I" { print $NF }' "$out" | sort -g |
    awk '{ v[NR] = $1 } END { if (NR) { i = int(NR * 0.99 + 0.999999); printf "%.1f", v[i] * 1e6 } else print "-" }')
  awk -v server="$server" -v workload="$workload" -v kind="$kind" -v cpu=$((after - before)) \
    -v p99="$p99" -v busy=$((busy1 - busy0)) -v total=$((total1 - total0)) -v hz="$clock_ticks" '
    /Queries completed:/   { done = $3 }
    /Queries lost:/        { lost = $3 }
    /Response codes:/      { for (i = 3; i < NF; i++) if ($i == "NOERROR") noerror = $(i + 1) }
    /Queries per second:/  { qps = $4 }
    /Average Latency/      { mean = $4 }
    /Average packet size:/ { bytes = $NF }
    END {
      other = total ? (busy - cpu * hz / 1e9) / total * 100 : 0
      printf "%s\t%s\t%s\t%d\t%d\t%d\t%.0f\t%.1f\t%s\t%s\t%s\t%.0f\n", server, workload, kind,
        done, lost, noerror, qps, mean * 1e6, done ? sprintf("%.2f", cpu / done / 1000) : "-",
        p99, bytes, other < 0 ? 0 : other
    }' "$out" >>"$work/results.tsv"
}
run_count=0

has_server() { case " $servers " in *" $1 "*) return 0 ;; esac; return 1; }

machine() {
  echo "machine: $(nproc) CPUs ($(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)), Linux $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
  local versions="dnsperf $(dpkg-query -W -f='${Version}' dnsperf 2>/dev/null || echo '?')"
  if has_server gdnsd; then versions+=", gdnsd $(dpkg-query -W -f='${Version}' gdnsd)"; fi
  if has_server knot; then versions+=", knot $(dpkg-query -W -f='${Version}' knot)"; fi
  echo "versions: $versions, meridian $profile build of this tree"
}

# --- the run ---------------------------------------------------------------------------------
for server in $servers; do
  case $server in
    meridian | gdnsd | knot) "start_$server" ;;
    *) die "unknown server $server (SERVERS may hold meridian, gdnsd, knot)" ;;
  esac
done
for server in $servers; do
  wait_ready "$server"
  check_answers "$server"
  echo "$server: pid ${pid[$server]} on 127.0.0.1:${port[$server]}, $(ls /proc/"${pid[$server]}"/task | wc -l) threads, RSS $(awk '/^VmRSS:/ { printf "%.1f MiB", $2 / 1024 }' /proc/"${pid[$server]}"/status), answers checked"
done
machine
echo "runs: $repetitions x ${seconds} s unpaced + ${latency_seconds} s paced at $latency_qps q/s, per workload and server; work in $work"

if ! $smoke; then
  echo "warming up (1 s per workload and server, not recorded)"
  for workload in $workloads; do
    for server in $servers; do
      measure "$server" "$workload" warm-up 1
    done
  done
  : >"$work/results.tsv"
fi
for rep in $(seq 1 "$repetitions"); do
  echo "repetition $rep of $repetitions"
  for workload in $workloads; do
    for server in $servers; do
      measure "$server" "$workload" load "$seconds" "${load_limit[@]}"
    done
  done
done
echo "paced runs"
for workload in $workloads; do
  for server in $servers; do
    measure "$server" "$workload" paced "$latency_seconds" -Q "$latency_qps" -v
  done
done

# --- the table -------------------------------------------------------------------------------
# Medians per (workload, server) of the load runs; the paced run's mean and p99; lost summed.
summary="$work/summary.tsv"
awk -F'\t' -v order="$workloads" -v servers="$servers" '
  function median(list,   n, a, i, j, t) {
    n = split(list, a, " ")
    for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] + 0 > t + 0; j--) a[j + 1] = a[j]; a[j + 1] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
  }
  {
    key = $2 SUBSEP $1
    lost[key] += $5
    if ($3 == "load") { qps[key] = qps[key] " " $7; mean[key] = mean[key] " " $8; cpu[key] = cpu[key] " " $9; bytes[key] = $11; other[key] = other[key] " " $12 }
    if ($3 == "paced") { pmean[key] = pmean[key] " " $8; p99[key] = p99[key] " " $10 }
  }
  END {
    nw = split(order, w, " "); ns = split(servers, s, " ")
    for (i = 1; i <= nw; i++) for (j = 1; j <= ns; j++) {
      key = w[i] SUBSEP s[j]
      printf "%s\t%s\t%.0f\t%.2f\t%.0f\t%.0f\t%.0f\t%d\t%s\t%.0f\n", w[i], s[j], median(qps[key]),
        median(cpu[key]), median(mean[key]), median(pmean[key]), median(p99[key]), lost[key], bytes[key],
        median(other[key])
    }
  }' "$work/results.tsv" >"$summary"

echo
echo "| workload | server | q/s | server CPU µs/query | mean latency µs (unpaced) | mean latency µs (paced) | p99 latency µs (paced) | lost | response bytes | CPU 0 busy outside the server % |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
awk -F'\t' '{ printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, $6, $7, $8, $9, $10 }' "$summary"

ratio_columns=()
if has_server meridian; then
  for peer in knot gdnsd; do
    if has_server "$peer"; then ratio_columns+=("$peer"); fi
  done
fi
if [ "${#ratio_columns[@]}" -gt 0 ]; then
  echo
  header="| workload |"
  rule="| --- |"
  for peer in "${ratio_columns[@]}"; do
    header+=" q/s meridian/$peer | CPU/query meridian/$peer | p99 meridian/$peer |"
    rule+=" --- | --- | --- |"
  done
  echo "$header"
  echo "$rule"
  for workload in $workloads; do
    awk -F'\t' -v workload="$workload" -v peers="${ratio_columns[*]}" '
      $1 == workload { qps[$2] = $3; cpu[$2] = $4; p99[$2] = $7 }
      function ratio(a, b) { return b > 0 ? sprintf("%.2f", a / b) : "-" }
      END {
        line = "| " workload " |"
        n = split(peers, p, " ")
        for (i = 1; i <= n; i++)
          line = line " " ratio(qps["meridian"], qps[p[i]]) " | " ratio(cpu["meridian"], cpu[p[i]]) " | " ratio(p99["meridian"], p99[p[i]]) " |"
        print line
      }' "$summary"
  done
fi

# --- verdict ---------------------------------------------------------------------------------
# Every run must have answered, and only with NOERROR; the smoke mode also allows no loss.
awk -F'\t' -v smoke="$smoke" '
  $4 == 0 { printf "dns_vs_peers.sh: %s %s (%s): no answers\n", $1, $2, $3; bad = 1 }
  $4 > 0 && $6 != $4 { printf "dns_vs_peers.sh: %s %s (%s): %d of %d answers not NOERROR\n", $1, $2, $3, $4 - $6, $4; bad = 1 }
  smoke == "true" && $5 > 0 { printf "dns_vs_peers.sh: %s %s (%s): %d queries lost\n", $1, $2, $3, $5; bad = 1 }
  END { exit bad }' "$work/results.tsv" >&2 || die "some workloads were not answered as they should be"
echo
echo "dns_vs_peers.sh: every workload answered on every server ($(wc -l <"$work/results.tsv") runs)"
