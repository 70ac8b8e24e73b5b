"""What the benchmarks set up alike: their flags, one certificate on disk, and a stack
environment on free loopback ports serving it (tickets off: every handshake is a full one)."""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
import typing
from pathlib import Path

import httpx

from tlsstorm.common.config import KeyType
from tlsstorm.common.pki import self_signed


def wave_arguments(doc: str, messages: int, rate: float) -> argparse.Namespace:
    """The flags of a benchmark that sends waves with one certificate: size, pace, key type."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--messages", type=int, default=messages)
    parser.add_argument("--rate", type=float, default=rate)
    parser.add_argument("--key-type", default="rsa2048", choices=typing.get_args(KeyType))
    return parser.parse_args()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def certificate_files(folder: Path, key_type: str) -> tuple[Path, Path]:
    pair = self_signed("receiver.tlsstorm.test", key_type)
    cert, key = folder / "cert.pem", folder / "key.pem"
    cert.write_bytes(pair.cert_pem)
    key.write_bytes(pair.key_pem)
    return cert, key


def stack_environment(folder: Path, cert: Path, key: Path) -> dict[str, str]:
    return {
        "TLSSTORM_RECEIVER_CERT_FILE": str(cert), "TLSSTORM_RECEIVER_KEY_FILE": str(key),
        "TLSSTORM_RECEIVER_SESSION_TICKETS": "false",
        "TLSSTORM_RECEIVER_SMTP_PORT": str(free_port()),
        "TLSSTORM_RECEIVER_HTTP_PORT": str(free_port()),
        "TLSSTORM_SENDER_HTTP_PORT": str(free_port()),
        "TLSSTORM_COLLECTOR_HTTP_PORT": str(free_port()),
        "TLSSTORM_COLLECTOR_DB_PATH": str(folder / "collector.sqlite"),
    }


def smtpd_pids(port: int) -> list[int]:
    """The smtpd processes serving the Postfix sink's port (scripts/postfix-sink.sh)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:  # the process ended meanwhile
            continue
        if command.startswith(f"smtpd -n 127.0.0.1:{port} "):
            pids.append(int(entry.name))
    return pids


def receiver_process(env: dict[str, str], prefix: tuple[str, ...] = ()
                     ) -> tuple[subprocess.Popen, int]:
    """`tlsstorm receiver` as a process of its own (tracing off) on free ports, once its API
    says it is ready; `prefix` runs it under a wrapper (taskset). Returns it and its SMTP port."""
    smtp_port, http_port = free_port(), free_port()
    receiver = subprocess.Popen(
        [*prefix, sys.executable, "-m", "tlsstorm", "receiver"],
        env={**os.environ, "OTEL_SDK_DISABLED": "true", **env,
             "TLSSTORM_RECEIVER_SMTP_PORT": str(smtp_port),
             "TLSSTORM_RECEIVER_HTTP_PORT": str(http_port)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        try:
            if httpx.get(f"http://127.0.0.1:{http_port}/readyz", timeout=1).status_code == 200:
                return receiver, smtp_port
        except httpx.HTTPError:
            time.sleep(0.1)
    receiver.terminate()
    raise SystemExit("the receiver did not start")
