"""Where the receiver's and the sender's CPU goes, per plain and per STARTTLS message: py-spy
samples both processes during one wave of each mode; each sample is put in a category by its
innermost Python frame, and the categories are shown as shares and as microseconds per message.

The collapsed stacks are kept (results/profiles/*.txt: open them in speedscope.app or feed them
to flamegraph.pl) for a closer look than the categories give.
Usage: python bench/profile_sessions.py [--messages 1500] [--rate 200] [--key-type rsa2048]
"""

from __future__ import annotations

import collections
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fixtures import certificate_files, stack_environment, wave_arguments  # bench/ on sys.path
from machine import machine_note, process_cpu_seconds
from tlsstorm.sweep.run import stack_runner

ROOT = Path(__file__).resolve().parents[1]
SAMPLES_PER_SECOND = 250

# An innermost frame in one of these functions is (nearly all) a system call.
SOCKET_CALLS = {
    "_SelectorSocketTransport.write", "socket.accept", "BaseSelectorEventLoop._sock_connect",
    "socket._real_close", "socket.close", "_SelectorSocketTransport._read_ready__get_buffer",
    "_SelectorSocketTransport._read_ready__data_received", "socket.getsockopt",
    "wire_bytes", "socket.recv", "socket.send", "socket.sendall",
}
# (category, path fragments of the innermost frame's file); the first match wins.
CATEGORIES = (
    ("TLS: handshake and records (OpenSSL via ssl)", ("ssl.py",)),
    ("TLS: asyncio's record plumbing (sslproto)", ("asyncio/sslproto.py",)),
    # Runnable inside epoll_wait: woken and waiting for a core (2 cores, 2 busy processes), or
    # the kernel's wake-up work; py-spy cannot tell which, so it stands on its own.
    ("runnable in epoll_wait (waiting for a core)", ("selectors.py:468",)),
    ("event loop (asyncio, selectors)", ("asyncio/", "selectors.py", "contextvars")),
    ("SMTP protocol (aiosmtpd, aiosmtplib, email)", ("aiosmtpd/", "aiosmtplib/", "email/")),
    ("tlsstorm's own code", ("tlsstorm/",)),
    ("tracing (OpenTelemetry)", ("opentelemetry/",)),
    ("HTTP API (FastAPI, uvicorn, httpx)",
     ("fastapi/", "starlette/", "uvicorn/", "h11/", "httpx/", "httpcore/", "anyio/",
      "pydantic")),
)


def category(frame: str) -> str:
    function, _, where = frame.partition(" (")
    if function in SOCKET_CALLS:
        return "socket system calls (send, recv, accept, connect, close)"
    for name, fragments in CATEGORIES:
        if any(fragment in where for fragment in fragments):
            return name
    return "other Python (stdlib, inspect, abc, ...)"


def categorised(collapsed: Path) -> collections.Counter[str]:
    """Samples per category, from py-spy's collapsed-stack output."""
    counts: collections.Counter[str] = collections.Counter()
    for line in collapsed.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        counts[category(stack.rsplit(";", 1)[-1])] += int(samples)
    return counts


def profiled_wave(runner, pids: dict[str, int], ratio: float, flags, out: Path,
                  mode: str) -> dict[str, tuple[collections.Counter[str], float]]:
    """Samples by category and process CPU microseconds per message, per service."""
    files = {name: out / f"{mode}-{name}.txt" for name in pids}
    spies = [subprocess.Popen(
        [shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy"), "record",
         "--pid", str(pid), "--rate", str(SAMPLES_PER_SECOND), "--format", "raw",
         "--nonblocking", "--output", str(files[name])],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for name, pid in pids.items()]
    time.sleep(1.0)  # py-spy attaches
    before = {name: process_cpu_seconds(pid) for name, pid in pids.items()}
    point = runner.wave(ratio, flags.rate, flags.messages, f"{mode:>8} profiled")
    cpu_us = {name: (process_cpu_seconds(pid) - before[name]) * 1e6 / point.messages
              for name, pid in pids.items()}
    for spy in spies:
        spy.send_signal(signal.SIGINT)
    for spy in spies:
        spy.wait(30)
    return {name: (categorised(files[name]), cpu_us[name]) for name in pids}


def main() -> None:
    flags = wave_arguments(__doc__, messages=1500, rate=200.0)
    out = ROOT / "results" / "profiles"
    out.mkdir(parents=True, exist_ok=True)
    profiles = {}
    with tempfile.TemporaryDirectory() as folder:
        cert, key = certificate_files(Path(folder), flags.key_type)
        with stack_runner(overrides=stack_environment(Path(folder), cert, key)) as runner:
            pids = {child.name: child.process.pid for child in runner.stack.stack.children
                    if child.name in ("receiver", "sender")}
            runner.wave(0.5, flags.rate, 200, "warm-up")
            for ratio, mode in ((0.0, "plain"), (1.0, "starttls")):
                profiles[mode] = profiled_wave(runner, pids, ratio, flags, out, mode)
    print(f"\nmachine: {machine_note()}")
    print(f"certificate {flags.key_type}, TLS 1.3, no tickets; {flags.messages} messages per "
          f"wave at {flags.rate:g}/s; py-spy at {SAMPLES_PER_SECOND} samples/s (its own cost "
          "shows in the process CPU); collapsed stacks in results/profiles/")
    for service in ("receiver", "sender"):
        print(f"\n{service}: share of samples, and us per message (share x process CPU)")
        names = sorted({name for mode in profiles for name in profiles[mode][service][0]})
        print(f"{'':<58}{'plain':>16}{'STARTTLS':>16}")
        for name in sorted(names, key=lambda n: -profiles["starttls"][service][0][n]):
            cells = []
            for mode in ("plain", "starttls"):
                counts, cpu_us = profiles[mode][service]
                share = counts[name] / max(sum(counts.values()), 1)
                cells.append(f"{share:5.1%} {share * cpu_us:6,.0f}")
            print(f"{name:<58}{cells[0]:>16}{cells[1]:>16}")
        totals = [f"{profiles[mode][service][1]:,.0f} us" for mode in ("plain", "starttls")]
        print(f"{'process CPU per message':<58}{totals[0]:>16}{totals[1]:>16}")


if __name__ == "__main__":
    main()
