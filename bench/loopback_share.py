"""Loopback's share of the receiver's CPU: how much of it is the client's network receive path.

On loopback the kernel delivers a packet in the context of whoever sends it, so the receiver's
process pays for the client's receive path on every byte it sends (STARTTLS sends ten times the
bytes of a plain session), and the client pays for the receiver's. On a real network both
receive paths run in the kernel's softirq, charged to no mail process. Steering loopback's
receive processing to the other core with RPS (as root: /sys/class/net/lo/queues/rx-0/rps_cpus),
with the receiver pinned to core 0 and the client to core 1, takes it out of the receiver's
process; the difference per session, plain and STARTTLS, is loopback's share.

Usage (root, 2+ cores): python bench/loopback_share.py [--sessions 600] [--repeat 3]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import smtplib
import ssl
import time
from pathlib import Path

from fixtures import receiver_process  # bench/ is on sys.path
from tlsstorm.common.intervals import mean_ci, shown
from tlsstorm.common.machine import machine_note
from tlsstorm.common.process import cpu_seconds_of

RPS = Path("/sys/class/net/lo/queues/rx-0/rps_cpus")
BODY = b"Subject: spam\r\n\r\n" + (b"x" * 76 + b"\r\n") * 26


def send(port: int, tls: bool, count: int) -> None:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE

    def one(_: int) -> None:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            if tls:
                client.starttls(context=context)
            client.sendmail("bot@client.test", ["victim@receiver.tlsstorm.test"], BODY)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(one, range(count)))


def cpu_per_session_us(pid: int, port: int, tls: bool, count: int) -> float:
    before = cpu_seconds_of(pid)
    time.sleep(1.0)
    idle_per_s = cpu_seconds_of(pid) - before
    before, started = cpu_seconds_of(pid), time.monotonic()
    send(port, tls, count)
    time.sleep(0.2)
    spent = cpu_seconds_of(pid) - before - idle_per_s * (time.monotonic() - started)
    return spent * 1e6 / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=600)
    parser.add_argument("--repeat", type=int, default=3)
    flags = parser.parse_args()
    if os.cpu_count() is None or os.cpu_count() < 2 or not os.access(RPS, os.W_OK):
        raise SystemExit("needs 2 cores and root (to steer loopback's receive path with RPS)")
    os.sched_setaffinity(0, {1})
    original = RPS.read_text().strip()
    receiver, port = receiver_process({}, prefix=("taskset", "-c", "0"))
    results: dict[tuple[str, str], list[float]] = {}
    try:
        send(port, True, 50)
        for round_number in range(flags.repeat):
            for steering, mask in (("inline", "0"), ("steered", "2")):
                RPS.write_text(mask)
                for mode, tls in (("plain", False), ("STARTTLS", True)):
                    cost = cpu_per_session_us(receiver.pid, port, tls, flags.sessions)
                    results.setdefault((steering, mode), []).append(cost)
                    print(f"  round {round_number + 1}: {steering:<8} {mode:<8} "
                          f"{cost:8.1f} us/session", flush=True)
    finally:
        RPS.write_text(original)
        receiver.terminate()
        receiver.wait(10)
    print(f"\nmachine: {machine_note()}")
    print(f"{flags.sessions} sessions per wave, {flags.repeat} rounds, receiver on core 0, "
          "client on core 1; receiver process CPU per session (us):")
    print(f"{'':<10}{'loopback':>22} {'receive steered':>22} {'loopback share':>16}")
    for mode in ("plain", "STARTTLS"):
        inline, steered = results["inline", mode], results["steered", mode]
        shares = [100 * (1 - s / i) for i, s in zip(inline, steered, strict=True)]
        print(f"{mode:<10}{shown(inline, digits=1):>22} {shown(steered, digits=1):>22} "
              f"{shown(shares, '%'):>16}")
    factors = {name: [t / p for p, t in zip(results[name, "plain"], results[name, "STARTTLS"],
                                            strict=True)] for name in ("inline", "steered")}
    print(f"TLS/plain: {mean_ci(factors['inline'])[0]:.2f}x on loopback, "
          f"{mean_ci(factors['steered'])[0]:.2f}x with receive paths steered away")


if __name__ == "__main__":
    main()
