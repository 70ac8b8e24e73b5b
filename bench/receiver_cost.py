"""Receiver and sender CPU per plain and per STARTTLS message next to two anchors with the same
certificate: `openssl s_server`'s CPU per full handshake, and the same handshake done in-process
by Python's ssl; tracing on vs off, with what telemetry cost each side (its own account, in no
session's figure: issue 33); each target with a verdict. Every figure is the mean of --repeat
rounds with its 95% confidence interval; ratios are taken round by round.

Usage: python bench/receiver_cost.py [--messages 1000] [--rate 200] [--repeat 5]
                                     [--key-types rsa2048,ecdsa-p256]
"""

from __future__ import annotations

import argparse
import contextlib
import re
import shutil
import ssl
import subprocess
import tempfile
import time
import typing
from dataclasses import dataclass
from pathlib import Path

from fixtures import certificate_files, free_port, stack_environment  # bench/ is on sys.path
from tlsstorm.common.config import KeyType
from tlsstorm.common.intervals import mean_ci, shown
from tlsstorm.common.machine import machine_note
from tlsstorm.common.pki import load_pair
from tlsstorm.common.process import cpu_seconds_of, thread_cpu_seconds_of
from tlsstorm.common.tls import client_context, server_context
from tlsstorm.sweep.run import SweepRunner, stack_runner

MODES = ((0.0, "plain"), (1.0, "STARTTLS"))
TARGET_EXTRA_OVER_OPENSSL = 1.3
TARGET_TRACING_OVERHEAD = {"receiver_process": 0.10, "sender_process": 0.15}
TARGET_SESSIONS_ALIKE = 0.05  # a session's charge, tracing on against off
TARGET_SENDER_SHARE = 0.5  # the generator never the bottleneck (issue 12)
ENGINE_THREAD = "tlsstorm-engine"  # the sender's SMTP engine (sender/engine/smtp_engine.c)


def openssl_handshake_cpu_us(cert: Path, key: Path, seconds: int) -> tuple[float, float]:
    """Server CPU per full handshake of `openssl s_server`, driven by `openssl s_time -new`
    (handshakes only: without -www, s_time transfers no data), and handshakes per second."""
    port = free_port()
    server = subprocess.Popen(
        ["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-cert", str(cert),
         "-key", str(key), "-www", "-quiet", "-no_ticket"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        before = cpu_seconds_of(server.pid)
        timed = subprocess.run(
            ["openssl", "s_time", "-connect", f"127.0.0.1:{port}", "-new",
             "-time", str(seconds)], capture_output=True, text=True, timeout=seconds + 30)
        cpu = cpu_seconds_of(server.pid) - before
    finally:
        server.terminate()
        server.wait(10)
    match = re.search(r"(\d+) connections in ([\d.]+)s", timed.stdout)
    if not match:
        raise SystemExit(f"openssl s_time said: {timed.stdout[-500:]}{timed.stderr[-500:]}")
    handshakes = int(match.group(1))
    return cpu * 1e6 / handshakes, handshakes / float(match.group(2))


class Halves(typing.NamedTuple):
    """Thread CPU per full handshake of each end, in microseconds."""

    server_us: float
    client_us: float


def in_process_handshake_cpu_us(cert: Path, key: Path, handshakes: int = 300) -> Halves:
    """Each end's thread CPU per full handshake done by Python's ssl module over memory BIOs:
    the OpenSSL work the receiver (server) and the sender (client) cannot avoid, without
    sockets, event loop or SMTP."""
    server_side = server_context(load_pair(cert, key), session_tickets=False)
    client_side = client_context()
    spent_ns = {"server": 0, "client": 0}
    for _ in range(handshakes):
        to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
        ends = {"client": client_side.wrap_bio(to_client, to_server),
                "server": server_side.wrap_bio(to_server, to_client, server_side=True)}
        done = dict.fromkeys(ends, False)
        while not all(done.values()):
            for name, end in ends.items():
                if done[name]:
                    continue
                started = time.thread_time_ns()
                try:
                    end.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
                spent_ns[name] += time.thread_time_ns() - started
    return Halves(spent_ns["server"] / 1000 / handshakes, spent_ns["client"] / 1000 / handshakes)


@dataclass
class Costs:
    """Microseconds of CPU per message of one wave, in one mode."""

    receiver_session: float  # charged to the receiver's sessions
    receiver_process: float  # the receiver process's, all of it
    sender_process: float
    sender_engine: float  # of which the SMTP engine's thread: C, its TLS, its system calls
    # Building and exporting spans (0 with tracing off). Spans are exported in batches, some
    # after their wave ended: a wave's figure may hold some of the one before's.
    receiver_telemetry: float
    sender_telemetry: float


def measure(folder: Path, cert: Path, key: Path, flags: argparse.Namespace, key_type: str
            ) -> tuple[dict[str, list[Costs]], dict[str, list[Costs]]]:
    """--repeat rounds, each on a fresh pair of stacks started side by side, one tracing and
    one not (so a round's figures are of new processes: what one start costs more than another
    is in the interval), each warmed up; then one plain and one STARTTLS wave on each, in turn,
    the tracing one first in every other round. Returns (off, on)."""
    costs = {traced: {mode: [] for _, mode in MODES} for traced in (False, True)}
    for round_number in range(1, flags.repeat + 1):
        started = []
        with contextlib.ExitStack() as stacks:
            for traced in (False, True):
                stack_folder = folder / f"round-{round_number}-{'on' if traced else 'off'}"
                stack_folder.mkdir()
                runner = stacks.enter_context(stack_runner(
                    overrides=stack_environment(stack_folder, cert, key),
                    label=f"round {round_number}, the local stack, tracing "
                          f"{'on' if traced else 'off'}", tracing=traced))
                runner.wave(0.5, flags.rate, 100, "warm-up")
                started.append((traced, runner))
            if round_number % 2 == 0:
                started.reverse()
            for ratio, mode in MODES:
                for traced, runner in started:
                    label = f"{key_type}{' traced' if traced else ''} {mode:>8} " \
                            f"{round_number}/{flags.repeat}"
                    costs[traced][mode].append(_wave_costs(runner, ratio, flags, label))
    return costs[False], costs[True]


def _wave_costs(runner: SweepRunner, ratio: float, flags: argparse.Namespace,
                label: str) -> Costs:
    sender_pid = runner.stack.stack.pid("sender")
    sender_before = cpu_seconds_of(sender_pid)
    engine_before = thread_cpu_seconds_of(sender_pid, ENGINE_THREAD)
    sender_telemetry_before = _sender_telemetry_seconds(runner)
    point = runner.wave(ratio, flags.rate, flags.messages, label)
    per_message = 1e6 / point.messages
    sender_us = (cpu_seconds_of(sender_pid) - sender_before) * per_message
    engine_us = (thread_cpu_seconds_of(sender_pid, ENGINE_THREAD) - engine_before) * per_message
    receiver_process = runner.http.get(f"{runner.receiver_url}/v1/stats").json()[
        "process"]  # since the wave's start (the runner resets it then)
    return Costs(point.cpu_ms_per_message * 1000, point.process_cpu_ms_per_message * 1000,
                 sender_us, engine_us, receiver_process["cpu_seconds_telemetry"] * per_message,
                 (_sender_telemetry_seconds(runner) - sender_telemetry_before) * per_message)


def _sender_telemetry_seconds(runner: SweepRunner) -> float:
    stats = runner.http.get(f"{runner.sender_url}/v1/stats").json()
    return sum(stats["telemetry"].values())


def ratios(numerators: list[float], denominators: list[float]) -> list[float]:
    return [top / bottom for top, bottom in zip(numerators, denominators, strict=True)]


def report(key_type: str, openssl: list[tuple[float, float]], halves: list[Halves],
           off: dict[str, list[Costs]], on: dict[str, list[Costs]]) -> None:
    def column(costs: dict[str, list[Costs]], mode: str, name: str) -> list[float]:
        return [getattr(cost, name) for cost in costs[mode]]

    print(f"\n== certificate {key_type} ==")
    anchor = [cpu_us for cpu_us, _ in openssl]
    server_half = [half.server_us for half in halves]
    client_half = [half.client_us for half in halves]
    print(f"anchor: openssl s_server {shown(anchor, 'us')} CPU per full handshake, "
          f"{shown([per_second for _, per_second in openssl])} handshakes/s from s_time; the "
          f"same handshake in Python's ssl over memory BIOs {shown(server_half, 'us')} (server), "
          f"{shown(client_half, 'us')} (client)")
    print(f"{'CPU per message (us)':<34}{'plain':>20}{'STARTTLS':>20}{'TLS/plain':>16}")
    rows = [("receiver, charged to sessions", off, "receiver_session"),
            ("receiver process", off, "receiver_process"),
            ("sender process", off, "sender_process"),
            ("  of which its engine thread", off, "sender_engine"),
            ("receiver, charged, tracing on", on, "receiver_session"),
            ("receiver process, tracing on", on, "receiver_process"),
            ("  of which telemetry", on, "receiver_telemetry"),
            ("sender process, tracing on", on, "sender_process"),
            ("  of which its engine thread", on, "sender_engine"),
            ("  of which telemetry", on, "sender_telemetry")]
    for name, costs, field in rows:
        plain, tls = column(costs, "plain", field), column(costs, "STARTTLS", field)
        print(f"{name:<34}{shown(plain):>20}{shown(tls):>20}"
              f"{shown(ratios(tls, plain), 'x', 2):>16}")
    for traced, costs in (("", off), (", tracing on", on)):
        covered = [ratios([session + telemetry for session, telemetry in zip(
            column(costs, mode, "receiver_session"), column(costs, mode, "receiver_telemetry"),
            strict=True)], column(costs, mode, "receiver_process")) for _, mode in MODES]
        print(f"(charged + telemetry) / process{traced}: plain {shown(covered[0], 'x', 3)}, "
              f"STARTTLS {shown(covered[1], 'x', 3)} (target >= 0.9: "
              f"{_verdict(covered[0] + covered[1], 0.9, at_least=True)})")
    per_core = [[1e6 / cost for cost in column(off, mode, "receiver_process")]
                for _, mode in MODES]
    print(f"receiver sessions/s per core (1 s over process CPU per session): plain "
          f"{shown(per_core[0])}, STARTTLS {shown(per_core[1])}")
    for field, what in (("receiver_session", "charged to sessions"),
                        ("receiver_process", "process")):
        extra = [tls - plain for tls, plain in zip(column(off, "STARTTLS", field),
                                                   column(off, "plain", field), strict=True)]
        over = ratios(extra, anchor)
        verdict = _verdict(over, TARGET_EXTRA_OVER_OPENSSL)
        print(f"receiver's extra CPU for STARTTLS ({what}): {shown(extra, 'us')} = "
              f"{shown(over, 'x', 2)} openssl's handshake "
              f"(target <= {TARGET_EXTRA_OVER_OPENSSL}x: {verdict}); beyond OpenSSL's own "
              f"work: {shown([e - h for e, h in zip(extra, server_half, strict=True)], 'us')}")
    for traced, costs in (("", off), (", tracing on", on)):
        for _, mode in MODES:
            share = ratios(column(costs, mode, "sender_process"),
                           column(costs, mode, "receiver_process"))
            print(f"sender / receiver process CPU, {mode}{traced}: {shown(share, 'x', 2)} "
                  f"(target <= {TARGET_SENDER_SHARE}: {_verdict(share, TARGET_SENDER_SHARE)})")
    sender_extra = [tls - plain for tls, plain in zip(column(off, "STARTTLS", "sender_process"),
                                                      column(off, "plain", "sender_process"),
                                                      strict=True)]
    engine_share = ratios(column(off, "STARTTLS", "sender_engine"),
                          column(off, "STARTTLS", "receiver_process"))
    print(f"sender's extra CPU for STARTTLS: {shown(sender_extra, 'us')}, of which the client's "
          f"half of the handshake is {shown(client_half, 'us')} at the least (back to back); "
          f"its engine thread alone (C, its TLS library, their system calls: no Python), over the "
          f"receiver's STARTTLS message: {shown(engine_share, 'x', 2)} (what no change to the "
          "Python side can go below)")
    for name, target in TARGET_TRACING_OVERHEAD.items():
        for _, mode in MODES:
            growth = [ratio - 1 for ratio in ratios(column(on, mode, name),
                                                      column(off, mode, name))]
            mean, half = mean_ci(growth)
            print(f"tracing on vs off, {name.replace('_', ' ')}, {mode}: {mean:+.0%} +- "
                  f"{half:.0%} (target <= +{target:.0%}: {_verdict(growth, target)})")
    for _, mode in MODES:  # telemetry is its own account: sessions cost what they cost
        growth = [ratio - 1 for ratio in ratios(column(on, mode, "receiver_session"),
                                                  column(off, mode, "receiver_session"))]
        mean, half = mean_ci(growth)
        alike = _verdict([abs(value) for value in growth], TARGET_SESSIONS_ALIKE)
        print(f"tracing on vs off, receiver charged to sessions, {mode}: {mean:+.1%} +- "
              f"{half:.1%} (target within +-{TARGET_SESSIONS_ALIKE:.0%}: {alike})")
    factors = [ratios(column(costs, "STARTTLS", "receiver_session"),
                      column(costs, "plain", "receiver_session")) for costs in (on, off)]
    growth = [ratio - 1 for ratio in ratios(*factors)]
    mean, half = mean_ci(growth)
    print(f"tracing on vs off, the sessions' TLS/plain factor: {mean:+.1%} +- {half:.1%} "
          f"(target within +-{TARGET_SESSIONS_ALIKE:.0%}: "
          f"{_verdict([abs(value) for value in growth], TARGET_SESSIONS_ALIKE)})")


def _verdict(values: list[float], limit: float, at_least: bool = False) -> str:
    """Met, not met, or undecided when the confidence interval straddles the limit (a
    ceiling, or with at_least a floor)."""
    mean, half = mean_ci(values)
    low, high = mean - half, mean + half
    if (low >= limit) if at_least else (high <= limit):
        return "met"
    if (high < limit) if at_least else (low > limit):
        return "not met"
    return "within noise of the target"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--key-types", default="rsa2048,ecdsa-p256")
    flags = parser.parse_args()
    key_types = flags.key_types.split(",")
    unknown = set(key_types) - set(typing.get_args(KeyType))
    if unknown:
        parser.error(f"unknown key types {sorted(unknown)}; choose from {typing.get_args(KeyType)}")
    if not shutil.which("openssl"):
        raise SystemExit("the openssl command-line tool is needed for the anchor")
    results = []
    for key_type in key_types:
        with tempfile.TemporaryDirectory() as folder:
            cert, key = certificate_files(Path(folder), key_type)
            openssl = [openssl_handshake_cpu_us(cert, key, seconds=3)
                       for _ in range(flags.repeat)]
            halves = [in_process_handshake_cpu_us(cert, key) for _ in range(flags.repeat)]
            off, on = measure(Path(folder), cert, key, flags, key_type)
        results.append((key_type, openssl, halves, off, on))
    print(f"\nmachine: {machine_note()}")
    print(f"TLS 1.3, no tickets (every handshake full); {flags.repeat} rounds, each on two "
          f"fresh stacks side by side (tracing off, on) taking waves of {flags.messages} "
          f"messages at {flags.rate:g}/s in turn, one message per session; mean +- 95% "
          "confidence interval")
    for result in results:
        report(*result)


if __name__ == "__main__":
    main()
