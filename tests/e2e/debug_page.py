#!/usr/bin/env python3
"""The debug page (`/debug`) in a real headless Chromium, driven through chromedriver's
WebDriver HTTP API with the standard library only.

`waypoint serve` on SmolLM2 with `--enable-debug-api`, an admin key and one sequence at a
time. The page is opened with the key; a long request runs and a second one waits behind it.
Checked: the page loads with no console error; it shows the waiting request; that request's
segments go from `queue` to `queue,prefill,decode` as it progresses; `/debug` refuses a
caller without the key. A screenshot is saved as target/debug-page.png.

    python3 tests/e2e/debug_page.py [--waypoint target/debug/waypoint] [--model FILE]

Needs Debian's `chromium` and `chromium-driver` (CI installs them).
"""

import argparse
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
KEY = "debug-page-test-key"
WAIT = 120


class Failure(Exception):
    pass


def check(condition, message):
    if not condition:
        raise Failure(message)


def log(message):
    print(f"[debug-page] {message}", flush=True)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http(method, url, body=None, headers=None, timeout=30):
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None and "content-type" not in {k.lower() for k in (headers or {})}:
        request.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def wait_for(what, probe, timeout=WAIT, interval=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(interval)
    raise Failure(f"timed out waiting for {what}")


class Browser:
    """A headless Chromium session through chromedriver (W3C WebDriver)."""

    def __init__(self, work):
        self.port = free_port()
        chromium = shutil.which("chromium") or shutil.which("chromium-browser")
        driver = shutil.which("chromedriver")
        check(chromium and driver, "chromium and chromedriver are needed (apt-get install chromium chromium-driver)")
        self.driver = subprocess.Popen([driver, f"--port={self.port}"], stdout=subprocess.DEVNULL,
                                       stderr=open(work / "chromedriver.log", "wb"))
        self.base = f"http://127.0.0.1:{self.port}"
        wait_for("chromedriver", lambda: self._up(), timeout=30)
        capabilities = {"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000", f"--user-data-dir={work / 'profile'}"]},
            "goog:loggingPrefs": {"browser": "ALL"},
        }}}
        status, body = http("POST", self.base + "/session", capabilities, timeout=60)
        check(status == 200, f"no browser session: {status} {body[:500]!r}")
        self.session = json.loads(body)["value"]["sessionId"]

    def _up(self):
        try:
            return http("GET", self.base + "/status", timeout=2)[0] == 200
        except OSError:
            return False

    def command(self, method, path, body=None):
        status, raw = http(method, f"{self.base}/session/{self.session}{path}", body, timeout=60)
        value = json.loads(raw).get("value") if raw else None
        check(status == 200, f"WebDriver {method} {path}: {status} {value}")
        return value

    def open(self, url):
        self.command("POST", "/url", {"url": url})

    def run(self, script):
        return self.command("POST", "/execute/sync", {"script": script, "args": []})

    def console(self):
        return self.command("POST", "/se/log", {"type": "browser"}) or []

    def screenshot(self, path):
        path.write_bytes(base64.b64decode(self.command("GET", "/screenshot")))

    def close(self):
        try:
            http("DELETE", f"{self.base}/session/{self.session}", timeout=30)
        finally:
            self.driver.kill()


ROWS = """return [...document.querySelectorAll('#gantt g[data-request-id]')].map(g =>
    ({id: g.dataset.requestId, segments: g.dataset.segments, state: g.dataset.state}));"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--waypoint", default=str(ROOT / "target/debug/waypoint"))
    parser.add_argument("--model", help="the SmolLM2 GGUF (default: scripts/fetch-smollm2.sh)")
    args = parser.parse_args()
    check(Path(args.waypoint).is_file(), f"no waypoint binary at {args.waypoint} (cargo build first)")
    model = args.model or subprocess.run([str(ROOT / "scripts/fetch-smollm2.sh")], check=True,
                                         capture_output=True, text=True).stdout.strip()
    work = Path(tempfile.mkdtemp(prefix="waypoint-debug-page-"))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [args.waypoint, "serve", "--model", model, "--port", str(port), "--enable-debug-api",
         "--admin-api-key", KEY, "--max-num-seqs", "1", "--enable-journey-tracing",
         "--journey-tracing-sample-rate", "0", "--debug-jaeger-url", "http://localhost:16686"],
        stdout=subprocess.DEVNULL, stderr=open(work / "waypoint.log", "wb"),
        env={**os.environ, "RUST_LOG": "info"})
    browser = None
    try:
        def healthy():
            check(server.poll() is None, "waypoint exited")
            try:
                return http("GET", base + "/health", timeout=2)[0] == 200
            except OSError:
                return False

        wait_for("waypoint to load SmolLM2", healthy)
        # Access: the key is required (the admin key, not a guess).
        check(http("GET", base + "/debug/requests")[0] == 401, "/debug/requests without a key was not refused")
        check(http("GET", base + "/debug/engine", headers={"Authorization": "Bearer nope"})[0] == 401,
              "/debug/engine with a wrong key was not refused")
        check(http("GET", base + "/debug/engine", headers={"Authorization": f"Bearer {KEY}"})[0] == 200,
              "/debug/engine with the admin key failed")

        browser = Browser(work)
        browser.open(f"{base}/debug?key={KEY}&interval=150")
        wait_for("the page's first update", lambda: "updated" in (browser.run(
            "return document.getElementById('status').textContent") or ""), timeout=30)

        # A long request, then one that must wait for it (one sequence at a time).
        results = {}

        def send(name, max_tokens):
            results[name] = http("POST", base + "/v1/completions", {
                "prompt": "Write a long story about a lighthouse keeper.", "max_tokens": max_tokens,
                "ignore_eos": True}, timeout=WAIT)

        long_one = threading.Thread(target=send, args=("long", 64))
        long_one.start()
        wait_for("the long request on the page", lambda: any(r["state"] == "running" for r in browser.run(ROWS)))
        # Long enough (tens of decode steps) that some polls land while it decodes: a request
        # that starts and ends between two polls is only ever seen queued.
        waiting_one = threading.Thread(target=send, args=("waiting", 40))
        waiting_one.start()
        waiting = wait_for("a waiting request on the page", lambda: next(
            (r for r in browser.run(ROWS) if r["state"] == "waiting"), None))
        check(waiting["segments"] == "queue", f"a waiting request shows {waiting['segments']!r}, not 'queue'")
        log(f"shown waiting: {waiting}")
        browser.screenshot(ROOT / "target" / "debug-page-waiting.png")

        def progressed():
            row = next((r for r in browser.run(ROWS) if r["id"] == waiting["id"]), None)
            return row if row and row["segments"].split(",")[:3] == ["queue", "prefill", "decode"] else None

        row = wait_for("the waiting request to prefill and decode", progressed)
        log(f"then: {row}")
        long_one.join(WAIT)
        waiting_one.join(WAIT)
        check(results.get("long", (0,))[0] == 200 and results.get("waiting", (0,))[0] == 200,
              f"requests failed: {results}")
        wait_for("both requests shown finished", lambda: sum(
            r["state"] == "finished" for r in browser.run(ROWS)) >= 2)
        table = browser.run("return document.querySelector('#table tbody').textContent")
        check("Write a long story" not in (browser.run("return document.body.innerText") or ""),
              "the page shows prompt text")
        screenshot = ROOT / "target" / "debug-page.png"
        screenshot.parent.mkdir(exist_ok=True)
        browser.screenshot(screenshot)
        # The console filter, changed while serving: refusals are logged at debug, which
        # the default filter (info) hides until the change.
        def bad_request():
            return http("POST", base + "/v1/completions", {"prompt": "x", "max_tokens": 0})[0]

        def console():
            return (work / "waypoint.log").read_text(errors="replace")

        check(bad_request() == 400, "an invalid request was not refused")
        check("request rejected" not in console(), "debug lines before the filter changed")
        auth = {"Authorization": f"Bearer {KEY}", "content-type": "text/plain"}
        status, previous = http("PUT", base + "/debug/log-filter", b"info,waypoint::server=debug", auth)
        check(status == 200 and previous.decode() == "info", f"PUT /debug/log-filter: {status} {previous!r}")
        check(http("PUT", base + "/debug/log-filter", b"info,[[", auth)[0] == 400,
              "a bad filter was not refused")
        check(bad_request() == 400, "an invalid request was not refused")
        wait_for("the refusal on the console", lambda: "request rejected" in console(), timeout=10)
        errors = [entry for entry in browser.console() if entry.get("level") == "SEVERE"]
        check(not errors, f"console errors: {errors}")
        log(f"screenshot: {screenshot}; table now: {table!r}")
        log("PASSED")
        return 0
    except Failure as failure:
        print(f"[debug-page] FAILED: {failure}", file=sys.stderr, flush=True)
        print((work / "waypoint.log").read_text(errors="replace")[-3000:], file=sys.stderr)
        return 1
    finally:
        if browser is not None:
            browser.close()
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
