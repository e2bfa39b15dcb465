#!/usr/bin/env python3
"""Checks the deployment files against each other and against the server, without Docker.

    scripts/check-deploy.py [--metrics FILE] [--no-compose-cli]

Reads otel-collector.yaml, docker-compose.yml, Dockerfile, .dockerignore, deploy/prometheus.yml,
the Grafana provisioning files and deploy/grafana/dashboards/*.json, and checks:

- the collector config: OTLP receiver with gRPC and HTTP bound to 0.0.0.0, memory_limiter and
  batch processors, an OTLP/gRPC exporter to a compose service with insecure TLS, a debug
  exporter, and a traces pipeline that uses only defined components, memory_limiter first;
- the compose file: the five services, their published ports (the collector's OTLP ports on the
  host, not Jaeger's), bind mounts of files that exist, the OTLP endpoint pointing at the
  collector's service and receiver port, waypoint's flags defined by the CLI in src/, Prometheus
  with exemplar storage and the mounted config, Grafana with the mounted provisioning;
- Prometheus: the waypoint scrape target is the compose service and port, a format with
  exemplars first (protobuf with native histograms kept, or OpenMetrics);
- Grafana: datasource uids and URLs, exemplar links to a defined datasource, the dashboards
  provider path is where compose mounts the dashboards;
- the dashboards: valid JSON, unique panel ids, every metric in a PromQL query one of the
  server's metric names (histograms with _bucket/_sum/_count), latency histograms queried with
  exemplars on, the core metrics all shown (the rest reported as info);
- the Dockerfile: multi-stage, runs scripts/fetch-smollm2.sh, builds and copies the binary and
  the model, non-root, EXPOSE of the served port, CMD's model path is where the model lands;
- with --metrics FILE (a saved /metrics response): every metric the dashboards use is exposed;
- `docker compose config -q` (or `docker-compose`), when a compose CLI is installed.

Prints `error:`, `warning:` and `info:` lines; exits 1 when there is any error.
Needs Python 3 and PyYAML.
"""

import argparse
import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

try:
    import yaml
except ImportError:  # pragma: no cover
    print("error: PyYAML is needed (pip install pyyaml, or apt-get install python3-yaml)", file=sys.stderr)
    sys.exit(2)

ROOT = Path(__file__).resolve().parent.parent

# The metrics `waypoint serve` exposes on /metrics, all labelled model_name.
HISTOGRAMS = {
    "waypoint_time_to_first_token_seconds",
    "waypoint_inter_token_latency_seconds",
    "waypoint_e2e_request_latency_seconds",
    "waypoint_request_queue_time_seconds",
    "waypoint_request_prefill_time_seconds",
    "waypoint_request_decode_time_seconds",
    "waypoint_request_prompt_tokens",
    "waypoint_request_generation_tokens",
}
GAUGES = {
    "waypoint_num_requests_running",
    "waypoint_num_requests_waiting",
    "waypoint_kv_cache_usage_ratio",
    "waypoint_journeys_in_memory",
    "waypoint_journey_bytes_in_memory",
}
COUNTERS = {
    "waypoint_num_preemptions_total",
    "waypoint_prompt_tokens_total",
    "waypoint_generation_tokens_total",
    "waypoint_request_success_total",
    "waypoint_prefix_cache_queries_total",
    "waypoint_prefix_cache_hits_total",
    "waypoint_telemetry_dropped_spans_total",
    "waypoint_request_rejected_total",
    "waypoint_journeys_total",
}
KNOWN_METRICS = HISTOGRAMS | GAUGES | COUNTERS
# The dashboard may leave these out (reported as info).
OPTIONAL_METRICS = {
    "waypoint_request_prefill_time_seconds",
    "waypoint_request_decode_time_seconds",
    "waypoint_request_prompt_tokens",
    "waypoint_request_generation_tokens",
    "waypoint_journey_bytes_in_memory",
    "waypoint_request_rejected_total",
}
# The latency histograms a dashboard must show with exemplars.
LATENCY_WITH_EXEMPLARS = {
    "waypoint_time_to_first_token_seconds",
    "waypoint_inter_token_latency_seconds",
    "waypoint_e2e_request_latency_seconds",
}
KNOWN_LABELS = {"model_name", "finished_reason", "le", "reason", "decision"}

REQUIRED_SERVICES = ["waypoint", "otel-collector", "jaeger", "prometheus", "grafana"]
# service -> container ports that must be published on the host.
REQUIRED_PUBLISHED = {
    "waypoint": {8000},
    "otel-collector": {4317, 4318},
    "jaeger": {16686},
    "prometheus": {9090},
    "grafana": {3000},
}
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

PROMQL_WORDS = {
    # aggregation operators and keywords
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile", "limitk", "limit_ratio", "by", "without", "on", "ignoring",
    "group_left", "group_right", "and", "or", "unless", "bool", "offset", "inf", "nan",
    "atan2", "start", "end",
    # functions
    "abs", "absent", "absent_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min",
    "day_of_month", "day_of_week", "day_of_year", "days_in_month", "delta", "deriv", "exp",
    "floor", "histogram_avg", "histogram_count", "histogram_fraction", "histogram_quantile",
    "histogram_stddev", "histogram_stdvar", "histogram_sum", "holt_winters",
    "double_exponential_smoothing", "hour", "idelta", "increase", "irate", "label_join",
    "label_replace", "ln", "log2", "log10", "minute", "month", "predict_linear", "rate",
    "resets", "round", "scalar", "sgn", "sort", "sort_desc", "sort_by_label",
    "sort_by_label_desc", "sqrt", "time", "timestamp", "vector", "year", "avg_over_time",
    "min_over_time", "max_over_time", "sum_over_time", "count_over_time", "quantile_over_time",
    "stddev_over_time", "stdvar_over_time", "last_over_time", "present_over_time",
    "mad_over_time", "acos", "acosh", "asin", "asinh", "atan", "atanh", "cos", "cosh", "sin",
    "sinh", "tan", "tanh", "deg", "rad", "pi",
}


class Report:
    def __init__(self):
        self.errors = 0
        self.warnings = 0

    def error(self, where, message):
        self.errors += 1
        print(f"error: {where}: {message}")

    def warning(self, where, message):
        self.warnings += 1
        print(f"warning: {where}: {message}")

    def info(self, where, message):
        print(f"info: {where}: {message}")


def rel(path):
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


ENV_REFERENCE = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def with_env_defaults(value):
    """The collector's (and Jaeger's) `${env:VAR:-default}`, as compose sees it: the default."""
    if isinstance(value, dict):
        return {key: with_env_defaults(item) for key, item in value.items()}
    if isinstance(value, list):
        return [with_env_defaults(item) for item in value]
    if isinstance(value, str):
        return ENV_REFERENCE.sub(lambda match: match.group(2) or "", value)
    return value


def load_yaml(report, path, env_defaults=False):
    where = rel(path)
    if not path.is_file():
        report.error(where, "missing")
        return None
    try:
        data = yaml.safe_load(path.read_text())
        if env_defaults:
            data = with_env_defaults(data)
    except yaml.YAMLError as error:
        report.error(where, f"not valid YAML: {error}")
        return None
    if not isinstance(data, dict):
        report.error(where, "expected a mapping at the top level")
        return None
    return data


def host_port(endpoint):
    """`host:port`, `http://host:port/path` -> (host, port or None)."""
    endpoint = str(endpoint).strip()
    if "://" not in endpoint:
        endpoint = "//" + endpoint
    parsed = urlparse(endpoint)
    try:
        port = parsed.port
    except ValueError:
        port = None
    return parsed.hostname, port


def component_type(name):
    return str(name).split("/", 1)[0]


# ---------------------------------------------------------------------------------------------
# otel-collector.yaml


def check_collector(report, config, services):
    """Returns the OTLP receiver ports {'grpc': port, 'http': port}."""
    where = "otel-collector.yaml"
    ports = {}
    if config is None:
        return ports
    receivers = config.get("receivers") or {}
    processors = config.get("processors") or {}
    exporters = config.get("exporters") or {}
    extensions = config.get("extensions") or {}

    otlp = receivers.get("otlp")
    protocols = (otlp or {}).get("protocols") or {}
    if otlp is None:
        report.error(where, "receivers: no `otlp` receiver")
    for protocol, default_port in (("grpc", 4317), ("http", 4318)):
        if protocol not in protocols:
            report.error(where, f"receivers.otlp.protocols: no `{protocol}`")
            continue
        endpoint = (protocols[protocol] or {}).get("endpoint")
        if not endpoint:
            report.error(
                where,
                f"receivers.otlp.protocols.{protocol}: no endpoint; the collector's default binds "
                "localhost, unreachable from other containers (use 0.0.0.0:PORT)",
            )
            ports[protocol] = default_port
            continue
        host, port = host_port(endpoint)
        if host not in ("0.0.0.0", "::", "") and not str(endpoint).startswith("${"):
            report.error(where, f"receivers.otlp.protocols.{protocol}.endpoint {endpoint!r} is not bound to 0.0.0.0")
        if port != default_port:
            report.warning(where, f"receivers.otlp.protocols.{protocol} listens on {port}, not the OTLP default {default_port}")
        ports[protocol] = port

    limiter = processors.get("memory_limiter")
    if "memory_limiter" not in processors:
        report.error(where, "processors: no `memory_limiter`")
    else:
        limiter = limiter or {}
        if "check_interval" not in limiter:
            report.error(where, "processors.memory_limiter: no check_interval")
        if not ({"limit_mib", "limit_percentage"} & set(limiter)):
            report.error(where, "processors.memory_limiter: no limit_mib or limit_percentage")
    if "batch" not in processors:
        report.error(where, "processors: no `batch`")

    otlp_exporters = [name for name in exporters if component_type(name) in ("otlp", "otlp_grpc")]
    if not otlp_exporters:
        report.error(where, "exporters: no OTLP/gRPC exporter (`otlp_grpc/jaeger`, or `otlp/jaeger` before collector 0.144)")
    for name in otlp_exporters:
        exporter = exporters[name] or {}
        host, port = host_port(exporter.get("endpoint", ""))
        if not host:
            report.error(where, f"exporters.{name}: no endpoint")
        elif services is not None and host not in services:
            report.error(where, f"exporters.{name}.endpoint host {host!r} is not a compose service ({', '.join(services)})")
        if port != 4317:
            report.warning(where, f"exporters.{name}.endpoint port {port} is not Jaeger's OTLP/gRPC port 4317")
        if not ((exporter.get("tls") or {}).get("insecure") is True):
            report.error(where, f"exporters.{name}: tls.insecure must be true (Jaeger's OTLP port has no TLS here)")
    if not any(component_type(name) == "debug" for name in exporters):
        report.error(where, "exporters: no `debug` exporter")

    service = config.get("service") or {}
    for name in service.get("extensions") or []:
        if name not in extensions:
            report.error(where, f"service.extensions: `{name}` is not defined under extensions")
    pipelines = service.get("pipelines") or {}
    traces = pipelines.get("traces")
    if traces is None:
        report.error(where, "service.pipelines: no `traces` pipeline")
        return ports
    defined = {"receivers": receivers, "processors": processors, "exporters": exporters}
    used = {kind: set() for kind in defined}
    for pipeline_name, pipeline in pipelines.items():
        for kind, components in defined.items():
            for name in (pipeline or {}).get(kind) or []:
                used[kind].add(name)
                if name not in components:
                    report.error(where, f"service.pipelines.{pipeline_name}.{kind}: `{name}` is not defined under {kind}")
    trace_processors = traces.get("processors") or []
    if not trace_processors or trace_processors[0] != "memory_limiter":
        report.error(where, "service.pipelines.traces.processors: memory_limiter must come first")
    if "batch" not in trace_processors:
        report.error(where, "service.pipelines.traces.processors: no batch")
    if "otlp" not in (traces.get("receivers") or []):
        report.error(where, "service.pipelines.traces.receivers: no otlp")
    trace_exporters = traces.get("exporters") or []
    if not any(name in otlp_exporters for name in trace_exporters):
        report.error(where, "service.pipelines.traces.exporters: no OTLP exporter to Jaeger")
    if not any(component_type(name) == "debug" for name in trace_exporters):
        report.error(where, "service.pipelines.traces.exporters: no debug exporter")
    for kind, components in defined.items():
        for name in components:
            if name not in used[kind]:
                report.info(where, f"{kind}.{name} is defined but in no pipeline")
    return ports


# ---------------------------------------------------------------------------------------------
# docker-compose.yml


def service_ports(report, name, service):
    """[(host_ip, published, target)] of a service's `ports`."""
    result = []
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            published = entry.get("published")
            result.append((entry.get("host_ip"), int(published) if published else None, int(entry["target"])))
            continue
        text = str(entry).split("/", 1)[0]
        parts = text.rsplit(":", 2)
        try:
            if len(parts) == 1:
                result.append((None, None, int(parts[0])))
            elif len(parts) == 2:
                result.append((None, int(parts[0]), int(parts[1])))
            else:
                result.append((parts[0], int(parts[1]), int(parts[2])))
        except ValueError:
            report.error("docker-compose.yml", f"services.{name}.ports: cannot read {entry!r} (ranges are not supported here)")
    return result


def service_mounts(report, name, service):
    """{container path: repo-relative source} of a service's bind mounts; checks the sources exist."""
    mounts = {}
    for entry in service.get("volumes") or []:
        if isinstance(entry, dict):
            source, target = entry.get("source"), entry.get("target")
            if entry.get("type") != "bind":
                continue
        else:
            parts = str(entry).split(":")
            if len(parts) < 2:
                continue
            source, target = parts[0], parts[1]
        if not source or not (source.startswith(".") or source.startswith("/")):
            continue  # a named volume
        path = (ROOT / source).resolve()
        if not path.exists():
            report.error("docker-compose.yml", f"services.{name}.volumes: {source} does not exist in the repository")
        mounts[target] = rel(path)
    return mounts


def service_command(service):
    command = service.get("command")
    if command is None:
        return None
    if isinstance(command, str):
        return shlex.split(command)
    return [str(part) for part in command]


def service_environment(service):
    env = service.get("environment") or {}
    if isinstance(env, list):
        result = {}
        for item in env:
            key, _, value = str(item).partition("=")
            result[key] = value
        return result
    return {str(key): ("" if value is None else str(value)) for key, value in env.items()}


def depends_on(service):
    deps = service.get("depends_on") or []
    return set(deps) if isinstance(deps, list) else set(deps.keys())


def flag_value(args, flag):
    """The value of `--flag VALUE` or `--flag=VALUE` in an argument list, else None."""
    for index, arg in enumerate(args):
        if arg == flag and index + 1 < len(args):
            return args[index + 1]
        if arg.startswith(flag + "="):
            return arg[len(flag) + 1:]
    return None


def cli_long_flags():
    """The long flags clap derives from `#[arg(long ...)]` fields in src/ (a textual scan)."""
    flags = set()
    attribute = re.compile(r"#\[arg\((?P<body>[^\]]*)\)\]", re.S)
    field = re.compile(r"^\s*(?:pub(?:\([^)]*\))?\s+)?(?P<name>[a-z_][a-z0-9_]*)\s*:", re.M)
    for path in list((ROOT / "src").rglob("*.rs")):
        text = path.read_text(errors="replace")
        for match in attribute.finditer(text):
            body = match.group("body")
            if not re.search(r"\blong\b", body):
                continue
            explicit = re.search(r'\blong\s*=\s*"([^"]+)"', body)
            if explicit:
                flags.add("--" + explicit.group(1))
                continue
            rest = text[match.end():]
            found = field.search(rest)
            if found:
                flags.add("--" + found.group("name").replace("_", "-"))
    return flags


def check_waypoint_flags(report, where, args, cli_flags):
    if not cli_flags:
        report.warning(where, "found no clap flags in src/: waypoint's flags not checked")
        return
    for arg in args:
        if arg.startswith("--"):
            flag = arg.split("=", 1)[0]
            if flag not in cli_flags:
                report.error(where, f"{flag}: `waypoint serve` defines no such flag in src/ (the container would exit at start)")


def check_compose(report, compose, collector_ports, model_path, cli_flags):
    """Returns (services, context dict) for the later checks."""
    where = "docker-compose.yml"
    context = {"mounts": {}}
    if compose is None:
        return None, context
    services = compose.get("services") or {}
    for name in REQUIRED_SERVICES:
        if name not in services:
            report.error(where, f"services: no `{name}`")

    published_by = {}
    for name, service in services.items():
        service = service or {}
        ports = service_ports(report, name, service)
        for _, published, target in ports:
            if published is not None:
                if published in published_by:
                    report.error(where, f"host port {published} is published by both {published_by[published]} and {name}")
                published_by[published] = name
        targets = {target for _, published, target in ports if published is not None}
        for port in sorted(REQUIRED_PUBLISHED.get(name, set()) - targets):
            report.error(where, f"services.{name}.ports: container port {port} is not published")
        context["mounts"][name] = service_mounts(report, name, service)
        image = service.get("image")
        if image and "build" not in service:
            tag = image.rsplit("/", 1)[-1]
            if ":" not in tag or tag.endswith(":latest"):
                report.warning(where, f"services.{name}.image {image!r} is not pinned to a version")
        build = service.get("build")
        if build is not None:
            build_context = build if isinstance(build, str) else build.get("context", ".")
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
            if not (ROOT / build_context / dockerfile).is_file():
                report.error(where, f"services.{name}.build: {Path(build_context) / dockerfile} does not exist")

    jaeger = services.get("jaeger") or {}
    for _, published, target in service_ports(report, "jaeger", jaeger):
        if published is not None and target in (4317, 4318):
            report.error(where, f"services.jaeger publishes its OTLP port {target} on the host; the collector owns 4317/4318 there")

    # waypoint
    waypoint = services.get("waypoint") or {}
    env = service_environment(waypoint)
    endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    protocol = env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    if protocol not in ("grpc", "http/protobuf"):
        report.error(where, f"services.waypoint: OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is not grpc or http/protobuf")
    if not endpoint:
        report.error(where, "services.waypoint: no OTEL_EXPORTER_OTLP_TRACES_ENDPOINT (or OTEL_EXPORTER_OTLP_ENDPOINT)")
    else:
        host, port = host_port(endpoint)
        collector_services = [
            name for name, mounts in context["mounts"].items()
            if "otel-collector.yaml" in mounts.values()
        ]
        if host not in services:
            report.error(where, f"services.waypoint: the OTLP endpoint {endpoint} names {host!r}, not a compose service")
        elif host not in collector_services:
            report.error(where, f"services.waypoint: the OTLP endpoint {endpoint} names {host!r}, which does not mount otel-collector.yaml")
        expected = collector_ports.get("grpc" if protocol == "grpc" else "http")
        if expected and port != expected:
            report.error(where, f"services.waypoint: the OTLP endpoint port {port} is not the collector's {protocol} receiver port {expected}")
        if not urlparse(endpoint).scheme.startswith("http"):
            report.error(where, f"services.waypoint: the OTLP endpoint {endpoint} needs an http:// scheme")
        if host not in depends_on(waypoint):
            report.error(where, f"services.waypoint: should depend_on {host}")
    if not env.get("OTEL_SERVICE_NAME"):
        report.error(where, "services.waypoint: no OTEL_SERVICE_NAME")
    args = service_command(waypoint)
    if args is not None:
        if not args or args[0] != "serve":
            report.error(where, "services.waypoint.command: must start with `serve`")
        check_waypoint_flags(report, "docker-compose.yml services.waypoint.command", args[1:], cli_flags)
        if flag_value(args, "--host") != "0.0.0.0":
            report.error(where, "services.waypoint.command: --host must be 0.0.0.0 in a container")
        if model_path and flag_value(args, "--model") != model_path:
            report.error(where, f"services.waypoint.command: --model {flag_value(args, '--model')} is not the image's model {model_path}")
        if "--enable-journey-tracing" not in args:
            report.error(where, "services.waypoint.command: no --enable-journey-tracing")
        port = flag_value(args, "--port")
        context["waypoint_port"] = int(port) if port and port.isdigit() else 8000
    else:
        context["waypoint_port"] = None  # the image's CMD decides

    # otel-collector
    collector = services.get("otel-collector") or {}
    mounts = context["mounts"].get("otel-collector", {})
    targets = [target for target, source in mounts.items() if source == "otel-collector.yaml"]
    if not targets:
        report.error(where, "services.otel-collector: does not mount ./otel-collector.yaml")
    else:
        command = service_command(collector) or []
        config_arg = flag_value(command, "--config")
        image = str(collector.get("image", ""))
        default = "/etc/otelcol-contrib/config.yaml" if "contrib" in image else "/etc/otelcol/config.yaml"
        config_path = config_arg or default
        if config_path not in targets:
            report.error(where, f"services.otel-collector: reads {config_path} but otel-collector.yaml is mounted at {targets[0]}")
    if "jaeger" not in depends_on(collector):
        report.error(where, "services.otel-collector: should depend_on jaeger")

    # prometheus
    prometheus = services.get("prometheus") or {}
    command = service_command(prometheus) or []
    features = ",".join(arg.split("=", 1)[1] for arg in command if arg.startswith("--enable-feature="))
    if "exemplar-storage" not in features.split(","):
        report.error(where, "services.prometheus.command: no --enable-feature=exemplar-storage (exemplars would be dropped)")
    config_file = flag_value(command, "--config.file") or "/etc/prometheus/prometheus.yml"
    mounts = context["mounts"].get("prometheus", {})
    if mounts.get(config_file) != "deploy/prometheus.yml":
        report.error(where, f"services.prometheus: --config.file {config_file} is not where deploy/prometheus.yml is mounted")

    # grafana
    grafana = services.get("grafana") or {}
    mounts = context["mounts"].get("grafana", {})
    if mounts.get("/etc/grafana/provisioning") != "deploy/grafana/provisioning":
        report.error(where, "services.grafana: deploy/grafana/provisioning is not mounted at /etc/grafana/provisioning")
    context["grafana_dashboards_mount"] = [t for t, s in mounts.items() if s == "deploy/grafana/dashboards"]
    if not context["grafana_dashboards_mount"]:
        report.error(where, "services.grafana: deploy/grafana/dashboards is not mounted")
    genv = service_environment(grafana)
    if genv.get("GF_AUTH_ANONYMOUS_ENABLED", "").lower() != "true":
        report.warning(where, "services.grafana: anonymous access is off; the demo expects no login")
    home = genv.get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home and not any(home.startswith(m.rstrip("/") + "/") and (ROOT / "deploy/grafana/dashboards" / home[len(m.rstrip("/")) + 1:]).is_file()
                        for m in context["grafana_dashboards_mount"]):
        report.error(where, f"services.grafana: GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH {home} is no mounted dashboard")
    if not {"prometheus"} <= depends_on(grafana):
        report.warning(where, "services.grafana: should depend_on prometheus")
    return list(services), context


# ---------------------------------------------------------------------------------------------
# deploy/prometheus.yml


def job_targets(report, where, job, targets_dir):
    """A job's targets: its static ones, and those of its file_sd files, which compose mounts
    from deploy/prometheus-targets/ into the `targets/` directory beside prometheus.yml."""
    targets = [t for static in job.get("static_configs") or [] for t in static.get("targets") or []]
    for sd in job.get("file_sd_configs") or []:
        for pattern in sd.get("files") or []:
            if not str(pattern).startswith("targets/"):
                report.error(where, f"job {job.get('job_name')}: file_sd file {pattern} is not under targets/")
                continue
            matches = sorted(targets_dir.glob(str(pattern)[len("targets/"):]))
            if not matches:
                report.error(where, f"job {job.get('job_name')}: no {rel(targets_dir)}/{pattern[len('targets/'):]} for compose")
            for path in matches:
                try:
                    groups = json.loads(path.read_text())
                except ValueError as error:
                    report.error(rel(path), f"not valid JSON: {error}")
                    continue
                targets += [t for group in groups for t in group.get("targets") or []]
    return targets


def check_prometheus(report, config, services, waypoint_port):
    where = "deploy/prometheus.yml"
    if config is None:
        return
    found = False
    for job in config.get("scrape_configs") or []:
        name = job.get("job_name")
        for target in job_targets(report, where, job, ROOT / "deploy/prometheus-targets"):
            host, port = host_port(target)
            if services is not None and host not in services and host not in ("localhost", "127.0.0.1"):
                report.error(where, f"job {name}: target {target} is not a compose service")
            if host != "waypoint":
                continue
            found = True
            if waypoint_port and port != waypoint_port:
                report.error(where, f"job {name}: target {target} is not waypoint's port {waypoint_port}")
            if job.get("metrics_path", "/metrics") != "/metrics":
                report.error(where, f"job {name}: metrics_path must be /metrics")
            protocols = job.get("scrape_protocols") or (config.get("global") or {}).get("scrape_protocols")
            # Exemplars come in OpenMetrics and in protobuf; native histograms in protobuf only.
            if protocols and str(protocols[0]) not in ("PrometheusProto", "OpenMetricsText1.0.0"):
                report.error(where, f"job {name}: scrape_protocols must start with PrometheusProto or "
                                    "OpenMetricsText1.0.0 (the formats that carry exemplars)")
            if protocols and str(protocols[0]) == "PrometheusProto" and not job.get("scrape_native_histograms"):
                report.error(where, f"job {name}: PrometheusProto first without scrape_native_histograms: "
                                    "the native histograms would be dropped")
    if not found:
        report.error(where, "no scrape target waypoint:PORT")


def check_jaeger(report, config, compose):
    """deploy/jaeger.yaml: Jaeger v2 with an OTLP/gRPC receiver on 4317 (where the collector
    exports), the query API on 16686, memory storage; compose mounts it and runs it."""
    where = "deploy/jaeger.yaml"
    if config is None:
        return
    receivers = config.get("receivers") or {}
    grpc = (((receivers.get("otlp") or {}).get("protocols") or {}).get("grpc") or {}).get("endpoint")
    if host_port(grpc or "")[1] != 4317:
        report.error(where, f"receivers.otlp.protocols.grpc.endpoint {grpc!r}: the collector exports to port 4317")
    query = (config.get("extensions") or {}).get("jaeger_query") or {}
    if host_port(((query.get("http") or {}).get("endpoint")) or "")[1] != 16686:
        report.error(where, "extensions.jaeger_query.http.endpoint: the UI and query API belong on 16686")
    service = config.get("service") or {}
    for extension in ("jaeger_storage", "jaeger_query"):
        if extension not in (service.get("extensions") or []):
            report.error(where, f"service.extensions: no {extension}")
    pipeline = ((service.get("pipelines") or {}).get("traces")) or {}
    if "otlp" not in (pipeline.get("receivers") or []):
        report.error(where, "service.pipelines.traces: no otlp receiver")
    jaeger = ((compose or {}).get("services") or {}).get("jaeger") or {}
    mounted = any("deploy/jaeger.yaml" in str(volume) for volume in jaeger.get("volumes") or [])
    command = " ".join(str(part) for part in (jaeger.get("command") or []))
    if not mounted or "--config" not in command:
        report.error("docker-compose.yml", "services.jaeger: must mount deploy/jaeger.yaml and run it with --config")


# ---------------------------------------------------------------------------------------------
# Grafana provisioning


def check_grafana_provisioning(report, datasources, dashboards, services, dashboards_mounts):
    """Returns the set of datasource uids."""
    where = "deploy/grafana/provisioning/datasources/datasources.yml"
    uids = {}
    expected = {"prometheus": ("prometheus", "prometheus", 9090), "jaeger": ("jaeger", "jaeger", 16686)}
    if datasources is not None:
        for source in datasources.get("datasources") or []:
            uid = source.get("uid")
            if not uid:
                report.error(where, f"datasource {source.get('name')!r} has no uid")
                continue
            if uid in uids:
                report.error(where, f"uid {uid!r} is used twice")
            uids[uid] = source
            host, port = host_port(source.get("url", ""))
            if services is not None and host not in services:
                report.error(where, f"datasource {uid}: url host {host!r} is not a compose service")
            if uid in expected:
                kind, service, default_port = expected[uid]
                if source.get("type") != kind:
                    report.error(where, f"datasource {uid}: type must be {kind}")
                if host != service or port != default_port:
                    report.error(where, f"datasource {uid}: url must be http://{service}:{default_port}")
        for uid in expected:
            if uid not in uids:
                report.error(where, f"no datasource with uid {uid!r}")
        destinations = ((uids.get("prometheus") or {}).get("jsonData") or {}).get("exemplarTraceIdDestinations") or []
        if not destinations:
            report.error(where, "datasource prometheus: no jsonData.exemplarTraceIdDestinations (exemplars would not link to traces)")
        for destination in destinations:
            if destination.get("datasourceUid") not in uids:
                report.error(where, f"exemplarTraceIdDestinations: datasourceUid {destination.get('datasourceUid')!r} is not a datasource")
            if destination.get("name") != "trace_id":
                report.warning(where, f"exemplarTraceIdDestinations: name {destination.get('name')!r}; waypoint's exemplars carry `trace_id`")

    where = "deploy/grafana/provisioning/dashboards/dashboards.yml"
    if dashboards is not None:
        providers = dashboards.get("providers") or []
        if not providers:
            report.error(where, "no providers")
        for provider in providers:
            path = (provider.get("options") or {}).get("path")
            if provider.get("type", "file") != "file":
                continue
            if path not in dashboards_mounts:
                report.error(where, f"provider {provider.get('name')!r}: path {path} is not where compose mounts deploy/grafana/dashboards ({', '.join(dashboards_mounts) or 'nowhere'})")
    return set(uids)


# ---------------------------------------------------------------------------------------------
# Dashboards and PromQL


def promql_names(expr):
    """(metric names, label names) in a PromQL expression, as far as a light scan can tell."""
    labels = set()
    text = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`', '""', expr)
    text = re.sub(r"\$\{[^}]*\}|\$\w+", " ", text)  # Grafana variables
    for body in re.findall(r"\{([^}]*)\}", text):
        labels.update(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", body))
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    for keyword, body in re.findall(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", text):
        labels.update(re.findall(r"[a-zA-Z_][a-zA-Z0-9_]*", body))
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"(?<![\w.])\d+(?:\.\d*)?(?:[eE][-+]?\d+)?(?:ms|[smhdwy])?", " ", text)
    metrics = set()
    for name in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", text):
        if name.lower() not in PROMQL_WORDS:
            metrics.add(name)
    return metrics, labels


def metric_family(name):
    """The known metric `name` belongs to, or None."""
    if name in GAUGES or name in COUNTERS:
        return name
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and name[: -len(suffix)] in HISTOGRAMS:
            return name[: -len(suffix)]
    return None


def walk_panels(panels):
    for panel in panels or []:
        yield panel
        yield from walk_panels(panel.get("panels"))


def check_dashboards(report, datasource_uids, dashboards_dir):
    """Returns the set of metric sample names the dashboards query."""
    used_names = set()
    files = sorted(dashboards_dir.glob("*.json"))
    if not files:
        report.error(rel(dashboards_dir), "no dashboard JSON files")
    for path in files:
        where = rel(path)
        try:
            dashboard = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            report.error(where, f"not valid JSON: {error}")
            continue
        for key in ("uid", "title", "schemaVersion", "panels"):
            if key not in dashboard:
                report.error(where, f"no `{key}`")
        families = set()
        ids = {}

        def check_datasource(context, datasource):
            if isinstance(datasource, dict):
                uid = datasource.get("uid")
                if uid and not uid.startswith("-- ") and uid != "grafana" and not uid.startswith("$") and datasource_uids and uid not in datasource_uids:
                    report.error(where, f"{context}: datasource uid {uid!r} is not provisioned")

        def check_expr(context, expr):
            metrics, labels = promql_names(expr)
            if not metrics:
                report.warning(where, f"{context}: no metric found in {expr!r}")
            for name in sorted(metrics):
                family = metric_family(name)
                if family is None:
                    hint = ""
                    if name.endswith(("_bucket", "_sum", "_count")):
                        hint = " (only histograms have _bucket/_sum/_count series)"
                    elif name + "_total" in COUNTERS:
                        hint = f" (the counter is {name}_total)"
                    report.error(where, f"{context}: {name} is not a metric waypoint exposes{hint}")
                    continue
                families.add(family)
                used_names.add(name)
            for label in sorted(labels - KNOWN_LABELS):
                report.error(where, f"{context}: label {label!r} is not one of waypoint's labels ({', '.join(sorted(KNOWN_LABELS))})")
            return metrics

        for variable in (dashboard.get("templating") or {}).get("list") or []:
            check_datasource(f"variable {variable.get('name')}", variable.get("datasource"))
            if variable.get("type") != "query":
                continue
            query = variable.get("query")
            if isinstance(query, dict):
                query = query.get("query", "")
            query = str(query or "")
            match = re.match(r"\s*label_values\(\s*(.*?)\s*,\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)\s*$", query)
            if match:
                check_expr(f"variable {variable.get('name')}", match.group(1))
                if match.group(2) not in KNOWN_LABELS:
                    report.error(where, f"variable {variable.get('name')}: label {match.group(2)!r} is not one of waypoint's labels")
            elif query:
                check_expr(f"variable {variable.get('name')}", re.sub(r"^\s*query_result\((.*)\)\s*$", r"\1", query))

        for panel in walk_panels(dashboard.get("panels")):
            pid = panel.get("id")
            title = panel.get("title", "")
            context = f"panel {pid} {title!r}"
            if pid is None:
                report.error(where, f"panel {title!r} has no id")
            elif pid in ids:
                report.error(where, f"panel id {pid} is used by both {ids[pid]!r} and {title!r}")
            else:
                ids[pid] = title
            if panel.get("type") == "row":
                continue
            grid = panel.get("gridPos") or {}
            if not all(key in grid for key in ("x", "y", "w", "h")):
                report.error(where, f"{context}: gridPos needs x, y, w and h")
            check_datasource(context, panel.get("datasource"))
            targets = panel.get("targets") or []
            if not targets:
                report.warning(where, f"{context}: no targets")
            refs = set()
            for target in targets:
                ref = target.get("refId")
                if ref in refs:
                    report.error(where, f"{context}: refId {ref} is used twice")
                refs.add(ref)
                check_datasource(f"{context} target {ref}", target.get("datasource"))
                expr = target.get("expr")
                if not expr:
                    report.error(where, f"{context} target {ref}: no expr")
                    continue
                metrics = check_expr(f"{context} target {ref}", expr)
                latency = sorted(m for m in metrics if m.endswith("_seconds_bucket") and metric_family(m))
                if latency and target.get("exemplar") is not True:
                    report.error(where, f"{context} target {ref}: queries {latency[0]} but has no \"exemplar\": true (no links to traces)")
        for family in sorted(LATENCY_WITH_EXEMPLARS - families):
            report.error(where, f"no panel shows {family}")
        if families:
            missing = KNOWN_METRICS - families
            for family in sorted(missing - OPTIONAL_METRICS):
                report.error(where, f"no panel shows {family}")
            if missing & OPTIONAL_METRICS:
                report.info(where, f"not shown (optional): {', '.join(sorted(missing & OPTIONAL_METRICS))}")
            if not missing:
                report.info(where, f"all {len(KNOWN_METRICS)} waypoint metrics are shown")
    return used_names


def check_metrics_file(report, path, used_names):
    """Every series the dashboards query appears in a saved /metrics response."""
    where = str(path)
    try:
        text = Path(path).read_text()
    except OSError as error:
        report.error(where, f"cannot read: {error}")
        return
    samples, declared = set(), {}
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("#"):
            parts = line.split()
            if len(parts) >= 4 and parts[1] == "TYPE":
                declared[parts[2]] = parts[3]
            continue
        match = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)", line)
        if match:
            samples.add(match.group(1))
    if not samples:
        report.error(where, "no samples: is this a /metrics response?")
        return
    for name in sorted(used_names):
        if name in samples:
            continue
        family = metric_family(name) or name
        # OpenMetrics declares counters without their _total suffix.
        base = family[: -len("_total")] if family.endswith("_total") else family
        if family in declared or base in declared:
            report.warning(where, f"{name}: declared but no sample yet (a labelled series appears once observed)")
        else:
            report.error(where, f"{name}: the dashboards query it but the server does not expose it")
    exposed = {n for n in samples | set(declared) if n.startswith("waypoint_")}

    def known(name):
        if name.endswith("_created"):  # OpenMetrics creation timestamps
            name = name[: -len("_created")]
        return (metric_family(name) is not None or name in HISTOGRAMS
                or name + "_total" in COUNTERS or metric_family(name + "_total") is not None)

    unknown = sorted(n for n in exposed if not known(n))
    if unknown:
        report.info(where, f"exposed but not in this script's list: {', '.join(unknown)}")


# ---------------------------------------------------------------------------------------------
# Dockerfile and .dockerignore


def dockerfile_instructions(text):
    """[(INSTRUCTION, arguments)] with line continuations joined and comments dropped."""
    instructions, current = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        keyword, _, rest = current.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        current = ""
    return instructions


def exec_form(arguments):
    try:
        value = json.loads(arguments)
        if isinstance(value, list):
            return [str(v) for v in value]
    except json.JSONDecodeError:
        pass
    return shlex.split(arguments)


def check_dockerfile(report, cli_flags):
    """Returns (model path in the image, stage names copied from)."""
    where = "Dockerfile"
    path = ROOT / "Dockerfile"
    if not path.is_file():
        report.error(where, "missing")
        return None
    instructions = dockerfile_instructions(path.read_text())
    froms = [(i, args) for i, (keyword, args) in enumerate(instructions) if keyword == "FROM"]
    if len(froms) < 2:
        report.error(where, f"not multi-stage: {len(froms)} FROM line(s)")
        return None
    stages = []
    for index, args in froms:
        parts = args.split()
        image = [p for p in parts if not p.startswith("--")][0]
        name = parts[parts.index("AS") + 1] if "AS" in parts else (parts[parts.index("as") + 1] if "as" in parts else None)
        stages.append((index, image, name))
    builder_image = stages[0][1]
    if not re.match(r"(docker\.io/)?(library/)?rust:", builder_image):
        report.warning(where, f"the build stage starts from {builder_image}, not an official rust image")
    runtime_start, runtime_image, _ = stages[-1]
    if "slim" not in runtime_image and "distroless" not in runtime_image:
        report.warning(where, f"the runtime stage starts from {runtime_image}, not a slim image")
    build = instructions[: runtime_start]
    runtime = instructions[runtime_start + 1:]
    build_runs = " ; ".join(args for keyword, args in build if keyword == "RUN")
    env = {}
    for keyword, args in build:
        if keyword in ("ENV", "ARG"):
            for key, value in re.findall(r"(\w+)=(\S+)", args):
                env[key] = value
    if "scripts/fetch-smollm2.sh" not in build_runs:
        report.error(where, "the build stage does not run scripts/fetch-smollm2.sh")
    if not re.search(r"cargo build\b[^;&]*--release", build_runs) or not re.search(r"--bin[ =]waypoint(?![\w-])", build_runs):
        report.error(where, "the build stage does not run `cargo build --release ... --bin waypoint`")
    elif "--locked" not in build_runs:
        report.warning(where, "cargo build without --locked")
    match = re.search(r"WAYPOINT_MODEL_CACHE=(\S+)\s+(?:\S+/)?fetch-smollm2\.sh", build_runs)
    model_dir = match.group(1) if match else env.get("WAYPOINT_MODEL_CACHE")
    if not model_dir:
        report.error(where, "fetch-smollm2.sh runs without WAYPOINT_MODEL_CACHE: the model lands in the build user's ~/.cache")
        model_dir = "/root/.cache/waypoint/models"
    built_model = f"{model_dir.rstrip('/')}/{MODEL_FILE}"

    stage_names = {name for _, _, name in stages[:-1] if name} | {str(i) for i in range(len(stages) - 1)}
    copies = []
    for keyword, args in runtime:
        if keyword == "COPY":
            match = re.match(r"--from=(\S+)\s+(.*)", args)
            if match:
                parts = exec_form(match.group(2))
                copies.append((match.group(1), parts[:-1], parts[-1]))
    if not copies:
        report.error(where, "the runtime stage copies nothing from the build stage")
    for stage, _, _ in copies:
        if stage not in stage_names:
            report.error(where, f"COPY --from={stage}: no such build stage")
    binary = [c for c in copies if any(s.endswith("/waypoint") or s.endswith("release/waypoint") for s in c[1])]
    if not binary:
        report.error(where, "the runtime stage does not copy the waypoint binary")
    model_dest = None
    for _, sources, dest in copies:
        for source in sources:
            if source.rstrip("/") in (built_model, model_dir.rstrip("/")):
                model_dest = dest if dest.endswith(MODEL_FILE) else f"{dest.rstrip('/')}/{MODEL_FILE}"
    if model_dest is None:
        report.error(where, f"the runtime stage does not copy the model ({built_model})")

    users = [args for keyword, args in runtime if keyword == "USER"]
    if not users or users[-1].split(":")[0] in ("root", "0"):
        report.error(where, "the runtime stage runs as root (no non-root USER)")
    exposed = {p.split("/")[0] for keyword, args in runtime if keyword == "EXPOSE" for p in args.split()}
    if "8000" not in exposed:
        report.error(where, "no EXPOSE 8000")
    if not any(keyword == "HEALTHCHECK" for keyword, _ in runtime):
        report.info(where, "no HEALTHCHECK")
    entrypoint = [exec_form(args) for keyword, args in runtime if keyword == "ENTRYPOINT"]
    cmd = [exec_form(args) for keyword, args in runtime if keyword == "CMD"]
    argv = (entrypoint[-1] if entrypoint else []) + (cmd[-1] if cmd else [])
    if not argv:
        report.error(where, "no CMD or ENTRYPOINT")
        return model_dest
    if "serve" not in argv:
        report.error(where, "CMD/ENTRYPOINT does not run `waypoint serve`")
    else:
        serve_args = argv[argv.index("serve") + 1:]
        check_waypoint_flags(report, "Dockerfile CMD", serve_args, cli_flags)
        if flag_value(serve_args, "--host") != "0.0.0.0":
            report.error(where, "CMD: --host must be 0.0.0.0 in a container")
        if flag_value(serve_args, "--port") not in (None, "8000"):
            report.error(where, "CMD: --port is not the exposed 8000")
        model = flag_value(serve_args, "--model")
        if model_dest and model != model_dest:
            report.error(where, f"CMD: --model {model} is not where the model is copied ({model_dest})")
        if "--enable-journey-tracing" not in serve_args:
            report.warning(where, "CMD: no --enable-journey-tracing")
    return model_dest


def check_dockerignore(report):
    where = ".dockerignore"
    path = ROOT / ".dockerignore"
    if not path.is_file():
        report.error(where, "missing: the build context would include target/ (gigabytes)")
        return
    patterns = [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]

    def ignored(name):
        result = False
        for pattern in patterns:
            negate = pattern.startswith("!")
            pattern = pattern.lstrip("!").strip("/")
            parts = name.split("/")
            prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
            if any(fnmatch.fnmatch(p, pattern) or fnmatch.fnmatch(p, pattern.replace("**/", "")) for p in prefixes):
                result = not negate
        return result

    for needed in ("Cargo.toml", "Cargo.lock", "src/main.rs", "layers/Cargo.toml", "scripts/fetch-smollm2.sh"):
        if ignored(needed):
            report.error(where, f"excludes {needed}, which the build needs")
    for heavy in ("target/release/waypoint", ".git/HEAD"):
        if not ignored(heavy):
            report.warning(where, f"does not exclude {heavy.split('/')[0]}/")


# ---------------------------------------------------------------------------------------------
# docker compose config


def check_compose_cli(report):
    where = "docker compose config"
    candidates = []
    if shutil.which("docker"):
        candidates.append(["docker", "compose"])
    if shutil.which("docker-compose"):
        candidates.append(["docker-compose"])
    for base in candidates:
        try:
            probe = subprocess.run(base + ["version"], cwd=ROOT, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode != 0:
            continue
        result = subprocess.run(base + ["-f", "docker-compose.yml", "config", "-q"], cwd=ROOT,
                                capture_output=True, text=True, timeout=120)
        name = " ".join(base)
        if result.returncode != 0:
            report.error(where, f"`{name} -f docker-compose.yml config -q` failed:\n{result.stderr.strip() or result.stdout.strip()}")
        else:
            report.info(where, f"`{name} -f docker-compose.yml config -q` passed")
        return
    report.info(where, "skipped: no docker compose CLI (neither `docker compose` nor `docker-compose`)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--metrics", metavar="FILE", help="a saved /metrics response: every dashboard metric must be in it")
    parser.add_argument("--no-compose-cli", action="store_true", help="do not run `docker compose config`")
    args = parser.parse_args()

    report = Report()
    cli_flags = cli_long_flags()
    collector = load_yaml(report, ROOT / "otel-collector.yaml", env_defaults=True)
    compose = load_yaml(report, ROOT / "docker-compose.yml")
    services = list((compose or {}).get("services") or {}) or None
    collector_ports = check_collector(report, collector, services)
    model_path = check_dockerfile(report, cli_flags)
    check_dockerignore(report)
    services, context = check_compose(report, compose, collector_ports, model_path, cli_flags)
    check_prometheus(report, load_yaml(report, ROOT / "deploy/prometheus.yml"), services, context.get("waypoint_port") or 8000)
    check_jaeger(report, load_yaml(report, ROOT / "deploy/jaeger.yaml", env_defaults=True), compose)
    uids = check_grafana_provisioning(
        report,
        load_yaml(report, ROOT / "deploy/grafana/provisioning/datasources/datasources.yml"),
        load_yaml(report, ROOT / "deploy/grafana/provisioning/dashboards/dashboards.yml"),
        services,
        context.get("grafana_dashboards_mount") or [],
    )
    used = check_dashboards(report, uids, ROOT / "deploy/grafana/dashboards")
    if args.metrics:
        check_metrics_file(report, args.metrics, used)
    if not args.no_compose_cli:
        check_compose_cli(report)

    status = "FAILED" if report.errors else "ok"
    print(f"check-deploy: {status}: {report.errors} error(s), {report.warnings} warning(s)")
    return 1 if report.errors else 0


if __name__ == "__main__":
    sys.exit(main())
