"""Plain and STARTTLS delivery from independent clients; the receiver counts each exactly."""

from __future__ import annotations

import os
import re
import shutil
import smtplib
import subprocess

import httpx
import pytest

from tests.helpers import deliver
from tests.smtp_codes import S220_READY_TLS, S250_OK, S530_STARTTLS_FIRST


def test_stdlib_smtplib_plain_and_starttls_are_counted_per_mode(receiver, any_cert_context):
    for _ in range(3):
        deliver(receiver.smtp_port, tls=False)
    for _ in range(2):
        deliver(receiver.smtp_port, tls=True, context=any_cert_context)

    stats = receiver.wait_sessions(5)

    assert (stats["plain"]["sessions"], stats["plain"]["messages"]) == (3, 3)
    assert (stats["tls"]["sessions"], stats["tls"]["messages"]) == (2, 2)
    assert stats["tls"]["handshakes_ok"] == 2
    assert stats["tls"]["handshakes_failed"] == 0
    assert stats["tls"]["handshake_ms"]["count"] == 2
    assert 0 < stats["tls"]["handshake_ms"]["p50"] <= stats["tls"]["handshake_ms"]["p99"]
    assert stats["plain"]["handshake_ms"]["count"] == 0
    assert stats["plain"]["errors"] == {} and stats["tls"]["errors"] == {}
    # Per plain session: 220 greeting, 250 EHLO (one final line each), MAIL, RCPT, DATA, 221.
    assert stats["plain"]["replies"] == {"220": 3, "221": 3, "250": 12, "354": 3}
    assert stats["process"]["cpu_seconds"] > 0 and stats["process"]["rss_bytes"] > 0


def test_several_messages_on_one_connection(receiver, any_cert_context):
    with smtplib.SMTP("127.0.0.1", receiver.smtp_port, local_hostname="client.test") as client:
        client.starttls(context=any_cert_context)
        for number in range(4):
            client.sendmail("a@client.test", ["b@receiver.test"], f"Subject: {number}\r\n\r\nx")

    stats = receiver.wait_sessions(1)

    assert stats["tls"]["sessions"] == 1
    assert stats["tls"]["messages"] == 4


@pytest.mark.skipif(shutil.which("openssl") is None and os.environ.get("CI") != "true",
                    reason="openssl CLI not installed")
def test_openssl_s_client_starttls_delivery(receiver):
    dialogue = (
        "EHLO client.test\r\nMAIL FROM:<spammer@client.test>\r\n"
        "RCPT TO:<victim@receiver.test>\r\nDATA\r\n"
        "Subject: from openssl\r\n\r\nhello\r\n.\r\nQUIT\r\n"
    )
    finished = subprocess.run(
        ["openssl", "s_client", "-starttls", "smtp", "-connect",
         f"127.0.0.1:{receiver.smtp_port}", "-crlf", "-quiet", "-ign_eof"],
        input=dialogue.replace("\r\n", "\n"), capture_output=True, text=True, timeout=30,
    )

    assert "250 2.0.0 OK" in finished.stdout, finished.stdout + finished.stderr
    stats = receiver.wait_sessions(1)
    assert stats["tls"]["sessions"] == 1
    assert stats["tls"]["messages"] == 1
    assert stats["tls"]["handshakes_ok"] == 1


def test_sender_deliveries_match_receiver_counts(sender, receiver):
    for tls, count in ((False, 3), (True, 2)):
        response = httpx.post(f"{sender.http}/v1/send", json={"tls": tls, "count": count},
                              timeout=30)
        assert response.status_code == 200, response.text
        results = response.json()["results"]
        assert [r["ok"] for r in results] == [True] * count
        assert {r["code"] for r in results} == {S250_OK}

    stats = receiver.wait_sessions(5)

    assert (stats["plain"]["sessions"], stats["plain"]["messages"]) == (3, 3)
    assert (stats["tls"]["sessions"], stats["tls"]["messages"]) == (2, 2)


def test_starttls_is_offered_and_answered_ready(receiver):
    with smtplib.SMTP("127.0.0.1", receiver.smtp_port, local_hostname="client.test") as client:
        client.ehlo()
        assert client.has_extn("starttls")
        code, _ = client.docmd("STARTTLS")
        assert code == S220_READY_TLS


def test_require_starttls_refuses_mail_in_plaintext(start_receiver, any_cert_context):
    receiver = start_receiver(require_starttls=True)
    with smtplib.SMTP("127.0.0.1", receiver.smtp_port, local_hostname="client.test") as client:
        client.ehlo()
        code, _ = client.mail("spammer@client.test")
        assert code == S530_STARTTLS_FIRST
    deliver(receiver.smtp_port, tls=True, context=any_cert_context)

    stats = receiver.wait_sessions(2)

    assert stats["tls"]["messages"] == 1
    assert stats["plain"]["messages"] == 0
    assert stats["plain"]["errors"] == {"protocol_error": 1}


def test_stats_reset_and_metrics(receiver, any_cert_context):
    deliver(receiver.smtp_port, tls=True, context=any_cert_context)
    receiver.wait_sessions(1)

    metrics = httpx.get(f"{receiver.http}/metrics").text
    assert 'tlsstorm_receiver_sessions_total{mode="tls"} 1.0' in metrics
    assert 'tlsstorm_receiver_handshakes_total{result="ok"} 1.0' in metrics
    assert "process_cpu_seconds_total" in metrics
    charged = float(re.search(r'^tlsstorm_receiver_session_cpu_seconds_total\{mode="tls"\} (\S+)',
                              metrics, re.MULTILINE).group(1))
    handshake = float(re.search(r"^tlsstorm_receiver_handshake_cpu_seconds_total (\S+)",
                                metrics, re.MULTILINE).group(1))
    assert 0 < handshake < charged
    assert 'tlsstorm_receiver_uncharged_cpu_seconds_total{kind="unowned_callbacks"}' in metrics

    assert httpx.post(f"{receiver.http}/v1/stats/reset").status_code == 200
    assert receiver.stats()["tls"]["sessions"] == 0
    assert httpx.get(f"{receiver.http}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{receiver.http}/readyz").status_code == 200


def test_processing_cost_knobs_charge_each_message(start_receiver):
    receiver = start_receiver(processing_cpu_us=3000, queue_fsync=True)
    for _ in range(3):
        deliver(receiver.smtp_port, tls=False)

    plain = receiver.wait_sessions(3)["plain"]

    assert plain["messages"] == 3
    assert plain["cpu_ms_per_message"] >= 3.0  # the filtering work is the session's
    assert plain["queue_fsyncs"] == 3  # each message written and fsynced to the queue
