#!/usr/bin/env python3
"""Waypoint against the real telemetry programs: the OpenTelemetry Collector, Jaeger v2 and
Prometheus, as `scripts/telemetry-stack.sh` builds and starts them from the repo's own configs.

    python3 tests/e2e/real_stack.py [--waypoint target/debug/waypoint] [--model PATH]

`.ci/run` runs it after `cargo test`. It starts the stack on ports of its own (so it never
meets a stack a developer left running), then `waypoint serve` on SmolLM2 with journey and step
tracing on, twice:

1. OTLP over gRPC at sample rate 1.0: a plain completion, a streamed chat, a child of a client
   `traceparent`, a request preempted by a small KV pool, a request the client aborts, one
   stopped by a stop string, and a 4xx. Each traced request is read back through Jaeger's HTTP
   query API (spans, parents, kinds, scopes, events in order with their attributes, timestamps
   against `ts.monotonic`), the `scheduler_steps` spans with their links, Prometheus' series,
   exemplars (each one a trace Jaeger has), every Grafana panel's PromQL, and the collector's
   own counters (nothing refused or dropped). Then the collector is killed and restarted:
   waypoint keeps serving, logs once, exports again, and `/metrics` counts what was lost.
2. OTLP over HTTP/protobuf at sample rate 0: the same kinds of request forced with
   `x-waypoint-trace: 1`, read back the same way; unforced, a preempted and an aborted one
   that tail retention must export (with their announced ids and reasons), and a fast one
   that must not appear.

Every wait is bounded; a failure names what was missing and exits 1. Needs only Python 3's
standard library and Go (for the stack's first build).
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STACK = ROOT / "scripts" / "telemetry-stack.sh"

# Ports of this test's own stack, away from the defaults a developer's stack uses.
HOST = "127.0.0.1"
PORTS = {
    "STACK_OTLP_GRPC_PORT": 24317,
    "STACK_OTLP_HTTP_PORT": 24318,
    "STACK_COLLECTOR_METRICS_PORT": 28888,
    "STACK_JAEGER_UI_PORT": 26686,
    "STACK_JAEGER_OTLP_PORT": 24319,
    "STACK_JAEGER_PORT_BASE": 24320,
    "STACK_PROMETHEUS_PORT": 29090,
}
WAYPOINT_PORT = 28000
JAEGER = f"http://{HOST}:{PORTS['STACK_JAEGER_UI_PORT']}"
PROMETHEUS = f"http://{HOST}:{PORTS['STACK_PROMETHEUS_PORT']}"
COLLECTOR_METRICS = f"http://{HOST}:{PORTS['STACK_COLLECTOR_METRICS_PORT']}/metrics"
WAYPOINT = f"http://{HOST}:{WAYPOINT_PORT}"

SERVICE = "waypoint"
API_EVENTS = ["api.ARRIVED", "api.HANDOFF_TO_CORE", "api.FIRST_RESPONSE_FROM_CORE"]
CORE_PROGRESS = [
    "scheduler.step",
    "phase",
    "prefill.done_tokens",
    "prefill.total_tokens",
    "decode.done_tokens",
    "decode.max_tokens",
    "num_preemptions",
]
WAIT = 60  # seconds any one thing may take to show up


class Failure(Exception):
    pass


def check(condition, message):
    if not condition:
        raise Failure(message)


def log(message):
    print(f"[real-stack] {message}", flush=True)


def wait_for(what, probe, timeout=WAIT, interval=0.5):
    """Calls probe() until it returns something truthy; fails naming `what` after timeout."""
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        try:
            value = probe()
            if value:
                return value
        except (OSError, ValueError, Failure) as error:
            last_error = error
        time.sleep(interval)
    raise Failure(f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last_error})" if last_error else ""))


# --- HTTP ----------------------------------------------------------------------------------


def http(method, url, body=None, headers=None, timeout=30):
    """(status, headers, body bytes); HTTP errors are answers, not exceptions."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        request.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def get_json(url, timeout=10):
    status, _, body = http("GET", url, timeout=timeout)
    if status != 200:
        raise Failure(f"GET {url}: {status} {body[:300]!r}")
    return json.loads(body)


def prometheus_query(expr, at=None):
    params = {"query": expr}
    if at is not None:
        params["time"] = str(at)
    result = get_json(f"{PROMETHEUS}/api/v1/query?" + urllib.parse.urlencode(params))
    check(result.get("status") == "success", f"Prometheus query {expr!r}: {result}")
    return result["data"]["result"]


# --- processes -----------------------------------------------------------------------------


class Stack:
    def __init__(self, state_dir):
        self.env = dict(os.environ)
        self.env.update({name: str(port) for name, port in PORTS.items()})
        self.env["STACK_HOST"] = HOST
        self.env["STACK_DIR"] = str(state_dir)
        self.env["STACK_WAYPOINT_METRICS"] = f"{HOST}:{WAYPOINT_PORT}"
        self.state_dir = Path(state_dir)

    def run(self, command, timeout):
        started = time.monotonic()
        result = subprocess.run([str(STACK), command], env=self.env, timeout=timeout)
        if result.returncode != 0:
            raise Failure(f"scripts/telemetry-stack.sh {command} failed ({result.returncode})")
        log(f"stack {command}: {time.monotonic() - started:.1f}s")

    def pid(self, name):
        return int((self.state_dir / f"{name}.pid").read_text())

    def cpu_seconds(self, name):
        fields = Path(f"/proc/{self.pid(name)}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks

    def log_text(self, name):
        return (self.state_dir / "logs" / f"{name}.log").read_text(errors="replace")


class Waypoint:
    """`waypoint serve` on SmolLM2, exporting to the stack's collector."""

    def __init__(self, binary, model, protocol, sample_rate, log_path, extra_args=()):
        endpoint = (
            f"http://{HOST}:{PORTS['STACK_OTLP_GRPC_PORT']}"
            if protocol == "grpc"
            else f"http://{HOST}:{PORTS['STACK_OTLP_HTTP_PORT']}/v1/traces"
        )
        args = [
            binary, "serve", "--model", model, "--host", HOST, "--port", str(WAYPOINT_PORT),
            "--enable-journey-tracing", "--journey-tracing-sample-rate", str(sample_rate),
            "--step-tracing-enabled", "--step-tracing-sample-rate", "1.0",
            "--step-tracing-span-window", "2",
            "--otlp-traces-endpoint", endpoint, "--otlp-protocol", protocol,
            # A small pool, so that concurrent long requests preempt each other.
            "--block-size", "4", "--num-kv-blocks", "48",
            "--max-num-batched-tokens", "16", "--max-num-seqs", "4",
            *extra_args,
        ]
        env = dict(os.environ)
        env.update({
            "RUST_LOG": "info",
            "NO_COLOR": "1",
            "OTEL_SERVICE_NAME": SERVICE,
            # Export soon after a span ends, so the test waits less.
            "OTEL_BSP_SCHEDULE_DELAY": "200",
        })
        self.log_path = log_path
        self.log_file = open(log_path, "w")
        self.process = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=self.log_file)
        self.started_ns = time.time_ns()

        def ready():
            check(self.process.poll() is None, f"waypoint exited ({self.process.returncode}): {self.log()[-2000:]}")
            status, _, _ = http("GET", f"{WAYPOINT}/health", timeout=2)
            return status == 200

        wait_for("waypoint serve to load SmolLM2", ready, timeout=180)
        self.model_name = get_json(f"{WAYPOINT}/v1/models")["data"][0]["id"]

    def log(self):
        return Path(self.log_path).read_text(errors="replace")

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise Failure("waypoint did not exit within 60 s of SIGTERM")
        self.log_file.close()
        check(self.process.returncode == 0, f"waypoint exited {self.process.returncode} after SIGTERM")


# --- requests ------------------------------------------------------------------------------


class Sent:
    """What the test sent and what came back: a request to find in Jaeger."""

    def __init__(self, name, status, headers, body, expect_core=True, parent=None, path="/v1/completions"):
        self.name = name
        self.path = path
        self.status = status
        self.trace_id = headers.get("x-trace-id") if headers else None
        self.traceparent = headers.get("traceparent") if headers else None
        self.reason = None  # the expected waypoint.retention.reason
        self.body = body
        self.expect_core = expect_core
        self.parent = parent  # (trace id, span id) of a client traceparent
        self.request_id = None
        if isinstance(body, dict):
            self.request_id = body.get("id")


def completion(name, payload, headers=None, expect_status=200, path="/v1/completions", **kwargs):
    status, response_headers, body = http("POST", WAYPOINT + path, payload, headers, timeout=120)
    check(status == expect_status, f"{name}: status {status}, expected {expect_status}: {body[:300]!r}")
    return Sent(name, status, response_headers, json.loads(body), path=path, **kwargs)


def streamed(name, path, payload, headers=None, abort_after_chunks=None):
    """A streamed request read with a raw socket, so that the test can hang up mid-stream."""
    body = json.dumps(payload).encode()
    sock = socket.create_connection((HOST, WAYPOINT_PORT), timeout=120)
    head = [f"POST {path} HTTP/1.1", f"host: {HOST}:{WAYPOINT_PORT}", "content-type: application/json",
            f"content-length: {len(body)}", "connection: close"]
    for key, value in (headers or {}).items():
        head.append(f"{key}: {value}")
    sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + body)
    reader = sock.makefile("rb")
    status_line = reader.readline().decode()
    status = int(status_line.split()[1])
    response_headers = {}
    while True:
        line = reader.readline().decode().strip()
        if not line:
            break
        key, _, value = line.partition(":")
        response_headers[key.strip().lower()] = value.strip()
    events = []
    text = b""
    while True:
        line = reader.readline()
        if not line:
            break
        text += line
        if line.startswith(b"data: "):
            events.append(line[6:].strip())
            if abort_after_chunks is not None and len(events) >= abort_after_chunks:
                break
    sock.close()
    check(status == 200, f"{name}: status {status}: {text[:300]!r}")
    chunks = [json.loads(e) for e in events if e != b"[DONE]"]
    sent = Sent(name, status, response_headers, {"chunks": chunks, "done": b"[DONE]" in events}, path=path)
    sent.request_id = chunks[0]["id"] if chunks else None
    return sent


def send_the_requests(forced):
    """The e2e request set. With `forced`, every request carries x-waypoint-trace: 1."""
    force = {"x-waypoint-trace": "1"} if forced else {}
    sent = []
    sent.append(completion("plain", {"prompt": "The capital of France is", "max_tokens": 8, "temperature": 0}, force))
    chat = streamed("streamed chat", "/v1/chat/completions", {
        "messages": [{"role": "user", "content": "Name a colour."}],
        "max_tokens": 12, "temperature": 0, "stream": True, "stream_options": {"include_usage": True},
    }, force)
    check(chat.body["done"], "streamed chat: no [DONE]")
    check(chat.body["chunks"][-1].get("usage"), "streamed chat: no usage chunk")
    sent.append(chat)

    parent_trace, parent_span = os.urandom(16).hex(), os.urandom(8).hex()
    child = completion("child of a traceparent", {"prompt": "Hello", "max_tokens": 4},
                       {**force, "traceparent": f"00-{parent_trace}-{parent_span}-01"},
                       parent=(parent_trace, parent_span))
    check(child.trace_id == parent_trace, f"child: x-trace-id {child.trace_id}, expected the parent's {parent_trace}")
    sent.append(child)

    sent.extend(preempted_pair(force))

    aborted = streamed("aborted by the client", "/v1/completions",
                       {"prompt": "Count to one hundred:", "max_tokens": 150, "ignore_eos": True, "stream": True},
                       force, abort_after_chunks=2)
    aborted.aborted = True
    sent.append(aborted)

    stop = completion("stop string", {"prompt": "The capital of France is", "max_tokens": 16,
                                      "temperature": 0, "stop": ["Paris"]}, force)
    check(stop.body["choices"][0]["finish_reason"] == "stop",
          f"stop string: finish_reason {stop.body['choices'][0]['finish_reason']}, text {stop.body['choices'][0]['text']!r}")
    sent.append(stop)

    refused = completion("a 4xx", {"prompt": "Hello", "max_tokens": 4, "temperature": -3}, force,
                         expect_status=400, expect_core=False)
    sent.append(refused)
    for s in sent:
        check(s.trace_id, f"{s.name}: no x-trace-id on a traced response")
        s.reason = "forced" if forced else ("parent" if s.parent else "head")
    return sent


def send_the_tail():
    """At rate 0, unforced: the requests tail retention must keep (a preempted one, one the
    client left), each announced with the decision open (flags 00)."""
    pair = preempted_pair({})
    for s in pair:
        s.reason = "preempted"
    # Which of the two the pool preempts depends on timing; the one that was is exported.
    kept = wait_for("Jaeger to hold the preempted one of the pair",
                    lambda: [s for s in pair if fetch_trace(s.trace_id)])
    preempted = kept[0]
    aborted = streamed("aborted by the client (tail)", "/v1/completions",
                       {"prompt": "Count to one hundred:", "max_tokens": 150, "ignore_eos": True, "stream": True},
                       abort_after_chunks=2)
    aborted.aborted = True
    aborted.reason = "aborted"
    for s in (preempted, aborted):
        check(s.traceparent and s.traceparent.endswith("-00"),
              f"{s.name}: traceparent {s.traceparent!r}, expected the decision open (-00)")
    return [preempted, aborted]


def preempted_pair(force):
    """Two long requests at once in a 48-block pool of 4 tokens: the later one is preempted."""
    results = {}

    def run(key, payload):
        results[key] = completion(f"preemption ({key})", payload, force)

    first = threading.Thread(target=run, args=("first", {"prompt": [256, 1, 2, 3], "max_tokens": 170, "ignore_eos": True}))
    first.start()
    time.sleep(0.3)
    long_prompt = [10 + i % 200 for i in range(170)]
    run("second", {"prompt": long_prompt, "max_tokens": 8, "ignore_eos": True})
    first.join(timeout=120)
    check("first" in results, "preemption: the first request did not finish")
    return [results["first"], results["second"]]


# --- Jaeger --------------------------------------------------------------------------------


def hex_id(value):
    """Jaeger's api_v3 JSON gives ids as hex; tolerate base64 (protobuf JSON) too."""
    if re.fullmatch(r"[0-9a-fA-F]+", value or ""):
        return value.lower()
    import base64
    return base64.b64decode(value).hex()


def attributes(items):
    out = {}
    for item in items or []:
        value = item.get("value", {})
        for kind in ("stringValue", "intValue", "doubleValue", "boolValue"):
            if kind in value:
                raw = value[kind]
                out[item["key"]] = int(raw) if kind == "intValue" else raw
                break
        else:
            out[item["key"]] = value
    return out


def fetch_trace(trace_id):
    """All spans of a trace from Jaeger's api_v3 (OTLP JSON), flattened with their resource and
    scope; None while Jaeger does not have it."""
    status, _, body = http("GET", f"{JAEGER}/api/v3/traces/{trace_id}", timeout=10)
    if status == 404:
        return None
    if status != 200:
        raise Failure(f"Jaeger GET /api/v3/traces/{trace_id}: {status} {body[:300]!r}")
    spans = []
    for line in body.decode().splitlines():  # a stream of JSON messages, one per chunk
        line = line.strip()
        if not line:
            continue
        message = json.loads(line)
        result = message.get("result", message)
        for resource_spans in result.get("resourceSpans", []):
            resource = attributes(resource_spans.get("resource", {}).get("attributes"))
            for scope_spans in resource_spans.get("scopeSpans", []):
                scope = scope_spans.get("scope", {})
                for span in scope_spans.get("spans", []):
                    spans.append({
                        "name": span["name"],
                        "trace_id": hex_id(span["traceId"]),
                        "span_id": hex_id(span["spanId"]),
                        "parent": hex_id(span.get("parentSpanId", "")) if span.get("parentSpanId") else None,
                        "kind": span.get("kind"),
                        "start": int(span["startTimeUnixNano"]),
                        "end": int(span["endTimeUnixNano"]),
                        "attributes": attributes(span.get("attributes")),
                        # Jaeger's storage keeps events in its own order; their time is the truth.
                        "events": sorted(({"name": e["name"], "time": int(e["timeUnixNano"]),
                                           "attributes": attributes(e.get("attributes"))}
                                          for e in span.get("events", [])), key=lambda e: e["time"]),
                        "links": [{"trace_id": hex_id(l["traceId"]), "span_id": hex_id(l["spanId"])}
                                  for l in span.get("links", [])],
                        "scope": scope.get("name"),
                        "service": resource.get("service.name"),
                    })
    return spans


def wait_trace(sent):
    """The trace of `sent`, once Jaeger has all of it (llm_core ends before llm_request)."""
    def complete():
        spans = fetch_trace(sent.trace_id)
        if not spans:
            return None
        names = sorted(s["name"] for s in spans)
        wanted = ["llm_core", "llm_request"] if sent.expect_core else ["llm_request"]
        return spans if names == wanted else None

    return wait_for(f"Jaeger to hold the trace of '{sent.name}' ({sent.trace_id})", complete)


KIND_SERVER, KIND_INTERNAL = ("SPAN_KIND_SERVER", 2), ("SPAN_KIND_INTERNAL", 1)


def check_trace(sent, spans, anchors):
    name = sent.name
    by_name = {s["name"]: s for s in spans}
    request = by_name["llm_request"]
    where = f"{name} ({sent.trace_id})"
    check(request["service"] == SERVICE, f"{where}: service.name {request['service']!r}")
    check(request["scope"] == "waypoint.api", f"{where}: llm_request scope {request['scope']!r}")
    check(request["kind"] in KIND_SERVER, f"{where}: llm_request kind {request['kind']!r}")
    if sent.parent:
        check(request["trace_id"] == sent.parent[0], f"{where}: not in the client's trace")
        check(request["parent"] == sent.parent[1], f"{where}: llm_request's parent {request['parent']} is not the client's span {sent.parent[1]}")
    else:
        check(request["parent"] is None, f"{where}: llm_request has a parent {request['parent']}")
    attrs = request["attributes"]
    if sent.reason:
        check(attrs.get("waypoint.retention.reason") == sent.reason,
              f"{where}: waypoint.retention.reason {attrs.get('waypoint.retention.reason')!r}, expected {sent.reason!r}")
    if sent.traceparent:
        announced_span = sent.traceparent.split("-")[2]
        check(request["span_id"] == announced_span,
              f"{where}: llm_request span {request['span_id']} is not the announced {announced_span}")
    check(attrs.get("http.response.status_code") in (None, sent.status) if getattr(sent, "aborted", False)
          else attrs.get("http.response.status_code") == sent.status,
          f"{where}: http.response.status_code {attrs.get('http.response.status_code')} != {sent.status}")
    if sent.request_id:
        check(attrs.get("gen_ai.request.id") == sent.request_id, f"{where}: gen_ai.request.id {attrs.get('gen_ai.request.id')} != {sent.request_id}")
        check(attrs.get("gen_ai.response.id") == sent.request_id, f"{where}: gen_ai.response.id {attrs.get('gen_ai.response.id')}")
    # OpenTelemetry's GenAI conventions.
    operation = "chat" if sent.path == "/v1/chat/completions" else "text_completion"
    check(attrs.get("gen_ai.operation.name") == operation, f"{where}: gen_ai.operation.name {attrs.get('gen_ai.operation.name')!r}")
    check(attrs.get("gen_ai.provider.name") == "waypoint", f"{where}: gen_ai.provider.name {attrs.get('gen_ai.provider.name')!r}")
    check(attrs.get("server.address") == HOST and attrs.get("server.port") == WAYPOINT_PORT,
          f"{where}: server.address/port {attrs.get('server.address')}:{attrs.get('server.port')}")
    if sent.status >= 400:
        check(attrs.get("error.type") == "invalid_request_error", f"{where}: error.type {attrs.get('error.type')!r}")
    else:
        check("error.type" not in attrs, f"{where}: error.type {attrs.get('error.type')!r} on a success")

    api_names = [e["name"] for e in request["events"]]
    check(api_names[0] == "api.ARRIVED", f"{where}: first API event {api_names}")
    if sent.expect_core:
        check(api_names[:3] == API_EVENTS, f"{where}: API events {api_names}")
    ending = "api.ABORTED" if getattr(sent, "aborted", False) else "api.DEPARTED"
    check(api_names[-1] == ending, f"{where}: API events end with {api_names[-1]}, expected {ending}")
    if ending == "api.ABORTED":
        reason = request["events"][-1]["attributes"].get("abort.reason")
        check(reason == "client_disconnected", f"{where}: abort.reason {reason!r}")
    check_event_times(where, request, anchors)

    if not sent.expect_core:
        return
    core = by_name["llm_core"]
    check(core["scope"] == "waypoint.scheduler", f"{where}: llm_core scope {core['scope']!r}")
    check(core["kind"] in KIND_INTERNAL, f"{where}: llm_core kind {core['kind']!r}")
    check(core["parent"] == request["span_id"], f"{where}: llm_core's parent is not llm_request")
    check(request["start"] <= core["start"] and core["end"] <= request["end"],
          f"{where}: llm_core is not inside llm_request")
    events = core["events"]
    names = [e["name"] for e in events]
    check(names[0] == "journey.QUEUED", f"{where}: core events {names}")
    check(names[1] == "journey.SCHEDULED" and events[1]["attributes"].get("schedule.kind") == "FIRST",
          f"{where}: core events {names}")
    check(names[-1] == "journey.FINISHED", f"{where}: core events {names}")
    for event in events:
        missing = [key for key in CORE_PROGRESS + ["event.type", "ts.monotonic"] if key not in event["attributes"]]
        check(not missing, f"{where}: {event['name']} lacks {missing}")
        check(event["name"] == "journey." + event["attributes"]["event.type"], f"{where}: {event['name']} has event.type {event['attributes']['event.type']}")
    steps = [e["attributes"]["scheduler.step"] for e in events]
    check(steps == sorted(steps), f"{where}: scheduler.step goes backwards: {steps}")
    decode = [e["attributes"]["decode.done_tokens"] for e in events]
    check(decode == sorted(decode), f"{where}: decode.done_tokens goes backwards: {decode}")
    finish = events[-1]["attributes"].get("finish.status")
    expected = "aborted" if getattr(sent, "aborted", False) else ("stopped" if name == "stop string" else None)
    if expected:
        check(finish == expected, f"{where}: finish.status {finish!r}, expected {expected!r}")
    elif not getattr(sent, "aborted", False):
        check(finish in ("stopped", "length"), f"{where}: finish.status {finish!r}")
        check("journey.FIRST_TOKEN" in names, f"{where}: no FIRST_TOKEN in {names}")
    check_event_times(where, core, anchors)
    return names


# Span bounds come from the system clock, event times from the monotonic clock mapped through
# one anchor (waypoint_layers::wall_time_of): the two agree to well under this.
CLOCK_TOLERANCE_NS = 50_000


def check_event_times(where, span, anchors):
    """Events inside their span, each timestamp = anchor + its ts.monotonic."""
    lo, hi = span["start"] - CLOCK_TOLERANCE_NS, span["end"] + CLOCK_TOLERANCE_NS
    outside = [(e["name"], (e["time"] - span["end"]) / 1e6) for e in span["events"] if not lo <= e["time"] <= hi]
    check(not outside, f"{where}: {span['name']} has events outside the span (ms after its end): {outside}")
    for event in span["events"]:
        monotonic = event["attributes"].get("ts.monotonic", event["attributes"].get("event.ts.monotonic"))
        check(isinstance(monotonic, float), f"{where}: {event['name']} has no ts.monotonic")
        anchors.append(event["time"] / 1e9 - monotonic)


def check_anchors(anchors):
    """One wall/monotonic anchor per process: every event's offset agrees within 1 ms."""
    check(anchors, "no event carried ts.monotonic")
    spread = max(anchors) - min(anchors)
    check(spread < 1e-3, f"event timestamps disagree with ts.monotonic by up to {spread * 1e3:.3f} ms")


def check_step_spans(since_ns):
    """scheduler_steps spans exist, carry step events and each links to the one before."""
    params = urllib.parse.urlencode({
        "query.service_name": SERVICE, "query.operation_name": "scheduler_steps",
        "query.start_time_min": rfc3339(since_ns - 10**9), "query.start_time_max": rfc3339(time.time_ns() + 10**9),
        "query.num_traces": "1000",
    })

    def spans():
        status, _, body = http("GET", f"{JAEGER}/api/v3/traces?{params}", timeout=10)
        if status != 200:
            return None
        found = []
        for line in body.decode().splitlines():
            if line.strip():
                message = json.loads(line)
                for rs in message.get("result", message).get("resourceSpans", []):
                    for ss in rs.get("scopeSpans", []):
                        for span in ss.get("spans", []):
                            if span["name"] == "scheduler_steps":
                                found.append((ss.get("scope", {}).get("name"), span))
        return found if len(found) >= 2 else None

    found = wait_for("Jaeger to hold two or more scheduler_steps spans", spans)
    ids = {hex_id(span["spanId"]) for _, span in found}
    linked = 0
    for scope, span in found:
        check(scope == "waypoint.scheduler.step", f"scheduler_steps scope {scope!r}")
        events = {e["name"] for e in span.get("events", [])}
        check(not events or "step.BATCH_SUMMARY" in events, f"scheduler_steps events {events}")
        for link in span.get("links", []):
            if hex_id(link["spanId"]) in ids:
                linked += 1
    check(linked >= 1, "no scheduler_steps span links to another one")
    with_events = sum(1 for _, span in found if span.get("events"))
    check(with_events >= 1, "no scheduler_steps span carries a step.BATCH_SUMMARY event")
    log(f"scheduler_steps: {len(found)} spans, {linked} linked to their predecessor, {with_events} with step events")


def rfc3339(ns):
    seconds = ns / 1e9
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int(ns % 10**9):09d}Z"


def check_traces(sent):
    anchors = []
    preempted = 0
    for s in sent:
        spans = wait_trace(s)
        names = check_trace(s, spans, anchors)
        if names and "journey.PREEMPTED" in names:
            preempted += 1
            check(names[2] == "journey.PREEMPTED" or "journey.PREEMPTED" in names[2:], f"{s.name}: {names}")
            resume = names.index("journey.PREEMPTED") + 1
            check(names[resume] == "journey.SCHEDULED", f"{s.name}: no SCHEDULED after PREEMPTED: {names}")
    check(preempted >= 1, "no request was preempted (journey.PREEMPTED) in the small pool")
    check_anchors(anchors)
    log(f"Jaeger: {len(sent)} traces complete and consistent ({preempted} preempted)")


# --- Prometheus ----------------------------------------------------------------------------


def check_prometheus(model_name, jaeger_has):
    def scraped():
        result = prometheus_query(f'waypoint_request_success_total{{model_name="{model_name}"}}')
        return result if any(float(r["value"][1]) > 0 for r in result) else None

    wait_for("Prometheus to scrape waypoint_request_success_total with requests in it", scraped)
    names = get_json(f"{PROMETHEUS}/api/v1/label/__name__/values")["data"]
    waypoint_names = [n for n in names if n.startswith("waypoint_")]
    check(len(waypoint_names) >= 10, f"Prometheus holds only {waypoint_names}")
    for series in prometheus_query('{__name__=~"waypoint_.*"}'):
        check(series["metric"].get("model_name") == model_name, f"series without the model label: {series['metric']}")

    def exemplars():
        end = time.time()
        params = urllib.parse.urlencode({"query": "waypoint_time_to_first_token_seconds_bucket",
                                         "start": str(end - 600), "end": str(end + 60)})
        data = get_json(f"{PROMETHEUS}/api/v1/query_exemplars?{params}")["data"]
        ids = {e["labels"].get("trace_id") for series in data for e in series.get("exemplars", [])}
        ids.discard(None)
        return ids

    def native():
        # histogram_count reads native histograms only: a classic one gives no result.
        result = prometheus_query(f'histogram_count(waypoint_e2e_request_latency_seconds{{model_name="{model_name}"}})')
        return result if any(float(r["value"][1]) > 0 for r in result) else None

    wait_for("the E2E latency as a native histogram", native)
    check(prometheus_query(f'waypoint_e2e_request_latency_seconds_bucket{{model_name="{model_name}"}}'),
          "the classic E2E buckets are missing beside the native histogram")
    trace_ids = wait_for("exemplars with trace ids on the TTFT histogram", exemplars)
    for trace_id in trace_ids:
        check(jaeger_has(trace_id), f"exemplar trace {trace_id} is not in Jaeger")
    log(f"Prometheus: {len(waypoint_names)} waypoint_* metrics with model_name, histograms native and classic; "
        f"{len(trace_ids)} TTFT exemplars, each a trace in Jaeger")


def check_dashboard_queries():
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/waypoint.json").read_text())
    queries = [(panel.get("title"), target["expr"]) for panel in dashboard.get("panels", [])
               for target in panel.get("targets", []) if target.get("expr")]
    check(queries, "the dashboard has no PromQL queries")
    queries = [(title, expr.replace("$model_name", ".*").replace("$__rate_interval", "1m"))
               for title, expr in queries]
    empty = []

    def all_answer():
        # rate() needs two scrapes of a series in its window: a query can be empty for a
        # scrape interval or two after the first data arrives.
        empty[:] = [f"{title}: {expr}" for title, expr in queries if not prometheus_query(expr)]
        return not empty

    try:
        wait_for("every dashboard query to return data", all_answer, interval=2)
    except Failure:
        pass
    check(not empty, "dashboard queries that returned no data:\n  " + "\n  ".join(empty))
    log(f"Grafana dashboard: all {len(queries)} PromQL queries return data")


def collector_counters():
    """The collector's own counters, summed per metric name."""
    status, _, body = http("GET", COLLECTOR_METRICS, timeout=5)
    check(status == 200, f"collector metrics: {status}")
    totals = {}
    for line in body.decode().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        # Collector 0.165 names counters without `_total`; older releases add it.
        name = re.split(r"[{ ]", line, 1)[0].removesuffix("_total")
        try:
            totals[name] = totals.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
        except ValueError:
            pass
    return totals


def check_collector_clean(expect_accepted):
    counters = collector_counters()
    accepted = counters.get("otelcol_receiver_accepted_spans", 0)
    sent = counters.get("otelcol_exporter_sent_spans", 0)
    check(accepted >= expect_accepted, f"collector accepted {accepted} spans, expected at least {expect_accepted}")
    bad = {name: value for name, value in counters.items()
           if value > 0 and (("refused" in name and "spans" in name) or ("failed" in name and "spans" in name)
                             or name.startswith("otelcol_processor_dropped"))}
    check(not bad, f"the collector refused or dropped spans: {bad}")
    log(f"collector: {accepted:.0f} spans accepted, {sent:.0f} sent, none refused or dropped")


# --- the drills ----------------------------------------------------------------------------


def collector_outage(stack, waypoint):
    """Kill the collector mid-run, serve through the outage, restart it."""
    warnings_before = waypoint.log().count("trace export failed")
    os.kill(stack.pid("otel-collector"), signal.SIGKILL)
    time.sleep(0.5)
    during = [completion(f"during the outage {i}", {"prompt": "Hello", "max_tokens": 4}) for i in range(6)]
    # The batch exporter tries (every 200 ms here) and fails; give it time to notice.
    wait_for("waypoint to report the failed export", lambda: waypoint.log().count("trace export failed") > warnings_before, timeout=30)
    stack.run("up", timeout=120)  # starts only what is not running: the collector
    after = [completion(f"after the restart {i}", {"prompt": "Hello", "max_tokens": 4}) for i in range(3)]
    for s in after:
        wait_trace(s)
    warnings = waypoint.log().count("trace export failed") - warnings_before
    check(warnings == 1, f"waypoint logged the outage {warnings} times, expected once")

    def lost():
        status, _, body = http("GET", f"{WAYPOINT}/metrics")
        match = re.search(r'^waypoint_telemetry_dropped_spans_total\{[^}]*reason="export_failed"[^}]*\} (\d+)', body.decode(), re.M)
        return int(match.group(1)) if match else 0

    dropped = wait_for("/metrics to count the spans lost to the outage", lost, timeout=10)
    log(f"collector outage: {len(during)} requests served during it, 1 warning, {dropped} spans counted lost, export resumed")


def measure_collector_cpu(stack, requests=200):
    before = stack.cpu_seconds("otel-collector")
    for i in range(requests):
        completion(f"load {i}", {"prompt": "Hi", "max_tokens": 2})
    time.sleep(2)
    used = stack.cpu_seconds("otel-collector") - before
    log(f"collector CPU: {used:.2f} s for {requests} requests = {used * 1000 / requests:.2f} s per 1000 requests")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--waypoint", default=str(ROOT / "target/debug/waypoint"))
    parser.add_argument("--model", help="the SmolLM2 GGUF (default: scripts/fetch-smollm2.sh)")
    parser.add_argument("--keep", action="store_true", help="leave the stack running at the end")
    args = parser.parse_args()
    check(Path(args.waypoint).is_file(), f"no waypoint binary at {args.waypoint} (cargo build first)")
    model = args.model or subprocess.run([str(ROOT / "scripts/fetch-smollm2.sh")], check=True,
                                         capture_output=True, text=True).stdout.strip()
    work = Path(tempfile.mkdtemp(prefix="waypoint-real-stack-"))
    stack = Stack(work / "stack")
    waypoint = None
    try:
        stack.run("up", timeout=3600)
        # 1. gRPC, sample rate 1.0.
        waypoint = Waypoint(args.waypoint, model, "grpc", 1.0, work / "waypoint-grpc.log")
        started = waypoint.started_ns
        sent = send_the_requests(forced=False)
        check_traces(sent)
        check_step_spans(started)
        check_prometheus(waypoint.model_name, lambda trace_id: bool(fetch_trace(trace_id)))
        check_dashboard_queries()
        check_collector_clean(expect_accepted=2 * len(sent))
        measure_collector_cpu(stack)
        collector_outage(stack, waypoint)
        waypoint.stop()
        waypoint = None

        # 2. HTTP/protobuf, sample rate 0: forced requests are traced live; the rest are
        # recorded, and tail retention exports only the preempted and the aborted.
        waypoint = Waypoint(args.waypoint, model, "http/protobuf", 0.0, work / "waypoint-http.log")
        unforced = completion("unforced at rate 0", {"prompt": "Hello", "max_tokens": 4})
        check(unforced.trace_id and unforced.traceparent.endswith("-00"),
              f"an unforced request at rate 0 announced {unforced.traceparent!r}, expected an open decision")
        sent = send_the_requests(forced=True)
        check_traces(sent)
        check_traces(send_the_tail())
        check(not fetch_trace(unforced.trace_id), "a fast unforced request at rate 0 was exported")
        waypoint.stop()
        waypoint = None
        log("PASSED")
    except Failure as failure:
        print(f"[real-stack] FAILED: {failure}", file=sys.stderr, flush=True)
        if waypoint is not None:
            print("--- waypoint log (tail) ---\n" + waypoint.log()[-3000:], file=sys.stderr)
        for name in ("otel-collector", "jaeger", "prometheus"):
            try:
                print(f"--- {name} log (tail) ---\n" + stack.log_text(name)[-2000:], file=sys.stderr)
            except OSError:
                pass
        return 1
    finally:
        if waypoint is not None and waypoint.process.poll() is None:
            waypoint.process.kill()
        if not args.keep:
            subprocess.run([str(STACK), "down"], env=stack.env, timeout=60)
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
