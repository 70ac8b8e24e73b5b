"""Our receiver and Postfix's smtpd, same machine, same certificate, same clients: CPU per plain
and per STARTTLS session, and the TLS/plain factor each shows. The receiver must not distort
the factor a real MTA shows (target: within 25%); its plain session should cost at most 1.5x
smtpd's.

Plain sessions are driven by Postfix's own `smtp-source` (C, cheap) and by our sender, STARTTLS
sessions by our sender (smtp-source has no TLS), all at the same pace; the TLS/plain factor is
shown with either client's plain sessions. smtpd processes are spawned before the
measured runs and live through them (max_use, max_idle), so no process start-up is counted;
any smtpd spawned during a measured run is reported. Every figure is the mean of --repeat
rounds with its 95% confidence interval; factors are taken round by round.

Needs Debian's postfix (and root): scripts/postfix-sink.sh runs an instance of its own.
Usage: python bench/postfix_compare.py [--messages 600] [--rate 50] [--repeat 3]
                                       [--key-type rsa2048]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import subprocess
import tempfile
import time
import typing
from pathlib import Path

from fixtures import (  # bench/ is on sys.path
    certificate_files,
    free_port,
    smtpd_pids,
    stack_environment,
)
from tlsstorm.common.config import KeyType
from tlsstorm.common.intervals import mean_ci, shown
from tlsstorm.common.machine import machine_note
from tlsstorm.common.process import cpu_seconds_of
from tlsstorm.sweep.run import SweepRunner, stack_runner

ROOT = Path(__file__).resolve().parents[1]
SINK = ROOT / "scripts" / "postfix-sink.sh"
TARGET_FACTOR_DISTANCE = 0.25
TARGET_PLAIN_OVER_SMTPD = 1.5


MASTER_PID = Path("/var/spool/tlsstorm-postfix/pid/master.pid")


def postfix_cpu_seconds() -> float:
    """CPU of the whole Postfix instance: its master, every live child (smtpd, cleanup, qmgr,
    trivial-rewrite, ...) and the children master has reaped (its cutime + cstime, in ticks)."""
    master = int(MASTER_PID.read_text().split()[0])
    with open(f"/proc/{master}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    total = cpu_seconds_of(master) + (int(fields[13]) + int(fields[14])) / os.sysconf(
        "SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            with open(entry / "stat") as stat:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            if parent == master:
                total += cpu_seconds_of(int(entry.name))
        except OSError:  # the process ended meanwhile
            continue
    return total


def smtpd_cpu_seconds(port: int) -> dict[int, float]:
    """CPU of every smtpd process serving the sink's port, by pid."""
    cpu = {}
    for pid in smtpd_pids(port):
        with contextlib.suppress(OSError):  # the process ended meanwhile
            cpu[pid] = cpu_seconds_of(pid)
    return cpu


class Servers:
    """CPU per session at Postfix (its smtpd processes) and at our receiver, for one run."""

    def __init__(self, runner: SweepRunner, postfix_port: int, receiver_port: int) -> None:
        self.runner = runner
        self.postfix_port = postfix_port
        self.receiver_port = receiver_port
        self.spawned_mid_run = 0

    def _receiver_stats(self) -> dict:
        return self.runner.http.get(f"{self.runner.receiver_url}/v1/stats").json()

    def postfix(self, drive) -> tuple[float, float]:
        """(smtpd's, all of Postfix's) CPU microseconds per session while `drive(port)` runs
        and returns sessions."""
        before, everything_before = smtpd_cpu_seconds(self.postfix_port), postfix_cpu_seconds()
        sessions = drive(self.postfix_port)
        time.sleep(0.5)  # cleanup and qmgr finish the last messages
        after, everything_after = smtpd_cpu_seconds(self.postfix_port), postfix_cpu_seconds()
        self.spawned_mid_run += len(after.keys() - before.keys())
        smtpd = sum(after[pid] - before.get(pid, 0.0) for pid in after)
        return smtpd * 1e6 / sessions, (everything_after - everything_before) * 1e6 / sessions

    def receiver(self, drive, mode: str) -> tuple[float, float]:
        """(CPU charged to the sessions, process CPU) in microseconds per session."""
        before = self._receiver_stats()
        sessions = drive(self.receiver_port)
        deadline = time.monotonic() + 15
        while True:  # sessions are counted when they end, just after the client's QUIT
            after = self._receiver_stats()
            if after[mode]["sessions"] - before[mode]["sessions"] >= sessions or \
                    time.monotonic() > deadline:
                break
            time.sleep(0.1)
        charged = after[mode]["session_cpu_seconds"] - before[mode]["session_cpu_seconds"]
        process = after["process"]["cpu_seconds_total"] - before["process"]["cpu_seconds_total"]
        return charged * 1e6 / sessions, process * 1e6 / sessions


def smtp_source(messages: int, rate: float, size: int):
    """Plain sessions from Postfix's smtp-source: `rate` parallel slots, each sending a message
    on a new connection and then waiting a second: about `rate` sessions per second."""
    def drive(port: int) -> int:
        subprocess.run(
            ["smtp-source", "-s", str(int(rate)), "-w", "1", "-m", str(messages),
             "-l", str(size), "-M", "bot.tlsstorm.test", "-f", "bot@spam.tlsstorm.test",
             "-t", "victim@receiver.tlsstorm.test", f"127.0.0.1:{port}"],
            check=True, timeout=messages / rate * 3 + 60)
        return messages
    return drive


def sender_wave(runner: SweepRunner, messages: int, rate: float, tls_ratio: float = 1.0):
    """Sessions from our sender's /v1/waves aimed at a port; returns the messages accepted."""
    def drive(port: int) -> int:
        wave = runner.send_wave(tls_ratio, rate, messages, f"  {tls_ratio:.0%} TLS to :{port}",
                                target=f"127.0.0.1:{port}")
        accepted = wave["plain"]["ok"] + wave["tls"]["ok"]
        if accepted < messages:
            print(f"  {accepted} of {messages} accepted ({wave['skipped']} skipped by the "
                  f"open-loop pacing, errors {wave['errors']}); CPU is per accepted message")
        if not accepted:
            raise SystemExit(f"nothing was accepted on port {port}")
        return accepted
    return drive


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=600)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--key-type", default="rsa2048", choices=typing.get_args(KeyType))
    flags = parser.parse_args()
    postfix_port = free_port()
    # (server, drive) -> microseconds per session, one per round; server is smtpd, process
    # (the receiver's) or charged (to the receiver's sessions); drive is how sessions came.
    runs: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
    with tempfile.TemporaryDirectory() as folder:
        cert, key = certificate_files(Path(folder), flags.key_type)
        subprocess.run(["bash", str(SINK), "start", str(postfix_port), str(cert), str(key)],
                       check=True, stdout=subprocess.DEVNULL)
        try:
            environment = stack_environment(Path(folder), cert, key)
            with stack_runner(overrides=environment) as runner:
                receiver_port = int(environment["TLSSTORM_RECEIVER_SMTP_PORT"])
                servers = Servers(runner, postfix_port, receiver_port)
                drives = {
                    "plain, smtp-source": ("plain", smtp_source(flags.messages, flags.rate,
                                                                runner.size)),
                    "plain, our sender": ("plain", sender_wave(runner, flags.messages,
                                                               flags.rate, tls_ratio=0.0)),
                    "STARTTLS, our sender": ("tls", sender_wave(runner, flags.messages,
                                                                flags.rate)),
                }
                print("warming up: smtpd processes spawned, both servers' TLS set up ...")
                for port in (postfix_port, receiver_port):
                    sender_wave(runner, 300, flags.rate * 2)(port)
                    smtp_source(200, flags.rate * 2, runner.size)(port)
                servers.spawned_mid_run = 0
                for round_number in range(1, flags.repeat + 1):
                    print(f"round {round_number}/{flags.repeat} ...")
                    for name, (mode, drive) in drives.items():
                        smtpd, postfix = servers.postfix(drive)
                        runs["smtpd", name].append(smtpd)
                        runs["postfix", name].append(postfix)
                        charged, process = servers.receiver(drive, mode)
                        runs["charged", name].append(charged)
                        runs["process", name].append(process)
        finally:
            subprocess.run(["bash", str(SINK), "stop"], check=False)
    report(flags, runs, servers.spawned_mid_run)


def report(flags: argparse.Namespace, runs: dict[tuple[str, str], list[float]],
           spawned: int) -> None:
    print(f"\nmachine: {machine_note()}")
    print(f"certificate {flags.key_type}, TLS 1.3, no session resumption; {flags.repeat} rounds "
          f"of {flags.messages} sessions per column at ~{flags.rate:g}/s, one message each; "
          f"mean +- 95% confidence interval; smtpd processes spawned during measured runs: "
          f"{spawned}")
    drives = ("plain, smtp-source", "plain, our sender", "STARTTLS, our sender")
    servers = (("Postfix smtpd", "smtpd"), ("Postfix, all processes", "postfix"),
               ("receiver, process", "process"), ("receiver, charged", "charged"))
    print(f"{'CPU per session (us)':<22}" + "".join(f"{drive:>22}" for drive in drives))
    for name, server in servers:
        print(f"{name:<22}" + "".join(f"{shown(runs[server, drive]):>22}" for drive in drives))
    for plain_drive in drives[:2]:
        print(f"\nTLS/plain factor, plain sessions from {plain_drive.split(', ')[1]}:")
        factors = {server: [tls / plain for tls, plain in zip(
            runs[server, drives[2]], runs[server, plain_drive], strict=True)]
            for _, server in servers}
        for name, server in servers:
            print(f"  {name:<24}{shown(factors[server], 'x', 2):>16}")
        for server, theirs, what in (("process", "smtpd", "process CPU / smtpd's"),
                                     ("process", "postfix", "process CPU / all Postfix's"),
                                     ("charged", "smtpd", "CPU charged / smtpd's")):
            distance = [ours / other for ours, other in zip(factors[server], factors[theirs],
                                                            strict=True)]
            print(f"  receiver's factor, {what}: {shown(distance, 'x', 2)} "
                  f"(target within {TARGET_FACTOR_DISTANCE:.0%}: {_within_band(distance)})")
    for server, theirs, what in (("process", "smtpd", "process CPU / smtpd's"),
                                 ("process", "postfix", "process CPU / all Postfix's"),
                                 ("charged", "smtpd", "CPU charged to sessions / smtpd's")):
        over = [ours / other for ours, other in zip(runs[server, drives[0]],
                                                    runs[theirs, drives[0]], strict=True)]
        mean, half = mean_ci(over)
        verdict = ("met" if mean + half <= TARGET_PLAIN_OVER_SMTPD else "not met"
                   if mean - half > TARGET_PLAIN_OVER_SMTPD else "within noise of the target")
        print(f"plain session from smtp-source, receiver {what}: "
              f"{shown(over, 'x', 2)} (target <= {TARGET_PLAIN_OVER_SMTPD}x: {verdict})")


def _within_band(ratios: list[float]) -> str:
    """Met when the whole 95% interval lies within the band around 1, not met when it lies
    outside, else whether the mean does."""
    mean, half = mean_ci(ratios)
    low, high = 1 - TARGET_FACTOR_DISTANCE, 1 + TARGET_FACTOR_DISTANCE
    if low <= mean - half and mean + half <= high:
        return "met"
    if mean + half < low or mean - half > high:
        return "not met"
    return f"mean {'within' if low <= mean <= high else 'outside'}, interval across the edge"


if __name__ == "__main__":
    main()
