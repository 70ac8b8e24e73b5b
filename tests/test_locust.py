"""Locust as command and control: options, shapes, distributed runs and traces, for real."""

from __future__ import annotations

import http.server
import itertools
import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import ClassVar

import httpx
import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.helpers import exporting_to
from tests.locust_helpers import (
    LOCUSTFILE,
    clean_env,
    finish,
    free_port,
    locust,
    smtp_rows,
    traced_locust_run,
)
from tlsstorm.common.telemetry import tracer_provider

SLOW_WORKER = Path(__file__).parent / "slow_worker_locustfile.py"


def _ticks(name: str, times: list[float], **options) -> list[dict]:
    """Run load/shapes.py's shape in its own process (importing Locust patches the interpreter)."""
    finished = subprocess.run(
        [sys.executable, str(Path(__file__).parent / "shape_ticks.py"), name,
         json.dumps(options), *map(str, times)],
        capture_output=True, text=True, timeout=60, check=True)
    return json.loads(finished.stdout)


def test_constant_shape_follows_the_ui_fields_until_the_run_time():
    ticks = _ticks("constant", [0, 10, 29.9, 30], num_users=12, spawn_rate=4, run_time=30)

    assert [tick["tick"] for tick in ticks] == [[12, 4]] * 3 + [None]


def test_spam_waves_burst_and_fall_silent_each_period():
    ticks = _ticks("waves", [0, 3.9, 4, 9.9, 10, 13.9, 14], num_users=50, spawn_rate=25,
                   wave_period=10, wave_burst=4)

    assert [tick["tick"][0] for tick in ticks] == [50, 50, 0, 0, 50, 50, 0]


def test_rustock_timeline_raises_the_tls_ratio_per_phase_then_stops():
    ticks = _ticks("rustock", [0, 4.9, 5, 9.9, 10, 14.9, 15], phase_seconds=5, wave_id="rk")

    assert [tick["tick"] for tick in ticks] == [[10, 5]] * 6 + [None]
    assert [(tick["tls_ratio"], tick["wave_id"]) for tick in ticks[:6]] == [
        (0.2, "rk-phase1-tls20")] * 2 + [(0.3, "rk-phase2-tls30")] * 2 + [
        (0.7, "rk-phase3-tls70")] * 2


def _share(stats: dict) -> tuple[int, float]:
    total = stats["plain"]["messages"] + stats["tls"]["messages"]
    return total, (stats["tls"]["messages"] / total if total else 0.0)


def test_rustock_ratio_change_reaches_running_users(receiver, sender, tmp_path):
    run = locust("SpamViaSender", "--headless", "--users", "4", "--spawn-rate", "4",
                 "--phase-seconds", "3", "--wave-id", "rk", "--stop-timeout", "10",
                 "--host", sender.http, "--only-summary",
                 env=clean_env(TLSSTORM_LOAD_SHAPE="rustock"))
    output = finish(run, timeout=90)

    assert run.returncode == 0, output[-3000:]
    for phase, ratio in ((1, 0.2), (2, 0.3), (3, 0.7)):
        total, share = _share(receiver.stats(f"rk-phase{phase}-tls{round(ratio * 100)}"))
        assert total >= 20, (phase, total)
        # STARTTLS is spread exactly over this process's messages: within one message of the
        # phase's ratio (phases 20% and 30% apart by ten points are told apart).
        assert abs(share - ratio) <= 1 / total + 1e-9, (phase, share, total)


def test_max_messages_sends_exactly_that_many_at_the_exact_ratio(receiver, sender, tmp_path):
    stats_file = tmp_path / "stats.json"
    run = locust("SpamViaSender", "--headless", "--users", "5", "--spawn-rate", "5",
                 "--max-messages", "40", "--tls-ratio", "0.25", "--wave-id", "budget",
                 "--run-time", "60s", "--stop-timeout", "10", "--host", sender.http,
                 "--json-file", str(stats_file.with_suffix("")), "--only-summary")
    output = finish(run)

    assert run.returncode == 0, output[-3000:]
    rows = smtp_rows(stats_file)
    assert rows["SMTP STARTTLS"]["num_requests"] == 10
    assert rows["SMTP plain"]["num_requests"] == 30
    stats = receiver.stats("budget")
    assert (stats["tls"]["messages"], stats["plain"]["messages"]) == (10, 30)


def test_user_rate_paces_each_user_so_the_wave_runs_at_users_times_rate(
    receiver, sender, tmp_path
):
    """2 users at 10 messages a second, one per request: 40 messages take about 2 s (each
    user's first at once, then one every 0.1 s); unpaced they go out in a fraction of that."""
    stats_file = tmp_path / "paced.json"
    run = locust("SpamViaSender", "--headless", "--users", "2", "--spawn-rate", "2",
                 "--max-messages", "40", "--user-rate", "10", "--batch", "1",
                 "--wave-id", "paced", "--run-time", "60s", "--stop-timeout", "10",
                 "--host", sender.http, "--json-file", str(stats_file.with_suffix("")),
                 "--only-summary")
    output = finish(run)

    assert run.returncode == 0, output[-3000:]
    rows = smtp_rows(stats_file).values()
    assert sum(row["num_requests"] for row in rows) == 40
    first = min(row["start_time"] for row in rows)
    last = max(row["last_request_timestamp"] for row in rows)
    assert 1.8 <= last - first <= 6, (first, last)
    stats = receiver.stats("paced")
    assert stats["plain"]["messages"] + stats["tls"]["messages"] == 40


def test_locust_keeps_what_it_built_at_start_out_of_the_garbage_collectors_walk(
    receiver, sender, tmp_path
):
    probe = tmp_path / "gc_probe.py"
    probe.write_text(
        "import gc\nfrom locust import events\n\n\n@events.quitting.add_listener\n"
        "def say_frozen(**_kwargs):\n    print(f'frozen objects: {gc.get_freeze_count()}')\n")
    run = locust("SpamViaSender", "--headless", "--users", "1", "--spawn-rate", "1",
                 "--max-messages", "2", "--run-time", "30s", "--host", sender.http,
                 "--only-summary", locustfile=f"{LOCUSTFILE},{probe}")
    output = finish(run)

    frozen = re.search(r"frozen objects: (\d+)", output)
    assert frozen, output[-3000:]
    assert int(frozen.group(1)) > 10_000  # Locust, gevent, our load/ modules: ~100,000


@pytest.mark.parametrize("per_connection", [1, 5])
def test_direct_smtp_bot_speaks_to_the_receiver_without_the_sender(
    receiver, tmp_path, per_connection
):
    stats_file = tmp_path / "direct.json"
    run = locust("DirectSmtpBot", "--headless", "--users", "2", "--spawn-rate", "2",
                 "--max-messages", "20", "--tls-ratio", "0.5", "--wave-id", "direct",
                 "--per-connection", str(per_connection),
                 "--smtp-target", f"127.0.0.1:{receiver.smtp_port}", "--run-time", "60s",
                 "--stop-timeout", "10", "--json-file", str(stats_file.with_suffix("")),
                 "--only-summary")
    output = finish(run)

    assert run.returncode == 0, output[-3000:]
    rows = smtp_rows(stats_file)  # one row per message, however many share a connection
    assert rows["SMTP STARTTLS (direct)"]["num_requests"] == 10
    assert rows["SMTP plain (direct)"]["num_requests"] == 10
    assert rows["SMTP plain (direct)"]["num_failures"] == 0
    stats = receiver.stats("direct")
    assert (stats["tls"]["messages"], stats["plain"]["messages"]) == (10, 10)
    assert stats["tls"]["sessions"] == 10 // per_connection


def test_direct_smtp_bot_is_held_to_the_allowlist(receiver, tmp_path):
    stats_file = tmp_path / "refused.json"
    run = locust("DirectSmtpBot", "--headless", "--users", "1", "--spawn-rate", "1",
                 "--smtp-target", f"127.0.0.1:{receiver.smtp_port}", "--run-time", "3s",
                 "--json-file", str(stats_file.with_suffix("")), "--only-summary",
                 "--csv", str(tmp_path / "refused"),
                 env=clean_env(TLSSTORM_ALLOWED_TARGETS="127.0.0.1:1"))
    finish(run)

    row = smtp_rows(stats_file)["SMTP plain (direct)"]
    assert row["num_failures"] == row["num_requests"] == 1
    assert "not allowed" in (tmp_path / "refused_failures.csv").read_text()
    assert receiver.stats()["plain"]["sessions"] + receiver.stats()["tls"]["sessions"] == 0


def test_locust_cannot_aim_the_sender_outside_its_allowlist(receiver, sender, tmp_path):
    stats_file = tmp_path / "refused.json"
    run = locust("SpamViaSender", "--headless", "--users", "2", "--spawn-rate", "2",
                 "--max-messages", "10", "--target", "192.0.2.1:25", "--run-time", "30s",
                 "--host", sender.http, "--json-file", str(stats_file.with_suffix("")),
                 "--only-summary")
    finish(run)

    rows = {row["name"]: row for row in json.loads(stats_file.read_text())}
    assert rows["POST /v1/batch"]["num_requests"] == rows["POST /v1/batch"]["num_failures"] > 0
    assert not smtp_rows(stats_file)  # no message was sent
    assert receiver.stats()["plain"]["sessions"] + receiver.stats()["tls"]["sessions"] == 0


def _distributed(*master_args: str, workers: int = 2, env: dict[str, str] | None = None,
                 timeout: float = 120) -> str:
    """A headless master and its workers, run to the end; every log must be free of errors."""
    port = str(free_port())
    master = locust("SpamViaSender", "--master", "--master-bind-port", port, "--headless",
                    "--expect-workers", str(workers), "--stop-timeout", "10", "--only-summary",
                    *master_args, env=env)
    # Workers start with Locust's defaults: what they use comes from the master.
    started = [locust("--worker", "--master-port", port, env=env) for _ in range(workers)]
    output = finish(master, timeout=timeout)
    for worker in started:
        finish(worker, timeout=30)
    assert master.returncode == 0, output[-3000:]
    return output


def test_distributed_master_and_workers_agree_with_the_receiver(receiver, sender, tmp_path):
    stats_file = tmp_path / "distributed.json"
    _distributed("--users", "6", "--spawn-rate", "6", "--run-time", "5s", "--tls-ratio", "0.7",
                 "--wave-id", "dist", "--host", sender.http,
                 "--json-file", str(stats_file.with_suffix("")))

    rows = smtp_rows(stats_file)
    sent = sum(row["num_requests"] for row in rows.values())
    assert all(row["num_failures"] == 0 for row in rows.values())
    stats = receiver.stats("dist")
    total, share = _share(stats)
    assert total == sent > 20
    # Workers started with the default 0.3: 0.7 reached them in the spawn message's options.
    assert share == pytest.approx(0.7, abs=0.1)


@pytest.fixture
def traced(start_collector, start_receiver, start_sender):
    """Collector, receiver and sender, the last two exporting their spans to the first."""
    collector = start_collector()
    receiver, sender = exporting_to(collector.http, start_receiver, start_sender)
    return collector, receiver, sender


def _collector_waves(collector, receiver, prefix: str) -> dict[str, dict]:
    """The collector's waves named `prefix...`, once it holds every session the receiver saw."""
    totals = receiver.stats()
    ended = totals["plain"]["sessions"] + totals["tls"]["sessions"]
    deadline = time.monotonic() + 15
    while True:
        waves = {wave["wave"]: wave for wave in
                 httpx.get(f"{collector.http}/v1/waves").json()["waves"]
                 if wave["wave"].startswith(prefix)}
        seen = sum(wave["plain"] + wave["starttls"] for wave in waves.values())
        if seen >= ended or time.monotonic() > deadline:
            return waves
        time.sleep(0.3)


def _in_order(waves: list[dict]) -> bool:
    """No wave's sessions go on more than a second after the next one's began: a worker that
    kept an old label would send under it for the rest of the run (phases last 4 s), while a
    session begun just before the change may end in the next whole second on a busy machine."""
    return all(earlier["last_unix_s"] <= later["first_unix_s"] + 1
               for earlier, later in itertools.pairwise(waves))


def test_rustock_timeline_moves_the_tls_share_on_every_worker(traced):
    collector, receiver, sender = traced
    _distributed("--users", "6", "--spawn-rate", "6", "--phase-seconds", "4",
                 "--wave-id", "drk", "--host", sender.http,
                 env=clean_env(TLSSTORM_LOAD_SHAPE="rustock"))

    names = [f"drk-phase{phase}-tls{round(ratio * 100)}"
             for phase, ratio in ((1, 0.2), (2, 0.3), (3, 0.7))]
    for name, ratio in zip(names, (0.2, 0.3, 0.7), strict=True):
        total, share = _share(receiver.stats(name))
        assert total >= 50, (name, total)
        assert share == pytest.approx(ratio, abs=0.05), (name, share)
    waves = _collector_waves(collector, receiver, "drk")
    assert sorted(waves) == names
    assert _in_order([waves[name] for name in names])


def test_a_worker_joining_mid_run_catches_up_with_a_change_it_could_not_hear(
    receiver, sender
):
    """The worker is connected, so the master sends it phase 2's change, while its start-up
    has not yet set up the listener; once listening it asks, and follows phase 2, then 3."""
    port = str(free_port())
    env = clean_env(TLSSTORM_LOAD_SHAPE="rustock")
    master = locust("SpamViaSender", "--master", "--master-bind-port", port, "--headless",
                    "--expect-workers", "1", "--stop-timeout", "10", "--only-summary",
                    "--users", "4", "--spawn-rate", "4", "--phase-seconds", "4",
                    "--wave-id", "late", "--host", sender.http, env=env)
    first = locust("--worker", "--master-port", port, env=env)
    time.sleep(4)  # the run starts once the first worker is in (about 2 s): now in phase 1
    slow = locust("--worker", "--master-port", port, locustfile=SLOW_WORKER,
                  env={**env, "SLOW_INIT_S": "3"})
    output = finish(master)
    finish(first, timeout=30)
    slow_log = finish(slow, timeout=30)

    assert master.returncode == 0, output[-3000:]
    assert "to 2 ready workers" in output, output[-3000:]
    heard = re.findall(r"wave options from the master: .*wave_id=(late-phase\d)", slow_log)
    assert heard[-2:] == ["late-phase2", "late-phase3"], slow_log[-3000:]
    for phase, ratio in ((1, 0.2), (2, 0.3), (3, 0.7)):
        total, share = _share(receiver.stats(f"late-phase{phase}-tls{round(ratio * 100)}"))
        assert total >= 50 and share == pytest.approx(ratio, abs=0.05), (phase, total, share)


def test_spam_waves_bursts_reach_every_worker(traced):
    collector, receiver, sender = traced
    _distributed("--users", "6", "--spawn-rate", "6", "--wave-period", "4",
                 "--wave-burst", "2", "--run-time", "10s", "--tls-ratio", "0.5",
                 "--wave-id", "dsw", "--host", sender.http,
                 env=clean_env(TLSSTORM_LOAD_SHAPE="waves"))

    waves = _collector_waves(collector, receiver, "dsw")
    assert sorted(waves) == ["dsw-burst1", "dsw-burst2", "dsw-burst3"]
    bursts = [waves[f"dsw-burst{n}"] for n in (1, 2, 3)]
    assert all(burst["plain"] and burst["starttls"] for burst in bursts), bursts
    # A burst lasts 2 s of each 4: nothing is sent in the silent half of a period.
    assert all(burst["last_unix_s"] - burst["first_unix_s"] <= 3 for burst in bursts), bursts
    assert _in_order(bursts)


class _OtlpCapture(http.server.BaseHTTPRequestHandler):
    requests: ClassVar[list[ExportTraceServiceRequest]] = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["content-length"]))
        type(self).requests.append(ExportTraceServiceRequest.FromString(body))
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_one_trace_spans_locust_the_sender_and_the_receiver(start_receiver, start_sender):
    _OtlpCapture.requests = []
    capture = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _OtlpCapture)
    threading.Thread(target=capture.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{capture.server_port}"
    receiver = start_receiver(provider=tracer_provider(
        "tlsstorm-receiver", exporter=OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces")))
    sender = start_sender(receiver.smtp_port, provider=tracer_provider(
        "tlsstorm-sender", exporter=OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces")))

    traced_locust_run(endpoint, receiver, sender, messages=3)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        spans = {}
        for request in _OtlpCapture.requests:
            for resource_spans in request.resource_spans:
                service = next(kv.value.string_value for kv in resource_spans.resource.attributes
                               if kv.key == "service.name")
                for scope in resource_spans.scope_spans:
                    for span in scope.spans:
                        spans[span.span_id] = (service, span)
        sessions = [span for service, span in spans.values() if span.name == "smtp.session"]
        if len(sessions) == 3 and any(s == "locust" for s, _ in spans.values()):
            break
        time.sleep(0.2)
    capture.shutdown()

    assert len(sessions) == 3
    for session in sessions:
        chain, current = [], session
        while current.parent_span_id in spans:
            service, current = spans[current.parent_span_id]
            chain.append((service, current.name))
        assert chain[-1][0] == "locust", chain
        assert ("tlsstorm-sender", "smtp.send") in chain


def test_locust_mixes_the_senders_tls_personalities_exactly(start_receiver, start_sender):
    receiver = start_receiver(gate_mode="learn", gate_deny_below_tls13=True)
    sender = start_sender(receiver.smtp_port)
    run = locust("SpamViaSender", "--headless", "--users", "2", "--spawn-rate", "2",
                 "--max-messages", "20", "--tls-ratio", "1", "--tls-profiles",
                 "mta:0.5,bot-tls12:0.5", "--run-time", "60s", "--stop-timeout", "10",
                 "--host", sender.http, "--only-summary")
    output = finish(run)

    assert run.returncode == 0, output[-3000:]
    gate = receiver.wait_sessions(20)["gate"]
    assert {(d["decision"], d["sessions"]) for d in gate["decisions"]} == {
        ("allowed", 10), ("would_deny", 10)}


def test_a_share_that_is_no_number_in_tls_profiles_is_an_error_that_says_so(receiver, sender):
    run = locust("SpamViaSender", "--headless", "--users", "1", "--spawn-rate", "1",
                 "--max-messages", "2", "--tls-ratio", "1", "--tls-profiles",
                 "mta:abc,bot-tls12:0.5", "--run-time", "5s", "--host", sender.http,
                 "--only-summary")
    output, _ = run.communicate(timeout=60)

    assert run.returncode != 0
    assert "--tls-profiles: 'abc' in 'mta:abc' is not a share" in output
    assert receiver.stats()["tls"]["sessions"] == 0  # nothing sent at made-up shares
