"""The sender's API: results per message, waves at a set TLS ratio, and a closed allowlist."""

from __future__ import annotations

import contextlib
import itertools
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.receiver_process import ServiceProcess
from tlsstorm.common.process import cpu_seconds_of, thread_cpu_seconds_of
from tlsstorm.sender.waves import is_tls


def _wait_wave(sender, wave_id: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        wave = httpx.get(f"{sender.http}/v1/waves/{wave_id}").json()
        if wave["status"] != "running" or time.monotonic() > deadline:
            return wave
        time.sleep(0.05)


@contextlib.contextmanager
def _accepting(serve: Callable[[socket.socket], None]) -> Iterator[tuple[int, list[float]]]:
    """A loopback server whose thread notes when each connection arrives and hands it to
    `serve`; yields its port and the arrival times (time.monotonic)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    arrivals: list[float] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                connection = listener.accept()[0]
            except TimeoutError:
                continue
            arrivals.append(time.monotonic())
            serve(connection)

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield listener.getsockname()[1], arrivals
    finally:
        stop.set()
        acceptor.join(5)
        listener.close()


def test_send_returns_one_measured_result_per_message(sender):
    body = httpx.post(f"{sender.http}/v1/send",
                      json={"tls": True, "count": 3, "per_connection": 2, "size": 4096},
                      timeout=30).json()
    first, second, third = body["results"]

    assert all(result["ok"] and result["code"] == 250 for result in body["results"])
    assert first["connect_ms"] > 0 and first["handshake_ms"] > 0
    assert second["connect_ms"] is None and second["handshake_ms"] is None  # same connection
    assert third["handshake_ms"] > 0  # a new connection
    assert first["tls_version"] in ("TLSv1.2", "TLSv1.3") and first["cipher"]
    assert all(result["size"] == 4096 for result in body["results"])
    assert all(result["bytes_sent"] > 4096 for result in body["results"])


def test_plain_send_is_really_plain(sender, receiver):
    result = httpx.post(f"{sender.http}/v1/send", json={"tls": False}, timeout=30).json()

    assert result["results"][0]["tls_version"] is None
    assert result["results"][0]["handshake_ms"] is None
    stats = receiver.wait_sessions(1)
    assert stats["plain"]["sessions"] == 1 and stats["tls"]["sessions"] == 0


def test_wave_sends_exactly_the_tls_ratio_and_the_receiver_agrees(sender, receiver):
    # Room enough that nothing is skipped even on a busy machine (skips are tested below).
    accepted = httpx.post(f"{sender.http}/v1/waves", json={
        "rate": 100, "count": 50, "tls_ratio": 0.3, "concurrency": 64, "size": 1024})
    assert accepted.status_code == 202
    wave = _wait_wave(sender, accepted.json()["id"])

    assert wave["status"] == "completed"
    assert wave["skipped"] == 0
    assert (wave["tls"]["ok"], wave["plain"]["ok"]) == (15, 35)
    stats = receiver.wait_sessions(50)
    by_wave = receiver.stats(wave["id"])
    assert by_wave["tls"]["messages"] == 15 and by_wave["plain"]["messages"] == 35
    assert stats["tls"]["handshakes_ok"] == 15


def test_wave_paces_open_loop_and_can_be_stopped(sender):
    accepted = httpx.post(f"{sender.http}/v1/waves", json={
        "rate": 20, "duration_s": 30, "tls_ratio": 0.5, "concurrency": 4}).json()
    time.sleep(1.0)
    stopped = httpx.delete(f"{sender.http}/v1/waves/{accepted['id']}", timeout=30).json()

    assert stopped["status"] == "stopped"
    assert 10 <= stopped["scheduled"] <= 40  # ~20 per second for about a second
    assert stopped["done"] == stopped["scheduled"] - stopped["skipped"]


def test_a_wave_at_a_rate_near_zero_sends_its_first_message_and_can_be_stopped(sender):
    """The schema allows any rate above 0 (a fuzzer sent 5e-324/s): the first connection is
    due at once, the next one never; such a wave once stayed "running" with nothing sent."""
    single = httpx.post(f"{sender.http}/v1/waves", json={"rate": 5e-324, "count": 1}).json()
    endless = httpx.post(f"{sender.http}/v1/waves", json={"rate": 5e-324, "count": 2}).json()

    assert _wait_wave(sender, single["id"], timeout=10)["done"] == 1
    time.sleep(0.5)
    stopped = httpx.delete(f"{sender.http}/v1/waves/{endless['id']}", timeout=10).json()
    assert (stopped["status"], stopped["done"], stopped["scheduled"]) == ("stopped", 1, 1)


def test_open_loop_counts_skipped_sends_when_the_server_stalls(start_sender):
    """A server that accepts and never answers: the rate is kept, the backlog is skipped."""
    held: list[socket.socket] = []
    with _accepting(held.append) as (port, _):
        sender = start_sender(port, timeout_s=2)
        try:
            accepted = httpx.post(f"{sender.http}/v1/waves", json={
                "rate": 50, "count": 30, "concurrency": 2}).json()
            wave = _wait_wave(sender, accepted["id"])
        finally:
            for connection in held:
                connection.close()

    assert wave["status"] == "completed"
    assert wave["skipped"] >= 20
    assert wave["done"] + wave["skipped"] == 30
    assert wave["plain"]["failed"] == wave["done"]


def test_the_engine_connects_each_wave_connection_at_its_due_time(start_sender):
    """Waves hand connections to the engine up to 50 ms ahead, several per tick; each must
    still reach the server at its own due time, 20 ms apart at 50/s, not in bursts."""
    with _accepting(socket.socket.close) as (port, arrivals):
        sender = start_sender(port, timeout_s=2)
        accepted = httpx.post(f"{sender.http}/v1/waves", json={
            "rate": 50, "count": 15, "concurrency": 15}).json()
        wave = _wait_wave(sender, accepted["id"])

    assert wave["status"] == "completed" and wave["skipped"] == 0, wave
    assert len(arrivals) == 15
    gaps_ms = [(later - earlier) * 1000 for earlier, later in itertools.pairwise(arrivals)]
    # Handed over as they are (three or so per tick), most would arrive within a millisecond.
    assert sum(gap >= 10 for gap in gaps_ms) >= 11, gaps_ms
    assert 200 <= (arrivals[-1] - arrivals[0]) * 1000 <= 400, gaps_ms  # 14 periods of 20 ms


@pytest.mark.parametrize("ratio", [0.0, 0.2, 0.3, 0.7, 1.0])
def test_tls_choice_is_spread_exactly(ratio):
    picks = [is_tls(index, ratio) for index in range(1000)]
    assert sum(picks) == int(1000 * ratio)
    assert sum(picks[:10]) == int(10 * ratio)


def test_disallowed_target_is_refused_and_no_connection_is_made(start_sender, receiver):
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.5)
    forbidden_port = listener.getsockname()[1]
    sender = start_sender(receiver.smtp_port,
                          allowed_targets=f"127.0.0.1:{receiver.smtp_port}")

    single = httpx.post(f"{sender.http}/v1/send",
                        json={"tls": False, "target": f"127.0.0.1:{forbidden_port}"})
    wave = httpx.post(f"{sender.http}/v1/waves", json={
        "rate": 10, "count": 5, "target": f"127.0.0.1:{forbidden_port}"})

    assert single.status_code == 403 and "not allowed" in single.json()["detail"]
    assert wave.status_code == 403
    with pytest.raises(TimeoutError):
        listener.accept()
    listener.close()
    assert httpx.post(f"{sender.http}/v1/send", json={"tls": False}).status_code == 200


def test_default_allowlist_refuses_the_world(sender):
    refused = httpx.post(f"{sender.http}/v1/send", json={"tls": True, "target": "192.0.2.1:25"})

    assert refused.status_code == 403
    assert "192.0.2.1" in refused.json()["detail"]


@pytest.mark.parametrize("payload", [
    {"tls": "perhaps"},
    {"tls": True, "count": 0},
    {"tls": True, "size": 10},
    {"tls": True, "unknown": 1},
    {"tls": True, "target": "no-port-here:notaport"},
])
def test_bad_send_payloads_get_a_4xx_with_a_reason(sender, payload):
    response = httpx.post(f"{sender.http}/v1/send", json=payload)

    assert response.status_code in (403, 422)
    assert response.json()["detail"]
    assert httpx.get(f"{sender.http}/healthz").status_code == 200


@pytest.mark.parametrize("path", ["/v1/send", "/v1/waves"])
def test_a_body_that_is_not_json_is_a_400_with_a_reason(sender, path):
    response = httpx.post(f"{sender.http}{path}", content=b'{"tls": tru',
                          headers={"content-type": "application/json"})

    assert response.status_code == 400
    assert response.json()["detail"] == "the request body is not valid JSON"


def test_wave_needs_exactly_one_of_count_or_duration(sender):
    both = httpx.post(f"{sender.http}/v1/waves", json={"rate": 1, "count": 1, "duration_s": 1})
    neither = httpx.post(f"{sender.http}/v1/waves", json={"rate": 1})

    assert both.status_code == neither.status_code == 422
    assert "exactly one of count or duration_s" in both.text


def test_token_guards_load_endpoints_when_configured(start_sender, receiver):
    sender = start_sender(receiver.smtp_port, api_token="s3cret")

    anonymous = httpx.post(f"{sender.http}/v1/send", json={"tls": False})
    wrong = httpx.post(f"{sender.http}/v1/send", json={"tls": False},
                       headers={"Authorization": "Bearer nope"})
    right = httpx.post(f"{sender.http}/v1/send", json={"tls": False},
                       headers={"Authorization": "Bearer s3cret"}, timeout=30)

    assert anonymous.status_code == wrong.status_code == 401
    assert right.status_code == 200
    assert httpx.get(f"{sender.http}/healthz").status_code == 200


def test_sender_metrics_count_messages(sender):
    httpx.post(f"{sender.http}/v1/send", json={"tls": True, "count": 2}, timeout=30)

    metrics = httpx.get(f"{sender.http}/metrics").text

    assert 'tlsstorm_sender_messages_total{mode="tls",result="ok"} 2.0' in metrics


def test_allowlist_holds_after_dns_resolution(start_sender, receiver):
    sender = start_sender(receiver.smtp_port, allowed_targets="10.0.0.0/8,receiver.invalid:2525")

    by_name = httpx.post(f"{sender.http}/v1/send",
                         json={"tls": False, "target": f"localhost:{receiver.smtp_port}"})
    wave = httpx.post(f"{sender.http}/v1/waves", json={
        "rate": 10, "count": 5, "target": f"localhost:{receiver.smtp_port}"})

    assert by_name.status_code == wave.status_code == 403
    assert "resolves to 127.0.0.1, which is not allowed" in by_name.json()["detail"]
    assert receiver.stats()["plain"]["sessions"] == 0


def test_resuming_sender_resumes_the_previous_tls_session(sender, receiver):
    first = httpx.post(f"{sender.http}/v1/send", json={"tls": True, "resume": True},
                       timeout=30).json()["results"][0]
    second = httpx.post(f"{sender.http}/v1/send", json={"tls": True, "resume": True},
                        timeout=30).json()["results"][0]
    fresh = httpx.post(f"{sender.http}/v1/send", json={"tls": True}, timeout=30).json()

    assert (first["tls_resumed"], second["tls_resumed"]) == (False, True)
    assert fresh["results"][0]["tls_resumed"] is False
    assert receiver.wait_sessions(3)["tls"]["handshakes_resumed"] == 1


def test_refused_starttls_goes_on_in_plain_and_rejected_clients_get_554(
    start_receiver, start_sender
):
    refusing = start_receiver(refuse_starttls_from="127.0.0.0/8")
    rejecting = start_receiver(reject_from="127.0.0.1/32")
    to_refusing = start_sender(refusing.smtp_port)
    to_rejecting = start_sender(rejecting.smtp_port)

    refused = httpx.post(f"{to_refusing.http}/v1/send", json={"tls": True},
                         timeout=30).json()["results"][0]
    rejected = httpx.post(f"{to_rejecting.http}/v1/send", json={"tls": True},
                          timeout=30).json()["results"][0]

    assert refused["ok"] is True and refused["tls_refused"] is True
    assert refused["tls_version"] is None
    stats = refusing.wait_sessions(1)
    assert stats["plain"]["messages"] == 1 and stats["tls"]["sessions"] == 0
    assert stats["plain"]["errors"]["starttls_refused"] == 1
    assert rejected["ok"] is False and rejected["code"] == 554
    assert rejecting.wait_sessions(1)["plain"]["errors"]["rejected_at_connect"] == 1


def test_the_sender_process_on_uvloop_counts_the_bytes_the_receiver_counts(receiver):
    """`tlsstorm sender` runs on uvloop (the in-process fixtures on asyncio's loop): its bytes
    per message, read from TCP_INFO before the socket closes, are the receiver's bytes in."""
    sender = ServiceProcess("sender", {"OTEL_SDK_DISABLED": "true",
                                       "TLSSTORM_SENDER_TARGET": f"127.0.0.1:{receiver.smtp_port}"})
    try:
        sent = 0
        for tls in (False, True):
            results = httpx.post(f"{sender.http}/v1/send", timeout=30, json={
                "tls": tls, "count": 2, "per_connection": 2, "wave": "uv"}).json()["results"]
            assert all(result["ok"] for result in results), results
            sent += sum(result["bytes_sent"] for result in results)
    finally:
        sender.stop()
    stats = receiver.wait_sessions(2)
    counted_in = stats["plain"]["wire_bytes_in"] + stats["tls"]["wire_bytes_in"]
    # The receiver also counts the STARTTLS session's close_notify (24 bytes), sent after the
    # sender's last count, and may count each session's FIN (two sessions): a socket already
    # closed both ways (TCP_CLOSE) cannot say whether a FIN or a reset ended it, so its FIN is
    # not taken off.
    assert 0 <= counted_in - sent <= 24 + 2, (counted_in, sent)


def test_the_engine_thread_holds_the_conversations_and_its_cpu_is_the_sender_process_s(
    receiver
):
    """The SMTP engine runs on a thread of the sender's own (named, so benches can split its
    CPU out): its CPU is inside the process's, which the kernel counts for every thread, and
    the conversations are its work, not the event loop's."""
    sender = ServiceProcess("sender", {"OTEL_SDK_DISABLED": "true",
                                       "TLSSTORM_SENDER_TARGET": f"127.0.0.1:{receiver.smtp_port}"})
    try:
        engine_before = thread_cpu_seconds_of(sender.pid, "tlsstorm-engine")
        process_before = cpu_seconds_of(sender.pid)
        results = httpx.post(f"{sender.http}/v1/send", timeout=60, json={
            "tls": True, "count": 40, "per_connection": 1}).json()["results"]
        engine = thread_cpu_seconds_of(sender.pid, "tlsstorm-engine") - engine_before
        process = cpu_seconds_of(sender.pid) - process_before
        names = [(task / "comm").read_text().strip()
                 for task in Path(f"/proc/{sender.pid}/task").iterdir()]
    finally:
        sender.stop()

    assert all(result["ok"] for result in results), results
    assert names.count("tlsstorm-engine") == 1, names
    # 40 full handshakes: at least the client's half of each (~250 us here) in the engine.
    assert engine > 40 * 100e-6, engine
    assert engine < process, (engine, process)


def _peak_rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE).group(1)) / 1024


@pytest.mark.parametrize("per_connection", [40, 1])
def test_large_messages_are_held_a_few_at_a_time(receiver, per_connection):
    """The largest values the API takes (10 MiB messages, 1,000 to a connection, 100,000 in
    a request) must not make the sender hold every message at once: 40 messages of 4 MiB, on
    one connection or on 40 handed to the engine a window at a time, 160 MiB in all, raise its
    peak RSS by a few messages' worth at most."""
    sender = ServiceProcess("sender", {"OTEL_SDK_DISABLED": "true",
                                       "TLSSTORM_SENDER_TARGET": f"127.0.0.1:{receiver.smtp_port}"})
    try:
        httpx.post(f"{sender.http}/v1/send", timeout=60,
                   json={"tls": True, "size": 4 << 20}).raise_for_status()
        before = _peak_rss_mib(sender.pid)
        results = httpx.post(f"{sender.http}/v1/send", timeout=120, json={
            "tls": True, "count": 40, "per_connection": per_connection,
            "size": 4 << 20}).json()["results"]
        grown = _peak_rss_mib(sender.pid) - before
    finally:
        sender.stop()

    assert all(result["ok"] for result in results), results[:2]
    assert grown < 40, f"peak RSS grew by {grown:.0f} MiB for 160 MiB of messages"


def test_the_sender_process_keeps_what_it_built_at_start_out_of_the_garbage_collectors_walk(
    receiver
):
    sender = ServiceProcess("sender", {"OTEL_SDK_DISABLED": "true",
                                       "TLSSTORM_SENDER_TARGET": f"127.0.0.1:{receiver.smtp_port}"})
    try:
        metrics = httpx.get(f"{sender.http}/metrics", timeout=10).text
    finally:
        sender.stop()

    frozen = re.search(r"^tlsstorm_gc_frozen_objects ([\d.e+]+)$", metrics, re.MULTILINE)
    assert frozen, metrics
    assert float(frozen.group(1)) > 10_000  # the app, its modules and settings: ~80,000
    assert 'python_gc_collections_total{generation="2"}' in metrics


@pytest.mark.parametrize("payload", [
    {"tls": []},
    {"tls": [True, False], "count": 5},
    {"tls": [True], "per_connection": 2, "count": 1, "extra": 1},
])
def test_bad_batches_get_a_422_with_a_reason(sender, payload):
    response = httpx.post(f"{sender.http}/v1/batch", json=payload)

    assert response.status_code == 422
    assert response.json()["detail"]


def test_a_batch_sends_its_connections_in_order_at_its_tls_flags(sender, receiver):
    flags = [True, False, False, True, False]
    body = httpx.post(f"{sender.http}/v1/batch", timeout=30, json={
        "tls": flags, "count": 9, "per_connection": 2, "wave": "batch"}).json()

    results = body["results"]
    assert [result["tls"] for result in results] == [
        tls for tls in flags for _ in range(2)][:9]
    assert all(result["ok"] for result in results)
    stats = receiver.wait_sessions(5)
    assert (stats["tls"]["sessions"], stats["plain"]["sessions"]) == (2, 3)


def test_a_batch_begins_each_connection_when_the_one_before_has_ended(start_sender):
    """The engine holds a batch's whole list: one connection at a time, as one bot works. The
    server greets each only after 60 ms, so connections begun together would arrive together."""

    def greet_late(connection: socket.socket) -> None:
        with connection:
            time.sleep(0.06)
            connection.sendall(b"554 5.3.2 no service here\r\n")
            connection.settimeout(5)
            with contextlib.suppress(OSError):
                while connection.recv(1024):
                    pass

    def serve(connection: socket.socket) -> None:
        threading.Thread(target=greet_late, args=(connection,), daemon=True).start()

    with _accepting(serve) as (port, arrivals):
        sender = start_sender(port, timeout_s=5)
        body = httpx.post(f"{sender.http}/v1/batch", timeout=30,
                          json={"tls": [False, True, False, False]}).json()

    assert [result["code"] for result in body["results"]] == [554] * 4, body
    gaps_ms = [(later - earlier) * 1000 for earlier, later in itertools.pairwise(arrivals)]
    assert len(arrivals) == 4 and min(gaps_ms) >= 50, gaps_ms


def test_every_message_of_a_refused_starttls_session_says_it_went_plain(
    start_receiver, start_sender
):
    refusing = start_receiver(refuse_starttls_from="127.0.0.0/8")
    sender = start_sender(refusing.smtp_port)

    results = httpx.post(f"{sender.http}/v1/send", timeout=30, json={
        "tls": True, "count": 3, "per_connection": 3}).json()["results"]

    assert [result["tls_refused"] for result in results] == [True, True, True]
    assert all(result["ok"] and result["tls_version"] is None for result in results)


class _SlowServer:
    """Plain SMTP that holds each message 100 ms before its 250, one thread a connection,
    counting the connections open at once (open from accept to the client's close)."""

    HOLD_S = 0.1

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.open = self.peak = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                self.open += 1
                self.peak = max(self.peak, self.open)
            threading.Thread(target=self._serve, args=(connection,), daemon=True).start()

    def _serve(self, connection: socket.socket) -> None:
        with connection, connection.makefile("rb") as lines:
            connection.sendall(b"220 slow.test\r\n")
            in_data = False
            for line in lines:
                if in_data:
                    if line == b".\r\n":
                        in_data = False
                        time.sleep(self.HOLD_S)
                        connection.sendall(b"250 ok\r\n")
                    continue
                verb = line[:4].upper()
                if verb == b"DATA":
                    in_data = True
                    connection.sendall(b"354 go on\r\n")
                elif verb == b"QUIT":
                    connection.sendall(b"221 bye\r\n")
                else:
                    connection.sendall(b"250 ok\r\n")
        with self.lock:
            self.open -= 1

    def close(self) -> None:
        self.listener.close()


def test_the_concurrency_cap_refuses_more_and_holds_a_wave_to_it(start_sender):
    """TLSSTORM_SENDER_MAX_CONCURRENCY: a wave asking for more than the cap is refused (422,
    naming it); waves whose rate would need 40 connections at once (100 ms sessions at 400/s)
    have as many open as they ask, 4 or 12, not more (the server may still hold, for a
    moment, the one the sender has just closed)."""
    server = _SlowServer()
    sender = start_sender(server.port, max_concurrency=12)
    try:
        refused = httpx.post(f"{sender.http}/v1/waves", json={"rate": 200, "count": 10,
                                                               "concurrency": 13})
        assert refused.status_code == 422 and "cap 12" in refused.text, refused.text
        peaks = {}
        for concurrency in (4, 12):
            server.peak = 0
            started = httpx.post(f"{sender.http}/v1/waves", json={
                "rate": 400, "count": 200, "concurrency": concurrency}).json()
            deadline = time.monotonic() + 60
            while httpx.get(f"{sender.http}{started['url']}").json()["status"] == "running":
                assert time.monotonic() < deadline
                time.sleep(0.2)
            peaks[concurrency] = server.peak
    finally:
        server.close()
    print(f"connections open at once, by the wave's concurrency: {peaks}")
    assert all(wanted <= peak <= wanted + 1 for wanted, peak in peaks.items()), peaks
