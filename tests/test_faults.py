"""Faults on one machine (issue 34), each reconciled against an end that did not fail.

The receiver stopped as Kubernetes stops a pod (SIGTERM): it turns not ready but serves while
a Service drops it, then takes no new connection or transaction, lets open ones finish, and
exports the spans of every session before it exits; checked against the clients (what each was
answered) and the collector (one session per client, none lost, none twice). The receiver
killed (SIGKILL) and restarted mid-wave: what it had not exported is lost, and the collector
says how much of what the sender was told was accepted, and that it restarted. The collector
killed mid-wave: it acknowledges spans only once committed, so the exporters send again what
it had not written, and nothing is lost."""

from __future__ import annotations

import html
import smtplib
import socket
import ssl
import time

import httpx
import pytest

from tests.helpers import deliver, wait_for
from tests.receiver_process import ReceiverProcess, ServiceProcess

BODY = b"Subject: drained\r\n\r\nhello\r\n"


@pytest.fixture(autouse=True)
def no_process_left(monkeypatch):
    """Every service process a test starts is gone after it, passed or failed (a test that
    fails mid-fault must not leave a receiver waiting on a collector that has stopped)."""
    started: list[ServiceProcess] = []
    original = ServiceProcess.__init__

    def recorded(self, *args, **kwargs) -> None:
        original(self, *args, **kwargs)
        started.append(self)

    monkeypatch.setattr(ServiceProcess, "__init__", recorded)
    yield
    for service in started:
        if service.process.poll() is None:
            service.process.kill()
            service.process.wait(10)


def _client(port: int, *, tls: bool) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=10)
    client.ehlo()
    if tls:
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        client.starttls(context=context)
        client.ehlo()
    return client


def _in_transaction(port: int, *, tls: bool) -> smtplib.SMTP:
    client = _client(port, tls=tls)
    assert client.mail("spammer@client.test")[0] == 250
    assert client.rcpt("victim@receiver.tlsstorm.test")[0] == 250
    return client


def _ready(receiver: ReceiverProcess) -> int:
    return httpx.get(f"{receiver.http}/readyz", timeout=5).status_code


def _collector_sessions(collector) -> dict:
    receiver = httpx.get(f"{collector.http}/v1/summary", timeout=10).json()["receiver"]
    return {mode: (receiver[mode]["sessions"], receiver[mode]["messages"],
                   receiver[mode]["errors"].get("shut_down", 0))
            for mode in ("plain", "starttls")}


def test_sigterm_drains_open_transactions_and_exports_every_session(start_collector):
    collector = start_collector()
    receiver = ReceiverProcess({"OTEL_EXPORTER_OTLP_ENDPOINT": collector.http,
                                "OTEL_BSP_SCHEDULE_DELAY": "5000",  # spans still queued at stop
                                "TLSSTORM_RECEIVER_DRAIN_DELAY_S": "1.5"})
    idle = _client(receiver.smtp_port, tls=False)
    plain = _in_transaction(receiver.smtp_port, tls=False)
    starttls = _in_transaction(receiver.smtp_port, tls=True)

    receiver.process.terminate()
    # Not ready at once, yet serving while a Service would still send it connections.
    wait_for(lambda: _ready(receiver) == 503, timeout=20)
    deliver(receiver.smtp_port, tls=True)
    # Then no new connection (each probe accepted until then is a session, counted below);
    # the open transactions finish and are accepted.
    probes = _connect_until_refused(receiver.smtp_port)
    assert plain.data(BODY)[0] == 250
    assert starttls.data(BODY)[0] == 250
    # ... and the next transaction is refused the way an MTA refuses it while stopping.
    assert plain.mail("spammer@client.test")[0] == 421
    assert starttls.mail("spammer@client.test")[0] == 421
    # The session that was between transactions was told at once.
    assert idle.noop()[0] == 421
    assert receiver.process.wait(10) == 0, receiver.process.stderr.read()

    # Every session is in the collector once, with its messages and the two told at the end.
    assert wait_for(lambda: _collector_sessions(collector)["plain"][0] >= 2 + probes
                    and _collector_sessions(collector), timeout=20) == {
        "plain": (2 + probes, 1, 2), "starttls": (2, 2, 1)}


def _connect_until_refused(port: int) -> int:
    """How many connections were accepted before the listener closed."""
    accepted = 0
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        except ConnectionRefusedError:
            return accepted
        accepted += 1
        assert accepted < 200, "still accepting"
        time.sleep(0.1)


def test_a_transaction_past_the_drain_deadline_is_cut_and_counted(start_collector):
    collector = start_collector()
    receiver = ReceiverProcess({"OTEL_EXPORTER_OTLP_ENDPOINT": collector.http,
                                "TLSSTORM_RECEIVER_DRAIN_TIMEOUT_S": "1"})
    stuck = _in_transaction(receiver.smtp_port, tls=True)
    stuck.putcmd("data")
    assert stuck.getreply()[0] == 354
    stuck.send(b"Subject: never ends\r\n\r\n")  # and no end of data

    receiver.process.terminate()
    assert receiver.process.wait(10) == 0, receiver.process.stderr.read()
    with pytest.raises(smtplib.SMTPServerDisconnected):
        stuck.send(b".\r\n")
        stuck.getreply()
    # Cut, not lost: the session is counted, with no message and the reason.
    assert wait_for(lambda: _collector_sessions(collector)["starttls"][0] == 1
                    and _collector_sessions(collector), timeout=20) == {
        "plain": (0, 0, 0), "starttls": (1, 0, 1)}


def _report(collector, wave_id: str) -> str:
    """The report's text, as a reader sees it."""
    return html.unescape(httpx.get(f"{collector.http}/?wave={wave_id}").text)


def _wave(sender: ServiceProcess, **spec) -> str:
    started = httpx.post(f"{sender.http}/v1/waves", json=spec, timeout=10)
    assert started.status_code == 202, started.text
    return started.json()["id"]


def _finished(sender: ServiceProcess, wave_id: str) -> dict:
    return wait_for(lambda: (wave := httpx.get(f"{sender.http}/v1/waves/{wave_id}").json())
                    ["status"] != "running" and wave, timeout=60)


def _delivery_when_senders_spans_are_in(collector, wave_id: str, wave: dict) -> dict:
    """The collector's delivery account of a wave once the sender's spans of every accepted
    message are in (the sender exported them all: it was not the one killed)."""
    accepted = {"plain": wave["plain"]["ok"], "starttls": wave["tls"]["ok"]}

    def delivery() -> dict | None:
        summary = httpx.get(f"{collector.http}/v1/summary", params={"wave": wave_id})
        found = summary.json().get("delivery") if summary.status_code == 200 else None
        return found if found and found["accepted_by_senders"] == accepted else None

    return wait_for(delivery, timeout=20)


def test_a_receiver_killed_mid_wave_loses_only_what_it_had_not_exported_and_it_is_shown(
        start_collector):
    collector = start_collector()
    tracing = {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.http, "OTEL_BSP_SCHEDULE_DELAY": "2000"}
    killed = ReceiverProcess(tracing)
    port = str(killed.smtp_port)
    sender = ServiceProcess("sender", {**tracing, "TLSSTORM_SENDER_TARGET": f"127.0.0.1:{port}"})
    try:
        # A wave with no fault: every accepted message is in a receiver's session, said so.
        clean = _wave(sender, rate=100, count=100, tls_ratio=0.5)
        delivery = _delivery_when_senders_spans_are_in(collector, clean,
                                                       _finished(sender, clean))
        assert wait_for(lambda: httpx.get(f"{collector.http}/v1/summary", params={
            "wave": clean}).json()["delivery"]["at_receivers"] == delivery[
                "accepted_by_senders"], timeout=20)
        assert "Every one of the 100 messages the senders were told were accepted is in a " \
            "receiver's session here." in _report(collector, clean)

        # 3 s into a wave of 8 s, the receiver is killed and another starts on its port.
        cut = _wave(sender, rate=100, count=800, tls_ratio=0.5)
        time.sleep(3)
        killed.process.kill()
        killed.process.wait(10)
        restarted = ReceiverProcess({**tracing, "TLSSTORM_RECEIVER_SMTP_PORT": port})
        wave = _finished(sender, cut)
        time.sleep(1)  # the last sessions close
        after_restart = restarted.stats()
        restarted.stop()  # its spans flushed: all it took is in the collector
        delivery = _delivery_when_senders_spans_are_in(collector, cut, wave)
        accepted = sum(delivery["accepted_by_senders"].values())
    finally:
        sender.stop()

    missing = sum(delivery["missing_at_receivers"].values())
    # Lost: at most what the killed receiver took since its last export (2 s at 100/s, and
    # the sessions open), never what the restarted one took (all of its sessions are here).
    assert 0 < missing <= 100 * 3, delivery
    assert sum(delivery["at_receivers"].values()) + missing == accepted, delivery
    assert after_restart["plain"]["messages"] + after_restart["tls"]["messages"] <= \
        sum(delivery["at_receivers"].values()), delivery
    assert delivery["receiver_starts"] == 1 and delivery["extra_at_receivers"] == {
        "plain": 0, "starttls": 0}, delivery
    report = _report(collector, cut)
    assert (f"INCOMPLETE: of the {accepted:,} messages the senders were told were accepted, "
            f"{missing:,} have no receiver session here") in report
    assert "1 receiver process started meanwhile (a restart)" in report


def test_the_collector_killed_mid_wave_loses_nothing_it_acknowledged(tmp_path):
    """SIGKILL to the collector 3 s into a wave, restarted on its file 2 s later: its SQLite
    (WAL) keeps every commit, and what it had not committed it had not acknowledged, so the
    exporters' retries bring it. Both ends' spans of every message are there once."""
    collector_env = {"TLSSTORM_COLLECTOR_DB_PATH": str(tmp_path / "results.sqlite")}
    collector = ServiceProcess("collector", collector_env)
    port = collector.http.rsplit(":", 1)[1]
    tracing = {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.http, "OTEL_BSP_SCHEDULE_DELAY": "500"}
    receiver = ReceiverProcess(tracing)
    sender = ServiceProcess("sender", {**tracing,
                                       "TLSSTORM_SENDER_TARGET": f"127.0.0.1:{receiver.smtp_port}"})
    restarted = None
    try:
        wave_id = _wave(sender, rate=100, count=800, tls_ratio=0.5)
        time.sleep(3)
        collector.process.kill()
        collector.process.wait(10)
        time.sleep(2)
        restarted = ServiceProcess("collector", {**collector_env,
                                                 "TLSSTORM_COLLECTOR_HTTP_PORT": port})
        wave = _finished(sender, wave_id)
        time.sleep(1)  # the last sessions close
        at_receiver = receiver.stats()
        delivery = _delivery_when_senders_spans_are_in(restarted, wave_id, wave)
        accepted = delivery["accepted_by_senders"]
        assert sum(accepted.values()) == 800, wave
        assert wait_for(lambda: httpx.get(f"{restarted.http}/v1/summary", params={
            "wave": wave_id}).json()["delivery"]["at_receivers"] == accepted, timeout=20)
        summary = httpx.get(f"{restarted.http}/v1/summary", params={"wave": wave_id}).json()
    finally:
        for service in (sender, receiver, restarted or collector):
            service.stop()
    assert (summary["receiver"]["plain"]["sessions"], summary["receiver"]["starttls"][
        "sessions"]) == (at_receiver["plain"]["sessions"], at_receiver["tls"]["sessions"])
    assert summary["delivery"]["extra_at_receivers"] == {"plain": 0, "starttls": 0}
