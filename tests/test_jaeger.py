"""Jaeger v2 built from its Go module, run with the exact config the chart renders: spans from
Locust, the sender and the receiver reach it through the collector, and its query API returns
one trace holding Locust's request and both ends' tls.handshake spans (issue 17)."""

from __future__ import annotations

import os
import re
import runpy
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.helpers import exporting_to
from tests.locust_helpers import traced_locust_run
from tests.test_chart import ROOT, render
from tlsstorm.localstack import jaeger

JAEGER_API = f"http://127.0.0.1:{jaeger.UI_PORT}/api"
both_ends = runpy.run_path(str(ROOT / "scripts" / "jaeger_has_handshakes.py"))["both_ends"]


@pytest.fixture(scope="module")
def jaeger_binary() -> Path:
    """The binary scripts/go-build.sh makes (built here when missing: Go and its proxy needed)."""
    binary = ROOT / ".tools" / "bin" / "jaeger"
    if not binary.is_file():
        subprocess.run([str(ROOT / "scripts" / "go-build.sh"), "jaeger"], check=True,
                       timeout=1800)
    return binary


def chart_jaeger() -> tuple[str, dict]:
    """The ConfigMap's config.yaml and the Deployment's container, as `helm template` renders."""
    documents = render()
    config = next(d for d in documents if d["kind"] == "ConfigMap"
                  and d["metadata"]["name"].endswith("-jaeger"))["data"]["config.yaml"]
    deployment = next(d for d in documents if d["kind"] == "Deployment"
                      and d["metadata"]["name"].endswith("-jaeger"))
    return config, deployment["spec"]["template"]["spec"]["containers"][0]


def wait_ok(url: str, timeout: float = 60) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        try:
            answer = httpx.get(url, timeout=2)
            if answer.status_code == 200:
                return answer
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{url} did not answer 200 within {timeout} s")
        time.sleep(0.2)


def traces_with_both_handshakes(service: str, timeout: float = 30) -> list[dict]:
    """Jaeger's traces for `service` holding the sender's and the receiver's handshake spans."""
    deadline = time.monotonic() + timeout
    while True:
        answer = httpx.get(f"{JAEGER_API}/traces", params={"service": service, "limit": 50},
                           timeout=5).json()
        found = [trace for trace in answer.get("data") or [] if both_ends(trace)]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def services_in(trace: dict) -> set[str]:
    return {process["serviceName"] for process in trace["processes"].values()}


@pytest.fixture
def chart_configured_jaeger(jaeger_binary, tmp_path) -> Iterator[dict]:
    config, container = chart_jaeger()
    (tmp_path / "config.yaml").write_text(config)
    args = [a.replace("/etc/jaeger", str(tmp_path)) for a in container["args"]]
    process = subprocess.Popen([str(jaeger_binary), *args], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        yield container
    finally:
        process.terminate()
        process.wait(timeout=20)


def test_the_chart_pins_the_jaeger_version_built_from_the_go_module(jaeger_binary):
    values = yaml.safe_load((ROOT / "charts" / "tlsstorm" / "values.yaml").read_text())
    printed = subprocess.run([str(jaeger_binary), "version"], capture_output=True, text=True,
                             check=True, timeout=30).stdout
    built = re.search(r'"gitVersion":"v([0-9.]+)"', printed)
    assert built, printed
    assert values["jaeger"]["image"]["tag"] == built.group(1)
    assert values["jaeger"]["maxTraces"] == jaeger.MAX_TRACES


def test_chart_config_answers_the_probes_and_holds_a_trace_from_locust_to_both_handshakes(
    chart_configured_jaeger, start_collector, start_receiver, start_sender
):
    probe = chart_configured_jaeger["readinessProbe"]["httpGet"]
    ports = {p["name"]: p["containerPort"] for p in chart_configured_jaeger["ports"]}
    health = wait_ok(f"http://127.0.0.1:{ports[probe['port']]}{probe['path']}")
    assert health.json()["healthy"] is True
    collector = start_collector(
        forward_otlp_endpoint=f"http://127.0.0.1:{ports['otlp-http']}")
    receiver, sender = exporting_to(collector.http, start_receiver, start_sender)

    traced_locust_run(collector.http, receiver, sender, messages=3)

    traces = traces_with_both_handshakes("locust")
    assert traces, "no trace from Locust holds both handshake spans"
    assert services_in(traces[0]) >= {"locust", "tlsstorm-sender", "tlsstorm-receiver"}
    answer = httpx.get(f"{JAEGER_API}/traces/{traces[0]['traceID']}", timeout=5).json()
    assert answer["data"][0]["traceID"] == traces[0]["traceID"]


def test_tlsstorm_up_runs_jaeger_and_prints_where_the_trace_of_a_send_is(jaeger_binary, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TLSSTORM_", "OTEL_"))}
    ports = {"TLSSTORM_RECEIVER_SMTP_PORT": 12525, "TLSSTORM_RECEIVER_HTTP_PORT": 18025,
             "TLSSTORM_SENDER_HTTP_PORT": 18026, "TLSSTORM_COLLECTOR_HTTP_PORT": 18027,
             "TLSSTORM_LOCUST_WEB_PORT": 18089}
    env.update({name: str(port) for name, port in ports.items()},
               TLSSTORM_JAEGER=str(jaeger_binary),
               TLSSTORM_COLLECTOR_DB_PATH=str(tmp_path / "collector.sqlite"))
    up = subprocess.Popen([sys.executable, "-m", "tlsstorm", "up"], env=env, cwd=tmp_path,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          start_new_session=True)
    try:
        lines = []
        for line in up.stdout:
            lines.append(line)
            if line.startswith("open the Locust web UI"):
                break
        printed = "".join(lines)
        assert f"Jaeger UI          {jaeger.ui_url()}" in printed, printed
        sent = httpx.post("http://127.0.0.1:18026/v1/send",
                          json={"count": 2, "tls": True}, timeout=30)
        assert sent.status_code == 200, sent.text
        traces = traces_with_both_handshakes("tlsstorm-sender")
        assert traces, "the local Jaeger has no trace with both handshake spans"
    finally:
        up.send_signal(signal.SIGINT)
        up.wait(timeout=60)
