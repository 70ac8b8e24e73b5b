"""The local stack's layout: which services run, on which ports, wired to each other."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from tlsstorm.common.config import CollectorSettings, ReceiverSettings, SenderSettings
from tlsstorm.common.telemetry import endpoint_configured
from tlsstorm.localstack import jaeger
from tlsstorm.localstack.mta import LOCAL_TARGETS, local_target, pinned
from tlsstorm.localstack.processes import CHECKOUT, Child, Stack, tlsstorm_command
from tlsstorm.sender.allowlist import LOOPBACK

_ANY = ("0.0.0.0", "::", "")
# Spans reach the collector within a second, and a burst does not overflow the exporter queue.
_EXPORT_DEFAULTS = {"OTEL_BSP_SCHEDULE_DELAY": "1000", "OTEL_BSP_MAX_QUEUE_SIZE": "65536",
                    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "2048"}
# Locust's --otel also exports metrics and logs, and defaults to gRPC; the collector takes traces
# over OTLP/HTTP.
_LOCUST_OTEL = {"OTEL_SERVICE_NAME": "locust", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                "OTEL_METRICS_EXPORTER": "none", "OTEL_LOGS_EXPORTER": "none"}
LOCUST_WEB_PORT = int(os.environ.get("TLSSTORM_LOCUST_WEB_PORT", "8089"))


def _reachable(host: str) -> str:
    return "127.0.0.1" if host in _ANY else host


def _url(host: str, port: int, path: str = "") -> str:
    return f"http://{_reachable(host)}:{port}{path}"


def locustfile() -> Path:
    """load/locustfile.py of this checkout, or wherever TLSSTORM_LOCUSTFILE says."""
    configured = os.environ.get("TLSSTORM_LOCUSTFILE")
    path = Path(configured) if configured else \
        CHECKOUT / "load" / "locustfile.py"
    if not path.is_file():
        raise SystemExit(f"no locustfile at {path}: set TLSSTORM_LOCUSTFILE to load/locustfile.py")
    return path


class LocalStack:
    """Collector, receiver, sender (and the Locust web UI, and Jaeger) as child processes, wired
    together. With `jaeger_binary` the collector forwards every span to that Jaeger.

    `target`: what the sender aims at by default: the receiver (None), a real mail server the
    stack starts with its meter ("postfix", "exim"), or the user's own server as HOST:PORT,
    whose CPU comes from the meter at `meter_url` (tlsstorm meter, run beside it)."""

    def __init__(self, with_locust: bool = False, tracing: bool = True,
                 jaeger_binary: Path | None = None, target: str | None = None,
                 meter_url: str | None = None) -> None:
        self.collector = CollectorSettings()
        self.receiver = ReceiverSettings()
        self.sender = SenderSettings()
        self.receiver_target = f"{_reachable(self.receiver.host)}:{self.receiver.smtp_port}"
        self.telemetry = {name: value for name, value in _EXPORT_DEFAULTS.items()
                          if name not in os.environ}
        # Without tracing (cost sweeps) no span is built: the CPU measured is the SMTP work's.
        self.tracing = tracing
        if tracing and not endpoint_configured():
            self.telemetry["OTEL_EXPORTER_OTLP_ENDPOINT"] = self.collector_url()
        if not tracing:
            self.telemetry["OTEL_SDK_DISABLED"] = "true"
        self.target_name, self.target, self.meter_url = "receiver", self.receiver_target, None
        targets: list[Child] = []
        if target in LOCAL_TARGETS:
            local = local_target(target, int(os.environ.get("TLSSTORM_TARGET_SMTP_PORT", 2526)),
                                 int(os.environ.get("TLSSTORM_METER_HTTP_PORT", 8028)),
                                 self.telemetry)
            self.target_name, self.target, self.meter_url = target, local.address, local.meter_url
            targets = local.children
            self._target_files = local.files  # held while the stack lives
        elif target not in (None, "receiver"):
            self.target_name = self.target = target
            self.meter_url = meter_url
        # Locust's web UI offers each of these by name (the receiver first, the default).
        self.targets = {"receiver": self.receiver_target}
        if self.target_name != "receiver":
            self.targets[self.target_name] = self.target
        sender_env = dict(self.telemetry)
        if "TLSSTORM_SENDER_TARGET" not in os.environ:
            sender_env["TLSSTORM_SENDER_TARGET"] = self.target
        if target == "postfix" and "TLSSTORM_SENDER_QUICK_ACK" not in os.environ:
            # Postfix's first write after STARTTLS otherwise waits ~40 ms on the client's
            # delayed ACK on loopback: a client's artefact in every TLS session's latency.
            sender_env["TLSSTORM_SENDER_QUICK_ACK"] = "true"
        if "TLSSTORM_ALLOWED_TARGETS" not in os.environ:
            # The receiver, the target (a user's server only when named here) and loopback.
            sender_env["TLSSTORM_ALLOWED_TARGETS"] = ",".join(
                dict.fromkeys([*self.targets.values(), *LOOPBACK]))
        children = []
        collector_env = {}
        self.with_jaeger = jaeger_binary is not None
        if jaeger_binary is not None:
            config = jaeger.config_file(jaeger.render_config())
            children.append(Child("jaeger", jaeger.command(jaeger_binary, config),
                                  jaeger.health_url()))
            if "TLSSTORM_FORWARD_OTLP_ENDPOINT" not in os.environ:
                collector_env["TLSSTORM_FORWARD_OTLP_ENDPOINT"] = jaeger.otlp_endpoint()
        children += [
            Child("collector", tlsstorm_command("collector"), self.collector_url("/readyz"),
                  env=collector_env),
            # Pinned like a local MTA when it is the server measured (TLSSTORM_TARGET_CPUS).
            Child("receiver", [*(pinned() if self.target_name == "receiver" else []),
                               *tlsstorm_command("receiver")], self.receiver_url("/readyz"),
                  env=self.telemetry),
            *targets,
            Child("sender", tlsstorm_command("sender"), self.sender_url("/readyz"),
                  env=sender_env),
        ]
        if with_locust:
            children.append(Child("locust", self.locust_command(
                "--class-picker", "--web-host", "127.0.0.1", "--web-port", str(LOCUST_WEB_PORT),
                "--users", "10", "--spawn-rate", "10", "SpamViaSender"),
                self.locust_url("/"), env=self.locust_env()))
        self.stack = Stack(children)

    def locust_command(self, *args: str) -> list[str]:
        command = [sys.executable, "-m", "locust", "-f", str(locustfile()),
                   "--host", self.sender_url()]
        if self.tracing:
            command.append("--otel")
        return [*command, *args]

    def locust_env(self) -> dict[str, str]:
        env = {**self.telemetry, **{k: v for k, v in _LOCUST_OTEL.items() if k not in os.environ}}
        # DirectSmtpBot (no sender, no spans) stays on the receiver: the collector could not
        # tell its load on a metered server from the sender's.
        env.setdefault("LOCUST_SMTP_TARGET", self.receiver_target)
        env.setdefault("TLSSTORM_TARGETS", ",".join(
            f"{name}={address}" for name, address in self.targets.items()))
        return env

    def collector_url(self, path: str = "") -> str:
        return _url(self.collector.host, self.collector.http_port, path)

    def receiver_url(self, path: str = "") -> str:
        return _url(self.receiver.host, self.receiver.http_port, path)

    def sender_url(self, path: str = "") -> str:
        return _url(self.sender.host, self.sender.http_port, path)

    def locust_url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{LOCUST_WEB_PORT}{path}"

    def urls(self) -> dict[str, str]:
        urls = {
            "Locust web UI": self.locust_url("/"),
            "cost report": self.collector_url("/"),
            "receiver SMTP": f"smtp://{self.receiver_target} (STARTTLS offered)",
            **({f"target {self.target_name}": f"smtp://{self.target} (STARTTLS offered)"}
               if self.target_name != "receiver" else {}),
            **({"target's meter": f"{self.meter_url}/v1/stats"} if self.meter_url else {}),
            "receiver stats": self.receiver_url("/v1/stats"),
            "sender API": self.sender_url("/docs"),
            "collector summary": self.collector_url("/v1/summary"),
        }
        if not any(child.name == "locust" for child in self.stack.children):
            del urls["Locust web UI"]
        if self.with_jaeger:
            urls["Jaeger UI"] = jaeger.ui_url()
        return urls
