#!/usr/bin/env bash
# The telemetry stack of docker-compose.yml as local processes, for machines without Docker:
# an OpenTelemetry Collector, Jaeger v2 and Prometheus, built from their Go modules at pinned
# releases and run from this repository's own config files.
#
#   scripts/telemetry-stack.sh build    build the three programs (skipped when already built)
#   scripts/telemetry-stack.sh up       build what is missing, start all three, wait until ready
#   scripts/telemetry-stack.sh down     stop them
#   scripts/telemetry-stack.sh status   say what runs, and where
#
# Then: waypoint serve ... --enable-journey-tracing --otlp-traces-endpoint http://127.0.0.1:4317
# (docs/OBSERVABILITY.md, "Without Docker").
#
# Settings (environment; the defaults are compose's host ports):
#   STACK_HOST=127.0.0.1             address every program binds to
#   STACK_OTLP_GRPC_PORT=4317        the collector's OTLP/gRPC receiver (what waypoint sends to)
#   STACK_OTLP_HTTP_PORT=4318        the collector's OTLP/HTTP receiver
#   STACK_COLLECTOR_METRICS_PORT=8888  the collector's own metrics
#   STACK_JAEGER_UI_PORT=16686       Jaeger's UI and HTTP query API
#   STACK_JAEGER_OTLP_PORT=14317     Jaeger's OTLP/gRPC receiver (the collector exports there)
#   STACK_JAEGER_PORT_BASE=14318     first of four more Jaeger ports: OTLP/HTTP, query gRPC,
#                                    health check, own metrics
#   STACK_PROMETHEUS_PORT=9090       Prometheus' UI and HTTP API
#   STACK_WAYPOINT_METRICS=127.0.0.1:8000  where Prometheus scrapes waypoint's /metrics
#   STACK_DIR=~/.cache/waypoint/stack  pid files, logs (STACK_DIR/logs) and Prometheus' data
#   STACK_BIN=~/.cache/waypoint/bin    where `build` puts the programs
#   STACK_READY_TIMEOUT=120          seconds `up` waits for each program before giving up
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# The pinned releases. Jaeger's module v1.75.0 is the Jaeger 2.12.0 release; Prometheus'
# module v0.316.0 is Prometheus 3.16.0. The collector is deploy/otelcol/ (core v0.165.0).
JAEGER_MODULE=github.com/jaegertracing/jaeger
JAEGER_VERSION=v1.75.0
JAEGER_RELEASE=v2.12.0
PROMETHEUS_MODULE=github.com/prometheus/prometheus
PROMETHEUS_VERSION=v0.316.0
PROMETHEUS_RELEASE=3.16.0
COLLECTOR_VERSION=v0.165.0

HOST=${STACK_HOST:-127.0.0.1}
OTLP_GRPC_PORT=${STACK_OTLP_GRPC_PORT:-4317}
OTLP_HTTP_PORT=${STACK_OTLP_HTTP_PORT:-4318}
COLLECTOR_METRICS_PORT=${STACK_COLLECTOR_METRICS_PORT:-8888}
JAEGER_UI_PORT=${STACK_JAEGER_UI_PORT:-16686}
JAEGER_OTLP_PORT=${STACK_JAEGER_OTLP_PORT:-14317}
JAEGER_PORT_BASE=${STACK_JAEGER_PORT_BASE:-14318}
PROMETHEUS_PORT=${STACK_PROMETHEUS_PORT:-9090}
WAYPOINT_METRICS=${STACK_WAYPOINT_METRICS:-127.0.0.1:8000}
STATE=${STACK_DIR:-$HOME/.cache/waypoint/stack}
BIN=${STACK_BIN:-$HOME/.cache/waypoint/bin}
READY_TIMEOUT=${STACK_READY_TIMEOUT:-120}

JAEGER_BIN=$BIN/jaeger-$JAEGER_VERSION
COLLECTOR_BIN=$BIN/otelcol-waypoint-$COLLECTOR_VERSION
PROMETHEUS_BIN=$BIN/prometheus-$PROMETHEUS_VERSION

say() { printf 'telemetry-stack: %s\n' "$*" >&2; }
die() {
  say "error: $*"
  exit 1
}

need() {
  command -v "$1" >/dev/null 2>&1 || die "$1 is needed ($2)"
}

# --- build -------------------------------------------------------------------------------

# build_step NAME OUTPUT LOG COMMAND...: runs COMMAND unless OUTPUT exists; on failure names
# the program and shows the end of its build log.
build_step() {
  local name=$1 output=$2 log=$3
  shift 3
  if [[ -x $output ]]; then
    say "$name: already built ($output)"
    return
  fi
  say "$name: building (log: $log)"
  local started=$SECONDS
  if ! "$@" >"$log" 2>&1; then
    tail -n 30 "$log" >&2 || true
    die "building $name failed (full log: $log)"
  fi
  [[ -x $output ]] || die "building $name produced no $output (log: $log)"
  say "$name: built in $((SECONDS - started)) s"
}

# Jaeger's go.mod has a replace directive, which `go install module@version` refuses, so it
# is built as the main module from its own downloaded source, as its release is.
build_jaeger() {
  local source work
  source=$(go mod download -json "$JAEGER_MODULE@$JAEGER_VERSION" |
    python3 -c 'import json, sys; d = json.load(sys.stdin); print(d.get("Dir") or sys.exit(d.get("Error", "no Dir")))')
  work=$(mktemp -d)
  cp -r "$source/." "$work"
  chmod -R u+w "$work"
  local status=0
  (cd "$work" && CGO_ENABLED=0 go build -trimpath \
    -ldflags "-X $JAEGER_MODULE/internal/version.latestVersion=$JAEGER_RELEASE" \
    -o "$JAEGER_BIN.tmp" ./cmd/jaeger) || status=$?
  rm -rf "$work"
  ((status == 0)) || return "$status"
  mv "$JAEGER_BIN.tmp" "$JAEGER_BIN"
}

build_collector() {
  (cd "$ROOT/deploy/otelcol" && CGO_ENABLED=0 go build -trimpath -mod=readonly \
    -o "$COLLECTOR_BIN.tmp" .)
  mv "$COLLECTOR_BIN.tmp" "$COLLECTOR_BIN"
}

build_prometheus() {
  local gobin
  gobin=$(mktemp -d)
  # Without the `builtinassets` tag the web UI is not embedded; the HTTP API is all the
  # stack needs (the UI's assets take a Node build). `remove_all_sd` leaves out the cloud
  # and Kubernetes service discoveries (static and file discovery stay, which is what
  # deploy/prometheus.yml uses): a much smaller build.
  CGO_ENABLED=0 GOBIN=$gobin go install -trimpath -tags remove_all_sd \
    -ldflags "-X github.com/prometheus/common/version.Version=$PROMETHEUS_RELEASE" \
    "$PROMETHEUS_MODULE/cmd/prometheus@$PROMETHEUS_VERSION" || {
    rm -rf "$gobin"
    return 1
  }
  mv "$gobin/prometheus" "$PROMETHEUS_BIN"
  rm -rf "$gobin"
}

cmd_build() {
  need go "Go 1.26 or newer, https://go.dev/dl/"
  need python3 "to read go's JSON output"
  mkdir -p "$BIN" "$STATE/logs"
  # Toolchains newer than the local one are not fetched: the build fails clearly instead.
  export GOTOOLCHAIN=local GOFLAGS=${GOFLAGS:-}
  build_step "OpenTelemetry Collector $COLLECTOR_VERSION (deploy/otelcol)" "$COLLECTOR_BIN" \
    "$STATE/logs/build-collector.log" build_collector
  build_step "Jaeger $JAEGER_RELEASE ($JAEGER_MODULE@$JAEGER_VERSION)" "$JAEGER_BIN" \
    "$STATE/logs/build-jaeger.log" build_jaeger
  build_step "Prometheus $PROMETHEUS_RELEASE ($PROMETHEUS_MODULE@$PROMETHEUS_VERSION)" \
    "$PROMETHEUS_BIN" "$STATE/logs/build-prometheus.log" build_prometheus
}

# --- up / down ---------------------------------------------------------------------------

port_in_use() {
  (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null
}

pid_alive() {
  [[ -f $STATE/$1.pid ]] || return 1
  local pid state
  pid=$(cat "$STATE/$1.pid")
  kill -0 "$pid" 2>/dev/null || return 1
  # A killed program that nobody has reaped yet (a zombie: its parent exited, and whoever
  # adopted it has not collected it) answers `kill -0` but is not running.
  state=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1) || return 0
  [[ $state != Z && $state != X ]]
}

# start NAME COMMAND...: starts COMMAND in its own session, logging to STATE/logs/NAME.log.
start() {
  local name=$1
  shift
  setsid "$@" >"$STATE/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$STATE/$name.pid"
}

# http_ok URL: whether URL answers 2xx within 2 s (curl, or Python where curl is missing).
http_ok() {
  if command -v curl >/dev/null 2>&1; then
    curl -fsS -o /dev/null --max-time 2 "$1" 2>/dev/null
  else
    python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' "$1" 2>/dev/null
  fi
}

# wait_ready NAME URL: polls URL until it answers 2xx, at most READY_TIMEOUT seconds.
wait_ready() {
  local name=$1 url=$2 deadline=$((SECONDS + READY_TIMEOUT))
  until http_ok "$url"; do
    if ! pid_alive "$name"; then
      tail -n 30 "$STATE/logs/$name.log" >&2 || true
      die "$name exited during start-up (log: $STATE/logs/$name.log)"
    fi
    if ((SECONDS >= deadline)); then
      tail -n 30 "$STATE/logs/$name.log" >&2 || true
      die "$name not ready at $url after ${READY_TIMEOUT}s (log: $STATE/logs/$name.log)"
    fi
    sleep 0.5
  done
}

# wait_port NAME PORT: waits until PORT accepts connections, at most READY_TIMEOUT seconds.
wait_port() {
  local name=$1 port=$2 deadline=$((SECONDS + READY_TIMEOUT))
  until port_in_use "$port"; do
    pid_alive "$name" || die "$name exited during start-up (log: $STATE/logs/$name.log)"
    ((SECONDS < deadline)) || die "$name not listening on $HOST:$port after ${READY_TIMEOUT}s"
    sleep 0.2
  done
}

# ports_free NAME PORT...: fails, naming the port, if another program holds one.
ports_free() {
  local name=$1 port
  shift
  for port in "$@"; do
    if port_in_use "$port"; then
      die "$name: port $HOST:$port is taken (another stack? '$0 down', or set STACK_*_PORT)"
    fi
  done
}

JAEGER_OTLP_HTTP_PORT=$JAEGER_PORT_BASE
JAEGER_QUERY_GRPC_PORT=$((JAEGER_PORT_BASE + 1))
JAEGER_HEALTH_PORT=$((JAEGER_PORT_BASE + 2))
JAEGER_METRICS_PORT=$((JAEGER_PORT_BASE + 3))

up_jaeger() {
  ports_free jaeger "$JAEGER_UI_PORT" "$JAEGER_OTLP_PORT" "$JAEGER_OTLP_HTTP_PORT" \
    "$JAEGER_QUERY_GRPC_PORT" "$JAEGER_HEALTH_PORT" "$JAEGER_METRICS_PORT"
  JAEGER_OTLP_GRPC_ENDPOINT=$HOST:$JAEGER_OTLP_PORT \
    JAEGER_OTLP_HTTP_ENDPOINT=$HOST:$JAEGER_OTLP_HTTP_PORT \
    JAEGER_QUERY_HTTP_ENDPOINT=$HOST:$JAEGER_UI_PORT \
    JAEGER_QUERY_GRPC_ENDPOINT=$HOST:$JAEGER_QUERY_GRPC_PORT \
    JAEGER_HEALTH_ENDPOINT=$HOST:$JAEGER_HEALTH_PORT \
    JAEGER_METRICS_HOST=$HOST JAEGER_METRICS_PORT=$JAEGER_METRICS_PORT \
    start jaeger "$JAEGER_BIN" --config "file:$ROOT/deploy/jaeger.yaml"
  wait_ready jaeger "http://$HOST:$JAEGER_UI_PORT/api/services"
  wait_port jaeger "$JAEGER_OTLP_PORT"
}

up_collector() {
  ports_free otel-collector "$OTLP_GRPC_PORT" "$OTLP_HTTP_PORT" "$COLLECTOR_METRICS_PORT"
  OTELCOL_OTLP_GRPC_ENDPOINT=$HOST:$OTLP_GRPC_PORT \
    OTELCOL_OTLP_HTTP_ENDPOINT=$HOST:$OTLP_HTTP_PORT \
    OTELCOL_JAEGER_ENDPOINT=$HOST:$JAEGER_OTLP_PORT \
    OTELCOL_METRICS_HOST=$HOST OTELCOL_METRICS_PORT=$COLLECTOR_METRICS_PORT \
    start otel-collector "$COLLECTOR_BIN" --config "file:$ROOT/otel-collector.yaml"
  wait_ready otel-collector "http://$HOST:$COLLECTOR_METRICS_PORT/metrics"
  wait_port otel-collector "$OTLP_GRPC_PORT"
  wait_port otel-collector "$OTLP_HTTP_PORT"
}

up_prometheus() {
  ports_free prometheus "$PROMETHEUS_PORT"
  mkdir -p "$STATE/prometheus/targets"
  # The same deploy/prometheus.yml as compose, linked (not copied) so that its relative
  # targets/ directory is this stack's.
  ln -sfn "$ROOT/deploy/prometheus.yml" "$STATE/prometheus/prometheus.yml"
  printf '[{"targets": ["%s"]}]\n' "$WAYPOINT_METRICS" >"$STATE/prometheus/targets/waypoint.json"
  printf '[{"targets": ["%s:%s"]}]\n' "$HOST" "$COLLECTOR_METRICS_PORT" \
    >"$STATE/prometheus/targets/otel-collector.json"
  start prometheus "$PROMETHEUS_BIN" \
    --config.file="$STATE/prometheus/prometheus.yml" \
    --storage.tsdb.path="$STATE/prometheus/data" \
    --web.listen-address="$HOST:$PROMETHEUS_PORT" \
    --enable-feature=exemplar-storage
  wait_ready prometheus "http://$HOST:$PROMETHEUS_PORT/-/ready"
}

# Starts each program that is not running already (so `up` after one crashed restarts it
# alone), Jaeger first: the collector exports to it.
cmd_up() {
  need python3 "to check that each program is ready"
  need setsid "util-linux"
  cmd_build
  mkdir -p "$STATE/logs"
  local name
  for name in jaeger otel-collector prometheus; do
    if pid_alive "$name"; then
      say "$name: already running (pid $(cat "$STATE/$name.pid"))"
      continue
    fi
    case $name in
      jaeger) up_jaeger ;;
      otel-collector) up_collector ;;
      prometheus) up_prometheus ;;
    esac
    say "$name: ready"
  done
  say "up: collector OTLP grpc $HOST:$OTLP_GRPC_PORT http $HOST:$OTLP_HTTP_PORT," \
    "Jaeger http://$HOST:$JAEGER_UI_PORT, Prometheus http://$HOST:$PROMETHEUS_PORT" \
    "(scraping $WAYPOINT_METRICS); logs in $STATE/logs"
}

# stop NAME: SIGTERM, then SIGKILL after 10 s.
stop() {
  local name=$1 pid
  [[ -f $STATE/$name.pid ]] || return 0
  pid=$(cat "$STATE/$name.pid")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + 10))
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then
      say "$name did not stop on SIGTERM within 10 s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    say "$name stopped"
  fi
  rm -f "$STATE/$name.pid"
}

cmd_down() {
  stop prometheus
  stop otel-collector
  stop jaeger
}

cmd_status() {
  local name
  for name in otel-collector jaeger prometheus; do
    if pid_alive "$name"; then
      echo "$name: running (pid $(cat "$STATE/$name.pid"), log $STATE/logs/$name.log)"
    else
      echo "$name: stopped"
    fi
  done
}

case ${1:-} in
  build) cmd_build ;;
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  -h | --help | help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' ;;
  *)
    say "usage: $0 build|up|down|status (--help for the settings)"
    exit 2
    ;;
esac
