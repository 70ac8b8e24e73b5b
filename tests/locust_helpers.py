"""Running Locust for real in tests: headless processes, masters and workers, the web UI."""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

LOAD = Path(__file__).resolve().parents[1] / "load"
LOCUSTFILE = LOAD / "locustfile.py"


_PORTS_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A loopback port free now, never handed out before in this run, and below the kernel's
    ephemeral range (and Kubernetes' NodePorts): the kernel's own pick for port 0 can come
    twice in a row, and a client's connection can take a port between the pick and the bind."""
    while True:
        port = random.randrange(20_000, 30_000)
        if port in _PORTS_HANDED_OUT:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        _PORTS_HANDED_OUT.add(port)
        return port


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TLSSTORM_", "OTEL_", "LOCUST_"))}
    env.update(extra)
    return env


def locust(*args: str, env: dict[str, str] | None = None, locustfile: Path = LOCUSTFILE,
           **popen) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "locust", "-f", str(locustfile), *args],
        env=env or clean_env(), cwd=LOAD, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, **popen)


def finish(process: subprocess.Popen, timeout: float = 120) -> str:
    """Locust's output once it has ended; an exception or ERROR line in it fails the test."""
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        raise AssertionError(f"locust did not finish in {timeout} s:\n{output[-3000:]}") from None
    assert_no_errors(output)
    return output


def error_lines(log: str) -> list[str]:
    """Lines of a Locust log that report an exception or an error (Locust logs them as
    `... ERROR/<logger>: ...` and prints tracebacks of greenlets and handlers)."""
    return [line for line in log.splitlines()
            if "Traceback (most recent call last)" in line or "ERROR/" in line
            or line.startswith(("Exception", "TypeError", "AttributeError", "KeyError"))]


def assert_no_errors(log: str) -> None:
    errors = error_lines(log)
    assert not errors, "Locust logged errors:\n" + "\n".join(errors) + "\n\n" + log[-4000:]


def smtp_rows(json_file: Path) -> dict[str, dict]:
    """Locust's own statistics rows for messages, by name."""
    return {row["name"]: row for row in json.loads(json_file.read_text())
            if row["method"] == "SMTP"}


def otel_env(otlp_endpoint: str) -> dict[str, str]:
    """Locust's environment for `--otel`: traces only, over OTLP/HTTP, exported quickly."""
    return clean_env(OTEL_EXPORTER_OTLP_ENDPOINT=otlp_endpoint, OTEL_SERVICE_NAME="locust",
                     OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
                     OTEL_METRICS_EXPORTER="none", OTEL_LOGS_EXPORTER="none",
                     OTEL_BSP_SCHEDULE_DELAY="200")


def traced_locust_run(otlp_endpoint: str, receiver, sender, messages: int) -> None:
    """Headless Locust with --otel sends `messages` STARTTLS messages through the sender; its
    spans go to `otlp_endpoint`, and the receiver's and sender's are flushed when it is done."""
    run = locust("SpamViaSender", "--headless", "--otel", "--users", "1", "--spawn-rate", "1",
                 "--max-messages", str(messages), "--tls-ratio", "1", "--run-time", "60s",
                 "--host", sender.http, "--only-summary", env=otel_env(otlp_endpoint))
    output = finish(run)
    assert run.returncode == 0, output[-3000:]
    receiver.wait_sessions(messages)
    receiver.service.provider.force_flush()
    sender.service.provider.force_flush()
