"""Sender CPU per message on its two TLS client stacks, each beside the receiver it drives: the
tlsstorm sender (Python around its C engine) with rustls (profile default) and with OpenSSL 3.0
(profile openssl), the same sender on its reference engine (pure Python on aiosmtplib, OpenSSL:
what it sends with where the engine was not built), and a small rustls program that holds the
same SMTP conversation with no Python at all (bench/tls_client_halves, binary
smtp_client_floor). Why: issue 12 asks the sender for at most 0.5x the receiver's CPU per
message; this says which stack gets there, how far the sender is from a client with no Python,
what the reference engine costs beside the compiled one (issue 31), and whether the receiver's
own cost depends on which client stack drives it.

Round by round, each client sends one plain and one STARTTLS run of --messages at --rate to the
same receiver process (the OpenSSL profile STARTTLS only: plain is the same on both); each
figure is the mean of --repeat rounds with its 95% confidence interval, and each ratio is taken
against the receiver's process CPU during that same run. The rustls program's CPU is the
kernel's account of the finished process (wait4), start-up included.

Usage: python bench/client_stack_floor.py [--messages 1000] [--rate 200] [--repeat 3]
                                          [--key-types ecdsa-p256,rsa2048]
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

from fixtures import certificate_files, stack_environment  # bench/ is on sys.path
from locust_path import children_cpu_seconds
from receiver_cost import ENGINE_THREAD, TARGET_SENDER_SHARE, _verdict, ratios
from tls_client_halves import rustls_binary
from tlsstorm.common.intervals import shown
from tlsstorm.common.machine import machine_note
from tlsstorm.common.process import cpu_seconds_of, thread_cpu_seconds_of
from tlsstorm.sweep.run import SweepRunner, stack_runner

MODES = ((0.0, "plain"), (1.0, "STARTTLS"))
RUSTLS_WORKERS = 16  # threads of the rustls program: far more than the sessions in flight
MESSAGE_SIZE = 2048  # the sweep runner's size


# Each client, with the receiver's process CPU per message during its runs:
# (client's figure, the receiver's during the same run).
Round = dict[str, tuple[float, float]]
BOTH = ("plain", "STARTTLS")
CLIENTS = (  # (key, label, the modes it runs, the receiver it drove shown after it)
    ("sender", "tlsstorm sender process (rustls)", BOTH, False),
    ("engine", "  of which its engine thread (C, rustls)", BOTH, True),
    # plain is the same on both of the sender's stacks: run once
    ("sender_openssl", "tlsstorm sender process (OpenSSL 3.0)", ("STARTTLS",), False),
    ("engine_openssl", "  of which its engine thread (C, OpenSSL)", ("STARTTLS",), True),
    ("sender_reference", "sender on its reference engine (aiosmtplib)", BOTH, True),
    ("rustls", "rustls program's process (no Python)", BOTH, True),
)
MODES_OF = {key: modes for key, _, modes, _ in CLIENTS}


def rustls_run(binary: Path, port: int, mode: str, flags: argparse.Namespace,
               receiver_pid: int) -> tuple[float, float]:
    """The rustls program's and the receiver's process CPU per message over one run."""
    receiver_before, client_before = cpu_seconds_of(receiver_pid), children_cpu_seconds()
    finished = subprocess.run(
        [str(binary), "127.0.0.1", str(port), mode.lower(), str(flags.messages),
         str(flags.rate), str(RUSTLS_WORKERS), str(MESSAGE_SIZE)],
        capture_output=True, text=True, timeout=flags.messages / flags.rate + 120)
    client_cpu = children_cpu_seconds() - client_before
    time.sleep(0.5)  # the receiver closes the last sessions
    receiver_cpu = cpu_seconds_of(receiver_pid) - receiver_before
    ok, failed = map(int, finished.stdout.split() or ("0", "-1"))
    if finished.returncode != 0 or failed:
        raise SystemExit(f"the rustls client failed ({failed} conversations): "
                         f"{finished.stderr[-500:]}")
    return client_cpu * 1e6 / ok, receiver_cpu * 1e6 / ok


def sender_run(runner: SweepRunner, ratio: float, flags: argparse.Namespace, label: str,
               receiver_pid: int, profile: str) -> tuple[float, float, float]:
    """The sender's process and engine-thread CPU, and the receiver's, per message."""
    sender_pid = runner.stack.stack.pid("sender")
    before = (cpu_seconds_of(sender_pid), thread_cpu_seconds_of(sender_pid, ENGINE_THREAD),
              cpu_seconds_of(receiver_pid))
    point = runner.wave(ratio, flags.rate, flags.messages, label, profile=profile)
    after = (cpu_seconds_of(sender_pid), thread_cpu_seconds_of(sender_pid, ENGINE_THREAD),
             cpu_seconds_of(receiver_pid))
    sender, engine, receiver = ((end - start) * 1e6 / point.messages
                                for start, end in zip(before, after, strict=True))
    return sender, engine, receiver


def measure(key_type: str, binary: Path, flags: argparse.Namespace) -> dict[str, list[Round]]:
    rounds: dict[str, list[Round]] = {mode: [] for _, mode in MODES}
    with tempfile.TemporaryDirectory() as folder:
        cert, key = certificate_files(Path(folder), key_type)
        environment = stack_environment(Path(folder), cert, key)
        port = int(environment["TLSSTORM_RECEIVER_SMTP_PORT"])
        with stack_runner(overrides=environment) as runner:
            receiver_pid = runner.stack.stack.pid("receiver")
            for profile in ("default", "openssl"):
                runner.wave(0.5, flags.rate, 100, f"warm-up {profile}", profile=profile)
            rustls_run(binary, port, "STARTTLS", argparse.Namespace(
                messages=100, rate=flags.rate), receiver_pid)
            for number in range(1, flags.repeat + 1):
                for ratio, mode in MODES:
                    one: Round = {}
                    for profile, suffix in (("default", ""), ("openssl", "_openssl")):
                        if mode not in MODES_OF[f"sender{suffix}"]:
                            continue
                        sender, engine, receiver = sender_run(
                            runner, ratio, flags,
                            f"{key_type} {profile:>7} {mode:>8} {number}/{flags.repeat}",
                            receiver_pid, profile)
                        one[f"sender{suffix}"] = (sender, receiver)
                        one[f"engine{suffix}"] = (engine, receiver)
                    rustls, receiver_rustls = rustls_run(binary, port, mode, flags,
                                                         receiver_pid)
                    one["rustls"] = (rustls, receiver_rustls)
                    rounds[mode].append(one)
        # The reference engine is the sender's choice at start: a stack of its own.
        environment = {**stack_environment(Path(folder), cert, key),
                       "TLSSTORM_SENDER_ENGINE": "reference"}
        with stack_runner(overrides=environment, label="the stack, reference engine") as runner:
            receiver_pid = runner.stack.stack.pid("receiver")
            runner.wave(0.5, flags.rate, 100, "warm-up reference")
            for number in range(flags.repeat):
                for ratio, mode in MODES:
                    sender, _, receiver = sender_run(
                        runner, ratio, flags,
                        f"{key_type} reference {mode:>8} {number + 1}/{flags.repeat}",
                        receiver_pid, "default")
                    rounds[mode][number]["sender_reference"] = (sender, receiver)
    return rounds


def report(key_type: str, rounds: dict[str, list[Round]]) -> None:
    def column(mode: str, key: str, which: int) -> list[float]:
        return [one[key][which] for one in rounds[mode]]

    def cell(mode: str, key: str, modes: tuple[str, ...], which: int) -> str:
        return shown(column(mode, key, which)) if mode in modes else "-"

    print(f"\n== certificate {key_type} ==")
    print(f"{'CPU per message (us)':<52}{'plain':>16}{'STARTTLS':>16}")
    for key, label, modes, receiver_after in CLIENTS:
        print(f"{label:<52}{cell('plain', key, modes, 0):>16}"
              f"{cell('STARTTLS', key, modes, 0):>16}")
        if receiver_after:
            print(f"{'  the receiver process it drove':<52}{cell('plain', key, modes, 1):>16}"
                  f"{cell('STARTTLS', key, modes, 1):>16}")
    print("over the receiver's process CPU in the same run:")
    for key, label, modes, _ in CLIENTS:
        cells = []
        for _, mode in MODES:
            if mode not in modes:
                continue
            share = ratios(column(mode, key, 0), column(mode, key, 1))
            cells.append(f"{mode} {shown(share, 'x', 2)} "
                         f"({_verdict(share, TARGET_SENDER_SHARE)})")
        print(f"  {label.strip():<44}{'; '.join(cells)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--key-types", default="ecdsa-p256,rsa2048")
    flags = parser.parse_args()
    binary = rustls_binary("smtp_client_floor")
    results = [(key_type, measure(key_type, binary, flags))
               for key_type in flags.key_types.split(",")]
    print(f"\nmachine: {machine_note()}")
    print(f"TLS 1.3, X25519, no tickets, no chain check (the sender's default: any certificate, "
          f"the handshake's signature checked); {flags.repeat} rounds of {flags.messages} "
          f"messages of {MESSAGE_SIZE} B at {flags.rate:g}/s per stack and mode, one message "
          f"per session, tracing off; mean +- 95% confidence interval; verdicts against "
          f"<= {TARGET_SENDER_SHARE}x")
    for key_type, rounds in results:
        report(key_type, rounds)


if __name__ == "__main__":
    main()
