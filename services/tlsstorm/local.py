"""The local stack's layout: which services run, on which ports, wired to each other."""

from __future__ import annotations

import os

from tlsstorm.common.config import CollectorSettings, ReceiverSettings, SenderSettings
from tlsstorm.stack import Child, Stack

_ANY = ("0.0.0.0", "::", "")
# Spans reach the collector within a second, and a burst does not overflow the exporter queue.
_EXPORT_DEFAULTS = {"OTEL_BSP_SCHEDULE_DELAY": "1000", "OTEL_BSP_MAX_QUEUE_SIZE": "65536",
                    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "2048"}


def _reachable(host: str) -> str:
    return "127.0.0.1" if host in _ANY else host


def _url(host: str, port: int, path: str = "") -> str:
    return f"http://{_reachable(host)}:{port}{path}"


class LocalStack:
    """Collector, receiver and sender as child processes, wired to each other."""

    def __init__(self) -> None:
        self.collector = CollectorSettings()
        self.receiver = ReceiverSettings()
        self.sender = SenderSettings()
        self.receiver_target = f"{_reachable(self.receiver.host)}:{self.receiver.smtp_port}"
        telemetry = {name: value for name, value in _EXPORT_DEFAULTS.items()
                     if name not in os.environ}
        if not _export_configured_in_env():
            telemetry["OTEL_EXPORTER_OTLP_ENDPOINT"] = self.collector_url()
        sender_env = dict(telemetry)
        if "TLSSTORM_SENDER_TARGET" not in os.environ:
            sender_env["TLSSTORM_SENDER_TARGET"] = self.receiver_target
        self.stack = Stack([
            Child("collector", ["collector"], self.collector_url("/readyz")),
            Child("receiver", ["receiver"], self.receiver_url("/readyz"), env=telemetry),
            Child("sender", ["sender"], self.sender_url("/readyz"), env=sender_env),
        ])

    def collector_url(self, path: str = "") -> str:
        return _url(self.collector.host, self.collector.http_port, path)

    def receiver_url(self, path: str = "") -> str:
        return _url(self.receiver.host, self.receiver.http_port, path)

    def sender_url(self, path: str = "") -> str:
        return _url(self.sender.host, self.sender.http_port, path)

    def urls(self) -> dict[str, str]:
        return {
            "cost report": self.collector_url("/"),
            "receiver SMTP": f"smtp://{self.receiver_target} (STARTTLS offered)",
            "receiver stats": self.receiver_url("/v1/stats"),
            "sender API": self.sender_url("/docs"),
            "collector summary": self.collector_url("/v1/summary"),
        }


def _export_configured_in_env() -> bool:
    return any(name in os.environ for name in (
        "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
