"""What a message cost, as rows in Locust's statistics, and a run-wide message budget."""

from __future__ import annotations

from typing import Any

import gevent
from locust import events
from locust.env import Environment
from locust.exception import StopUser


class SmtpFailure(Exception):
    """A message the receiver did not accept; the text starts with the SMTP reply code."""


def report_message(environment: Environment, *, tls: bool, ok: bool, total_ms: float,
                   wire_bytes: int, failure: str | None, handshake_ms: float | None,
                   direct: bool = False) -> None:
    suffix = " (direct)" if direct else ""
    environment.events.request.fire(
        request_type="SMTP", name=("SMTP STARTTLS" if tls else "SMTP plain") + suffix,
        response_time=total_ms, response_length=wire_bytes,
        exception=None if ok else SmtpFailure(failure or "failed"), context={},
    )
    if handshake_ms is not None:
        environment.events.request.fire(
            request_type="TLS", name="TLS handshake" + suffix, response_time=handshake_ms,
            response_length=0, exception=None, context={},
        )


def report_sender_result(environment: Environment, result: dict[str, Any]) -> None:
    """One result of the sender's /v1/send: its own row, and the handshake's."""
    failure = None
    if not result["ok"]:
        failure = f"{result.get('code') or ''} {result.get('reply') or result.get('error')}"
    report_message(
        environment, tls=result["tls"], ok=result["ok"], total_ms=result["total_ms"],
        wire_bytes=result["bytes_sent"] + result["bytes_received"], failure=failure.strip()
        if failure else None, handshake_ms=result["handshake_ms"],
    )


class MessageBudget:
    """--max-messages: reserve before sending, so exactly that many go out, then end the run.

    A budget lives for one run: each run (a web UI Start, a worker's first spawn) reads the
    limit afresh. Users stop themselves once it is spent; a watcher ends the run when the last
    one has finished its message (ending it from a user would stop the others twice): headless,
    Locust quits; with the web UI, the run stops and the UI stays up for the next one.
    """

    _current: dict[int, MessageBudget] = {}  # noqa: RUF012 (this process's run, per environment)

    def __init__(self, environment: Environment) -> None:
        self.environment = environment
        self.limit = int(environment.parsed_options.max_messages or 0)
        self.used = 0
        self.watcher: gevent.Greenlet | None = None

    @classmethod
    def start_run(cls, environment: Environment, **_kwargs) -> None:
        cls._current[id(environment)] = cls(environment)

    @classmethod
    def of(cls, environment: Environment) -> MessageBudget:
        if id(environment) not in cls._current:
            cls.start_run(environment)
        return cls._current[id(environment)]

    def take(self, wanted: int) -> int:
        """How many of `wanted` messages may go now; stops the user once none may."""
        if not self.limit:
            return wanted
        granted = min(wanted, self.limit - self.used)
        if granted <= 0:
            if self.watcher is None:
                self.watcher = gevent.spawn(self._end_when_idle)
            raise StopUser()
        self.used += granted
        return granted

    def _end_when_idle(self) -> None:
        runner = self.environment.runner
        while runner.user_count:
            gevent.sleep(0.1)
        if self.environment.web_ui is not None:
            runner.stop()
        else:
            runner.quit()


events.test_start.add_listener(MessageBudget.start_run)
