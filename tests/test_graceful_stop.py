"""The receiver stopped as Kubernetes stops a pod (SIGTERM, issue 34): it turns not ready but
serves while a Service drops it, then takes no new connection or transaction, lets open ones
finish, and exports the spans of every session before it exits. Checked against the clients
(what each was answered) and the collector (one session per client, none lost, none twice)."""

from __future__ import annotations

import smtplib
import socket
import ssl
import time

import httpx
import pytest

from tests.helpers import deliver
from tests.receiver_process import ReceiverProcess

BODY = b"Subject: drained\r\n\r\nhello\r\n"


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


def _wait_for(condition, timeout_s: float = 20):
    deadline = time.monotonic() + timeout_s
    while not (found := condition()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)
    return found


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
    _wait_for(lambda: _ready(receiver) == 503)
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
    assert _wait_for(lambda: _collector_sessions(collector)["plain"][0] >= 2 + probes
                     and _collector_sessions(collector)) == {
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
    assert _wait_for(lambda: _collector_sessions(collector)["starttls"][0] == 1
                     and _collector_sessions(collector)) == {
        "plain": (0, 0, 0), "starttls": (1, 0, 1)}
