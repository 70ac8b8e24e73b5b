"""Fixtures: real receiver and sender services on loopback ports, each on its own event loop."""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator

import pytest

from tests.browser import browser_page  # noqa: F401 - a fixture for the UI tests
from tests.helpers import Running, RunningReceiver
from tlsstorm.collector.app import CollectorService
from tlsstorm.common.config import CollectorSettings, ReceiverSettings, SenderSettings
from tlsstorm.receiver.app import ReceiverService
from tlsstorm.sender.app import SenderService


def _starter(build) -> Iterator[Callable[..., Running]]:
    """A fixture body: start services with `build(**overrides)`; stop them all at teardown."""
    started: list[Running] = []

    def start(*args, **overrides) -> Running:
        running = build(*args, **overrides)
        started.append(running)
        return running

    yield start
    for running in reversed(started):
        running.stop()


@pytest.fixture
def start_receiver() -> Iterator[Callable[..., RunningReceiver]]:
    def build(provider=None, **overrides) -> RunningReceiver:
        settings = ReceiverSettings(**{"smtp_port": 0, "http_port": 0, **overrides})
        return RunningReceiver(ReceiverService(settings, provider))

    yield from _starter(build)


@pytest.fixture
def start_sender() -> Iterator[Callable[..., Running]]:
    def build(target_port: int, provider=None, **overrides) -> Running:
        settings = SenderSettings(
            **{"http_port": 0, "target": f"127.0.0.1:{target_port}", **overrides})
        return Running(SenderService(settings, provider))

    yield from _starter(build)


@pytest.fixture
def receiver(start_receiver) -> RunningReceiver:
    return start_receiver()


@pytest.fixture
def sender(start_sender, receiver) -> Running:
    return start_sender(receiver.smtp_port)


@pytest.fixture
def any_cert_context() -> ssl.SSLContext:
    """A client context that accepts the receiver's self-signed certificate, as bots do."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


@pytest.fixture
def start_collector(tmp_path) -> Iterator[Callable[..., Running]]:
    def build(**overrides) -> Running:
        settings = CollectorSettings(**{
            "http_port": 0, "db_path": tmp_path / "collector.sqlite", "flush_interval_s": 0.2,
            **overrides})
        return Running(CollectorService(settings))

    yield from _starter(build)
