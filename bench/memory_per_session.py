"""Memory per concurrent session, plain and STARTTLS: our receiver, a straightforward aiosmtpd
server (its Controller with STARTTLS, nothing else) and Postfix's smtpd, same certificate, same
client, the same number of sessions held open at once.

Each server gets N sessions opened (STARTTLS completed for the TLS column) and held idle; its
memory is read from /proc before and while they are held. One process serves every session in
ours and aiosmtpd (RSS growth per session); Postfix runs one smtpd process per session, so a
session costs it a whole process: its figure is the smtpd processes' proportional set size (PSS:
shared pages split between them) while the sessions are held, divided by the sessions, with
their RSS (shared pages counted in each) beside it.

Needs Debian's postfix and root for the Postfix column (scripts/postfix-sink.sh).
Usage: python bench/memory_per_session.py [--sessions 256] [--repeat 3] [--key-type rsa2048]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import typing
from pathlib import Path

from fixtures import (  # bench/ is on sys.path
    certificate_files,
    free_port,
    receiver_process,
    smtpd_pids,
)
from tlsstorm.common.config import KeyType
from tlsstorm.common.intervals import shown
from tlsstorm.common.machine import machine_note
from tlsstorm.common.process import raise_open_files_limit

ROOT = Path(__file__).resolve().parents[1]
SINK = ROOT / "scripts" / "postfix-sink.sh"


def serve_aiosmtpd(port: int, cert: str, key: str) -> None:
    """The straightforward server: aiosmtpd's Controller offering STARTTLS, a discarding
    handler, as its documentation shows."""
    from aiosmtpd.controller import Controller

    class Discard:
        async def handle_DATA(self, server, session, envelope) -> str:
            return "250 OK"

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    controller = Controller(Discard(), hostname="127.0.0.1", port=port,
                            server_hostname="aiosmtpd.tlsstorm.test", tls_context=context)
    controller.start()
    while True:
        time.sleep(3600)


def _kib(path: Path, field: str) -> int:
    for line in path.read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) * 1024
    return 0


def process_memory(pid: int) -> int:
    return _kib(Path(f"/proc/{pid}/status"), "VmRSS:")


def smtpd_memory(port: int) -> tuple[int, int]:
    """(PSS, RSS) of every smtpd process serving the Postfix sink's port."""
    pss = rss = 0
    for pid in smtpd_pids(port):
        with contextlib.suppress(OSError):  # the process ended meanwhile
            pss += _kib(Path(f"/proc/{pid}/smaps_rollup"), "Pss:")
            rss += _kib(Path(f"/proc/{pid}/status"), "VmRSS:")
    return pss, rss


async def _reply(reader: asyncio.StreamReader) -> bytes:
    while True:
        line = await reader.readline()
        if not line or line[3:4] != b"-":
            return line


async def hold(port: int, tls: bool, count: int, measure) -> tuple[int, int]:
    """Open `count` sessions at once (STARTTLS done if `tls`), measure while they are held."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    release = asyncio.Event()
    opened: list[int] = []

    async def one() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            await _reply(reader)
            writer.write(b"EHLO bot.tlsstorm.test\r\n")
            await _reply(reader)
            if tls:
                writer.write(b"STARTTLS\r\n")
                if not (await _reply(reader)).startswith(b"220"):
                    return
                await writer.start_tls(context)
                writer.write(b"EHLO bot.tlsstorm.test\r\n")
                await _reply(reader)
            opened.append(1)
            await release.wait()
            writer.write(b"QUIT\r\n")
            await _reply(reader)
        finally:
            writer.close()

    before = measure()
    tasks = []
    for index in range(count):
        tasks.append(asyncio.create_task(one()))
        if index % 32 == 31:
            await asyncio.sleep(0.05)
    deadline = time.monotonic() + 120
    while len(opened) < count and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    await asyncio.sleep(2.0)
    during = measure()
    release.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    if len(opened) < count:
        raise SystemExit(f"only {len(opened)} of {count} sessions opened on port {port}")
    await asyncio.sleep(1.0)
    return before, during


def _wait_port(port: int) -> None:
    for _ in range(200):
        try:
            with __import__("socket").create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on {port}")


def start_single_process(name: str, cert: Path, key: Path) -> tuple[subprocess.Popen, int]:
    """Our receiver or the aiosmtpd server, new, on a free port."""
    if name == "tlsstorm receiver":
        server, port = receiver_process({"TLSSTORM_RECEIVER_CERT_FILE": str(cert),
                                         "TLSSTORM_RECEIVER_KEY_FILE": str(key)})
    else:
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, __file__, "--serve-aiosmtpd", str(port), str(cert), str(key)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_port(port)
    time.sleep(0.5)  # settled after its first connection
    return server, port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--key-type", default="rsa2048", choices=typing.get_args(KeyType))
    parser.add_argument("--serve-aiosmtpd", nargs=3, metavar=("PORT", "CERT", "KEY"),
                        help=argparse.SUPPRESS)
    flags = parser.parse_args()
    if flags.serve_aiosmtpd:
        port, cert, key = flags.serve_aiosmtpd
        serve_aiosmtpd(int(port), cert, key)
        return
    raise_open_files_limit()
    with_postfix = shutil.which("postfix") is not None and os.geteuid() == 0
    results: dict[tuple[str, str], list[float]] = {}
    rows = ["tlsstorm receiver", "aiosmtpd Controller"]
    with tempfile.TemporaryDirectory() as folder:
        cert, key = certificate_files(Path(folder), flags.key_type)
        postfix_port = free_port()
        try:
            if with_postfix:
                subprocess.run(["bash", str(SINK), "start", str(postfix_port), str(cert),
                                str(key)], check=True, stdout=subprocess.DEVNULL)
                _wait_port(postfix_port)
                rows += ["Postfix smtpd (PSS)", "Postfix smtpd (RSS)"]
            for round_number in range(1, flags.repeat + 1):
                for tls, mode in ((False, "plain"), (True, "STARTTLS")):
                    for name in rows[:2]:
                        # A fresh process each time: a second round in the same process would
                        # reuse what the first freed and read less than a session holds.
                        server, port = start_single_process(name, cert, key)
                        try:
                            before, during = asyncio.run(hold(
                                port, tls, flags.sessions,
                                functools.partial(process_memory, server.pid)))
                        finally:
                            server.terminate()
                            server.wait(10)
                        results.setdefault((name, mode), []).append(
                            (during - before) / flags.sessions / 1024)
                    if with_postfix:
                        _, during = asyncio.run(hold(postfix_port, tls, flags.sessions,
                                                     lambda: smtpd_memory(postfix_port)))
                        for index, row in enumerate(rows[2:]):
                            results.setdefault((row, mode), []).append(
                                during[index] / flags.sessions / 1024)
                    print(f"  round {round_number}/{flags.repeat} {mode} done", flush=True)
        finally:
            if with_postfix:
                subprocess.run(["bash", str(SINK), "stop"], check=False)
    print(f"\nmachine: {machine_note()}")
    print(f"certificate {flags.key_type}, TLS 1.3; {flags.sessions} sessions held open at once "
          f"per column (STARTTLS completed for STARTTLS), {flags.repeat} rounds; mean +- 95% "
          "confidence interval")
    print(f"{'memory per concurrent session (KiB)':<38}{'plain':>18}{'STARTTLS':>18}")
    for name in rows:
        print(f"{name:<38}{shown(results[name, 'plain']):>18}"
              f"{shown(results[name, 'STARTTLS']):>18}")
    if not with_postfix:
        print("(Postfix not measured: it needs Debian's postfix and root)")


if __name__ == "__main__":
    main()
