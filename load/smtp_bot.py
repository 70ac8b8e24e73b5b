"""A bot without the sender: Python's stdlib smtplib, cooperative under Locust's gevent."""

from __future__ import annotations

import os
import smtplib
import ssl
import time

from locust import User, task
from locust.exception import StopUser
from options import next_is_tls, paced
from reporting import MessageBudget, report_message

from tlsstorm.common.wire import wire_bytes
from tlsstorm.sender.allowlist import Allowlist, TargetRefused
from tlsstorm.sender.message import build_message

_CONTEXT = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
_CONTEXT.check_hostname = False
_CONTEXT.verify_mode = ssl.CERT_NONE  # bots accept any certificate


class DirectSmtpBot(User):
    """Speaks SMTP straight to --smtp-target; held to the same allowlist as the sender."""

    wait_time = paced
    messages_in_task = 0

    def on_start(self) -> None:
        self.budget = MessageBudget.of(self.environment)
        options = self.environment.parsed_options
        allowlist = Allowlist(
            [entry for entry in os.environ.get("TLSSTORM_ALLOWED_TARGETS", "").split(",")
             if entry.strip()], options.smtp_target)
        self.refusal: str | None = None
        try:
            self.target = allowlist.check_blocking(options.smtp_target)
        except TargetRefused as refusal:
            self.refusal = str(refusal)
        self.options = options

    @task
    def send_spam(self) -> None:
        if self.refusal:
            # A failure row says why; the bot stops quietly (StopUser in a task, unlike in
            # on_start, is not logged as an error).
            report_message(self.environment, tls=False, ok=False, total_ms=0.0, wire_bytes=0,
                           failure=self.refusal, handshake_ms=None, direct=True)
            raise StopUser()
        count = self.messages_in_task = self.budget.take(
            max(1, self.environment.parsed_options.per_connection))
        tls = next_is_tls(self.environment)
        started = time.perf_counter()
        handshake_ms = failure = None
        delivered, sent_and_received = 0, 0
        body = build_message(self.options.message_size, "bot@tlsstorm.test",
                             "victim@receiver.tlsstorm.test", None, self.options.wave_id or None)
        # No `with`: smtplib's __exit__ sends QUIT and can raise, which would swallow the
        # GreenletExit that Locust uses to stop a user.
        client = None
        try:
            client = smtplib.SMTP(self.target.address, self.target.port,
                                  local_hostname="bot.tlsstorm.test", timeout=30)
            client.ehlo()
            if tls:
                handshake_started = time.perf_counter()
                client.starttls(context=_CONTEXT)
                handshake_ms = (time.perf_counter() - handshake_started) * 1000
                client.ehlo()
            for _ in range(count):
                client.sendmail("bot@tlsstorm.test", ["victim@receiver.tlsstorm.test"], body)
                delivered += 1
            sent_and_received = sum(wire_bytes(client.sock) or (0, 0))
            client.quit()
        except (smtplib.SMTPException, OSError) as error:
            failure = f"{getattr(error, 'smtp_code', '')} {error}".strip()
        finally:
            if client is not None:
                client.close()
        # One row per message, as the sender's results give them: the connection's time and
        # bytes shared out over its messages; the message that failed, if one did, as a failure.
        per_message_ms = (time.perf_counter() - started) * 1000 / max(delivered, 1)
        for index in range(delivered):
            report_message(self.environment, tls=tls, ok=True, total_ms=per_message_ms,
                           wire_bytes=sent_and_received // max(delivered, 1), failure=None,
                           handshake_ms=handshake_ms if index == 0 else None, direct=True)
        if failure is not None:
            report_message(self.environment, tls=tls, ok=False, total_ms=per_message_ms,
                           wire_bytes=0, failure=failure,
                           handshake_ms=handshake_ms if not delivered else None, direct=True)
