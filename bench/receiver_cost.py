"""Receiver CPU per plain and STARTTLS session next to its anchor: `openssl s_server`'s CPU per
full handshake with the same certificate; and the sender's CPU per message beside the receiver's.

Usage: python bench/receiver_cost.py [--messages 400] [--rate 100] [--key-type rsa2048]
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from fixtures import (  # bench/ is on sys.path
    certificate_files,
    free_port,
    stack_environment,
    wave_arguments,
)
from machine import machine_note, process_cpu_seconds
from tlsstorm.sweep.run import stack_runner

TARGET_EXTRA_OVER_OPENSSL = 1.3


def openssl_handshake_cpu_us(cert: Path, key: Path, seconds: float) -> tuple[float, int]:
    """Server CPU per full handshake of `openssl s_server`, driven by `openssl s_time -new`."""
    port = free_port()
    server = subprocess.Popen(
        ["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-cert", str(cert),
         "-key", str(key), "-www", "-quiet", "-no_ticket"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        before = process_cpu_seconds(server.pid)
        timed = subprocess.run(
            ["openssl", "s_time", "-connect", f"127.0.0.1:{port}", "-new",
             "-time", str(int(seconds))], capture_output=True, text=True, timeout=seconds + 30)
        cpu = process_cpu_seconds(server.pid) - before
    finally:
        server.terminate()
        server.wait(10)
    match = re.search(r"(\d+) connections in [\d.]+s", timed.stdout)
    if not match:
        raise SystemExit(f"openssl s_time said: {timed.stdout[-500:]}{timed.stderr[-500:]}")
    handshakes = int(match.group(1))
    return cpu * 1e6 / handshakes, handshakes


def main() -> None:
    flags = wave_arguments(__doc__, messages=400, rate=100.0)
    if not shutil.which("openssl"):
        raise SystemExit("the openssl command-line tool is needed for the anchor")
    with tempfile.TemporaryDirectory() as folder:
        cert, key = certificate_files(Path(folder), flags.key_type)
        anchor_us, handshakes = openssl_handshake_cpu_us(cert, key, seconds=5)
        with stack_runner(overrides=stack_environment(Path(folder), cert, key)) as runner:
            sender_pid = next(child.process.pid for child in runner.stack.stack.children
                              if child.name == "sender")
            runner.wave(0.5, flags.rate, 100, "warm-up")
            measured = {}
            for ratio, mode in ((0.0, "plain"), (1.0, "STARTTLS")):
                sender_before = process_cpu_seconds(sender_pid)
                point = runner.wave(ratio, flags.rate, flags.messages, f"{mode:>8}")
                sender_ms = (process_cpu_seconds(sender_pid) - sender_before) * 1000 / \
                    point.messages
                measured[mode] = (point, sender_ms)
        # The same waves with tracing on: spans built and exported to the collector.
        with stack_runner(overrides=stack_environment(Path(folder), cert, key),
                          label="the local stack, tracing on", tracing=True) as runner:
            runner.wave(0.5, flags.rate, 100, "warm-up")
            traced = {mode: runner.wave(ratio, flags.rate, flags.messages, f"{mode:>8} traced")
                      for ratio, mode in ((0.0, "plain"), (1.0, "STARTTLS"))}
    plain, plain_sender = measured["plain"]
    tls, tls_sender = measured["STARTTLS"]
    extra_us = (tls.cpu_ms_per_message - plain.cpu_ms_per_message) * 1000
    print(f"machine: {machine_note()}")
    print(f"certificate {flags.key_type}, TLS 1.3, no tickets; waves of {flags.messages} "
          f"messages at {flags.rate:g}/s, one message per session")
    print(f"anchor: openssl s_server {anchor_us:,.0f} us CPU per full handshake "
          f"({handshakes} handshakes by s_time -new)")
    for name, point, sender_ms in (("plain", plain, plain_sender), ("STARTTLS", tls, tls_sender)):
        print(f"receiver {name:>8}: {point.cpu_ms_per_message * 1000:,.0f} us per session charged "
              f"to the session, {point.process_cpu_ms_per_message * 1000:,.0f} us process CPU; "
              f"sender {sender_ms * 1000:,.0f} us per message")
    print(f"receiver's extra CPU for STARTTLS: {extra_us:,.0f} us = "
          f"{extra_us / anchor_us:.2f}x openssl's handshake (target <= "
          f"{TARGET_EXTRA_OVER_OPENSSL}x)")
    print(f"receiver TLS/plain factor: {tls.cpu_ms_per_message / plain.cpu_ms_per_message:.2f}x")
    for mode, (point, _) in measured.items():
        on, off = traced[mode].process_cpu_ms_per_message, point.process_cpu_ms_per_message
        print(f"tracing on vs off, {mode}: receiver process CPU {off * 1000:,.0f} -> "
              f"{on * 1000:,.0f} us per message ({on / off - 1:+.0%}; target <= +10%)")


if __name__ == "__main__":
    main()
