"""The local stack's layout: which services run, on which ports, wired to each other."""

from __future__ import annotations

import os

from tlsstorm.common.config import ReceiverSettings, SenderSettings
from tlsstorm.stack import Child, Stack

_ANY = ("0.0.0.0", "::", "")


def _reachable(host: str) -> str:
    return "127.0.0.1" if host in _ANY else host


def _url(host: str, port: int, path: str = "") -> str:
    return f"http://{_reachable(host)}:{port}{path}"


class LocalStack:
    """Receiver and sender as child processes, the sender aimed at the receiver."""

    def __init__(self) -> None:
        self.receiver = ReceiverSettings()
        self.sender = SenderSettings()
        self.receiver_target = f"{_reachable(self.receiver.host)}:{self.receiver.smtp_port}"
        sender_env = {}
        if "TLSSTORM_SENDER_TARGET" not in os.environ:
            sender_env["TLSSTORM_SENDER_TARGET"] = self.receiver_target
        self.stack = Stack([
            Child("receiver", ["receiver"], self.receiver_url("/readyz")),
            Child("sender", ["sender"], self.sender_url("/readyz"), env=sender_env),
        ])

    def receiver_url(self, path: str = "") -> str:
        return _url(self.receiver.host, self.receiver.http_port, path)

    def sender_url(self, path: str = "") -> str:
        return _url(self.sender.host, self.sender.http_port, path)

    def urls(self) -> dict[str, str]:
        return {
            "receiver SMTP": f"smtp://{self.receiver_target} (STARTTLS offered)",
            "receiver stats": self.receiver_url("/v1/stats"),
            "sender API": self.sender_url("/docs"),
        }
