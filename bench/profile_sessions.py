"""Where the receiver's and the sender's CPU goes, per plain and per STARTTLS message, during
one wave of each mode, seen two ways:
- perf (when installed): CPU samples of each process by library: the Python interpreter,
  OpenSSL, the kernel, libc; the split py-spy cannot give.
- py-spy: the innermost Python frame of each sample, put in a category (SMTP library, event
  loop, socket calls, TLS, tlsstorm's own code, ...). Samples inside epoll_wait are left out:
  py-spy counts a runnable thread there as busy, and perf shows the kernel's share is no larger
  in those waves than in any other.

The collapsed stacks are kept (results/profiles/*.txt under the current directory: open them in
speedscope.app or feed them to flamegraph.pl) for a closer look than the categories give.
Usage: python bench/profile_sessions.py [--messages 1500] [--rate 200] [--key-type rsa2048]
"""

from __future__ import annotations

import collections
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

from fixtures import certificate_files, stack_environment, wave_arguments  # bench/ on sys.path
from tlsstorm.common.machine import machine_note
from tlsstorm.common.process import cpu_seconds_of
from tlsstorm.sweep.run import stack_runner

SAMPLES_PER_SECOND = 250
MODES = ((0.0, "plain"), (1.0, "starttls"))

# An innermost frame in one of these functions is (nearly all) a system call.
SOCKET_CALLS = {
    "_SelectorSocketTransport.write", "socket.accept", "BaseSelectorEventLoop._sock_connect",
    "socket._real_close", "socket.close", "_SelectorSocketTransport._read_ready__get_buffer",
    "_SelectorSocketTransport._read_ready__data_received", "socket.getsockopt",
    "wire_bytes", "socket.recv", "socket.send", "socket.sendall",
}
EPOLL_WAIT = "selectors.py:468"
# (category, path fragments of the innermost frame's file); the first match wins.
CATEGORIES = (
    ("TLS: handshake and records (OpenSSL via ssl)", ("ssl.py",)),
    ("TLS: asyncio's record plumbing (sslproto)", ("asyncio/sslproto.py",)),
    ("event loop (asyncio, selectors)", ("asyncio/", "selectors.py", "contextvars")),
    ("the sender's compiled SMTP engine (native time under its ctypes calls)",
     ("sender/engine.py",)),
    ("SMTP protocol (aiosmtpd, email)", ("aiosmtpd/", "email/")),
    ("tlsstorm's own code", ("tlsstorm/",)),
    ("tracing (OpenTelemetry)", ("opentelemetry/",)),
    ("HTTP API (FastAPI, uvicorn, httpx)",
     ("fastapi/", "starlette/", "uvicorn/", "h11/", "httpx/", "httpcore/", "anyio/",
      "pydantic")),
)
# perf's shared objects, grouped.
LIBRARIES = (("Python interpreter", "libpython"), ("OpenSSL", "libcrypto"), ("OpenSSL", "libssl"),
             ("the sender's SMTP engine (C, its rustls)", "_smtp_engine"),
             ("kernel", "[kernel"), ("libc", "libc.so"))


def category(frame: str) -> str:
    function, _, where = frame.partition(" (")
    if function in SOCKET_CALLS:
        return "socket system calls (send, recv, accept, connect, close)"
    for name, fragments in CATEGORIES:
        if any(fragment in where for fragment in fragments):
            return name
    return "other Python (stdlib, inspect, abc, ...)"


def python_shares(collapsed: Path) -> dict[str, float]:
    """Share of py-spy's samples per category, from its collapsed stacks, epoll_wait left out."""
    counts: collections.Counter[str] = collections.Counter()
    for line in collapsed.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        innermost = stack.rsplit(";", 1)[-1]
        if EPOLL_WAIT not in innermost:
            counts[category(innermost)] += int(samples)
    total = max(sum(counts.values()), 1)
    return {name: samples / total for name, samples in counts.items()}


def library_shares(recording: Path) -> dict[str, float]:
    """Share of perf's samples per library group."""
    report = subprocess.run(
        ["perf", "report", "--input", str(recording), "--stdio", "--no-children",
         "--sort", "dso", "-g", "none"], capture_output=True, text=True, check=True).stdout
    shares: collections.Counter[str] = collections.Counter()
    for percent, library in re.findall(r"^\s+([\d.]+)%\s+(\S+)", report, re.MULTILINE):
        group = next((name for name, prefix in LIBRARIES if library.startswith(prefix)),
                     "other (extension modules)")
        shares[group] += float(percent) / 100
    return dict(shares)


class Profile(NamedTuple):
    """One service during one wave."""

    python: dict[str, float]  # share of py-spy's samples per category
    libraries: dict[str, float] | None  # share of perf's samples per library (None: no perf)
    cpu_us: float  # process CPU per message


def profiled_wave(runner, pids: dict[str, int], ratio: float, flags, out: Path,
                  mode: str) -> dict[str, Profile]:
    """Each service's profile during one wave."""
    stacks = {name: out / f"{mode}-{name}.txt" for name in pids}
    recordings = {name: out / f"{mode}-{name}.perf" for name in pids}
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    samplers = [subprocess.Popen(
        [py_spy, "record", "--pid", str(pid), "--rate", str(SAMPLES_PER_SECOND), "--format",
         "raw", "--nonblocking", "--output", str(stacks[name])],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for name, pid in pids.items()]
    if shutil.which("perf"):
        samplers += [subprocess.Popen(
            # No build-id cache: perf would copy every binary it saw into ~/.debug, run after run.
            ["perf", "record", "--no-buildid-cache", "--event", "cpu-clock", "--freq", "999",
             "--pid", str(pid), "--output", str(recordings[name])],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for name, pid in pids.items()]
    time.sleep(1.0)  # the samplers attach
    before = {name: cpu_seconds_of(pid) for name, pid in pids.items()}
    point = runner.wave(ratio, flags.rate, flags.messages, f"{mode:>8} profiled")
    cpu_us = {name: (cpu_seconds_of(pid) - before[name]) * 1e6 / point.messages
              for name, pid in pids.items()}
    for sampler in samplers:
        sampler.send_signal(signal.SIGINT)
    for sampler in samplers:
        sampler.wait(60)
    return {name: Profile(
        python_shares(stacks[name]),
        library_shares(recordings[name]) if recordings[name].exists() else None,
        cpu_us[name]) for name in pids}


def table(title: str, shares: list[dict[str, float]], cpu_us: list[float] | None) -> None:
    """One row per name, the largest in STARTTLS first; one column per mode (plain, STARTTLS):
    the share, and with `cpu_us` the microseconds per message it stands for."""
    print(f"{title:<58}{'plain':>16}{'STARTTLS':>16}")
    for name in sorted(set().union(*shares), key=lambda name: -shares[-1].get(name, 0.0)):
        cells = []
        for mode, mode_shares in enumerate(shares):
            share = mode_shares.get(name)
            if share is None:
                cells.append("")
            elif cpu_us is None:
                cells.append(f"{share:6.1%}")
            else:
                cells.append(f"{share:6.1%} {share * cpu_us[mode]:6,.0f}")
        print(f"{name:<58}" + "".join(f"{cell:>16}" for cell in cells))


def main() -> None:
    flags = wave_arguments(__doc__, messages=1500, rate=200.0)
    out = Path("results") / "profiles"
    out.mkdir(parents=True, exist_ok=True)
    profiles = {}
    with tempfile.TemporaryDirectory() as folder:
        cert, key = certificate_files(Path(folder), flags.key_type)
        with stack_runner(overrides=stack_environment(Path(folder), cert, key)) as runner:
            pids = {name: runner.stack.stack.pid(name) for name in ("receiver", "sender")}
            runner.wave(0.5, flags.rate, 200, "warm-up")
            for ratio, mode in MODES:
                profiles[mode] = profiled_wave(runner, pids, ratio, flags, out, mode)
    print(f"\nmachine: {machine_note()}")
    print(f"certificate {flags.key_type}, TLS 1.3, no tickets; {flags.messages} messages per "
          f"wave at {flags.rate:g}/s; perf at 999 Hz, py-spy at {SAMPLES_PER_SECOND} Hz (its "
          "own cost shows in the process CPU); stacks in results/profiles/")
    for service in ("receiver", "sender"):
        by_mode = [profiles[mode][service] for _, mode in MODES]
        print(f"\n{service}: process CPU per message "
              + ", ".join(f"{mode} {profile.cpu_us:,.0f} us"
                          for (_, mode), profile in zip(MODES, by_mode, strict=True)))
        if all(profile.libraries is not None for profile in by_mode):
            table("by library (perf): share, us per message",
                  [profile.libraries for profile in by_mode],
                  [profile.cpu_us for profile in by_mode])
        table("by Python frame (py-spy): share outside epoll_wait",
              [profile.python for profile in by_mode], None)

if __name__ == "__main__":
    main()
