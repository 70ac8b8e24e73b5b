"""What a message costs the generator when Locust drives it (the path users take in the chart),
beside what it costs the receiver: sender process CPU, Locust's CPU and the receiver's per
message, one request per message (--batch 1, how Locust asked before issue 12) against the
batched requests Locust makes now. Each figure is the mean of --repeat headless runs with its
95% confidence interval.

Usage: python bench/locust_path.py [--messages 1500] [--users 8] [--tls-ratio 0.7]
                                   [--batches 1,5] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import tempfile
import uuid
from pathlib import Path

from fixtures import certificate_files, stack_environment  # bench/ is on sys.path
from tlsstorm.common.intervals import shown
from tlsstorm.common.machine import machine_note
from tlsstorm.common.process import cpu_seconds_of
from tlsstorm.sweep.run import stack_runner


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def locust_run(runner, flags: argparse.Namespace, batch: int) -> dict[str, float]:
    """One headless run of exactly --messages messages; CPU per message of each side (us)."""
    local = runner.stack
    pids = {name: local.stack.pid(name) for name in ("sender", "receiver")}
    before = {name: cpu_seconds_of(pid) for name, pid in pids.items()}
    locust_before = children_cpu_seconds()
    command = local.locust_command(
        "SpamViaSender", "--headless", "--users", str(flags.users), "--spawn-rate",
        str(flags.users), "--max-messages", str(flags.messages), "--tls-ratio",
        str(flags.tls_ratio), "--batch", str(batch), "--wave-id", f"lp-{uuid.uuid4().hex[:6]}",
        "--run-time", "300s", "--stop-timeout", "30", "--only-summary", "--loglevel", "ERROR")
    subprocess.run(command, env={**os.environ, **local.locust_env()}, check=True,
                   stdout=subprocess.DEVNULL)
    per_message = {name: (cpu_seconds_of(pid) - before[name]) * 1e6 / flags.messages
                   for name, pid in pids.items()}
    per_message["locust"] = (children_cpu_seconds() - locust_before) * 1e6 / flags.messages
    return per_message


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1500)
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--tls-ratio", type=float, default=0.7)
    parser.add_argument("--batches", default="1,5")
    parser.add_argument("--repeat", type=int, default=3)
    flags = parser.parse_args()
    batches = [int(text) for text in flags.batches.split(",")]
    results: dict[int, list[dict[str, float]]] = {batch: [] for batch in batches}
    with tempfile.TemporaryDirectory() as folder:
        cert, key = certificate_files(Path(folder), "rsa2048")
        environment = stack_environment(Path(folder), cert, key)
        with stack_runner(overrides=environment, tracing=True,
                          label="the local stack, tracing on") as runner:
            locust_run(runner, argparse.Namespace(**{**vars(flags), "messages": 100}), 5)
            for _ in range(flags.repeat):
                for batch in batches:
                    results[batch].append(locust_run(runner, flags, batch))
    print(f"\nmachine: {machine_note()}")
    print(f"Locust SpamViaSender, {flags.users} users, {flags.messages} messages per run at "
          f"{flags.tls_ratio:.0%} STARTTLS, RSA-2048, tracing on (Locust --otel); "
          f"{flags.repeat} runs each; mean +- 95% confidence interval")
    print(f"{'connections per request':<26}{'sender us/msg':>16}{'Locust us/msg':>16}"
          f"{'receiver us/msg':>18}{'sender/receiver':>18}")
    for batch, runs in results.items():
        def column(name: str, runs: list[dict[str, float]] = runs) -> list[float]:
            return [run[name] for run in runs]
        share = [run["sender"] / run["receiver"] for run in runs]
        print(f"{batch:<26}{shown(column('sender')):>16}{shown(column('locust')):>16}"
              f"{shown(column('receiver')):>18}{shown(share, 'x', 2):>18}")


if __name__ == "__main__":
    main()
