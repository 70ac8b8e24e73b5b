"""The issue-12 table with the chart's defaults as cgroup CPU quotas: the receiver at 1 CPU, each
sender replica a process of its own at 1 CPU, the replicas naming each other as peers (as the
chart's headless Service does); one wave at 70% STARTTLS posted to the first replica, which
splits it over all of them, at rising rates. Each row gives every component's CPU against its
limit (throttled time), the receiver's handshake latency, late and skipped sends, and what
limited the wave.

Usage (as root, where cgroups can be made): python bench/generator_headroom.py
          [--senders 2] [--sender-cores 1] [--receiver-cores 1] [--rates 200,400,600,800,1000]
          [--seconds 8] [--tls-ratio 0.7]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ holds the cgroup helpers
from tests import cgroups
from tests.locust_helpers import free_port
from tests.receiver_process import ReceiverProcess, ServiceProcess

from tlsstorm.common.cpu_limit import limited_by, usage_between
from tlsstorm.common.machine import machine_note

QUIET = {"OTEL_SDK_DISABLED": "true", "TLSSTORM_RECEIVER_SESSION_TICKETS": "false"}


def wave_step(http: httpx.Client, receiver: ServiceProcess, senders: list[ServiceProcess],
              rate: float, seconds: float, tls_ratio: float) -> dict:
    """One wave, posted to the first replica and split by it; every side's CPU over it."""
    http.post(f"{receiver.http}/v1/stats/reset").raise_for_status()
    components = {"receiver": receiver} | {f"sender{index + 1}": sender
                                          for index, sender in enumerate(senders)}
    before = {name: process.stats()["cpu"] for name, process in components.items()}
    started = http.post(f"{senders[0].http}/v1/waves", json={
        "rate": rate, "count": max(1, int(rate * seconds)), "tls_ratio": tls_ratio,
        "concurrency": 256}).json()
    assert started["replicas"] == len(senders), started
    while (wave := http.get(f"{senders[0].http}{started['url']}").json())["status"] == \
            "running":
        time.sleep(0.2)
    used = {name: usage_between(before[name], process.stats()["cpu"])
            for name, process in components.items()}
    time.sleep(0.5)  # the last sessions end at the receiver
    stats = receiver.stats()
    return {"rate": rate, "used": used, "tls": stats["tls"],
            "received": stats["plain"]["messages"] + stats["tls"]["messages"],
            "sent": wave["plain"]["ok"] + wave["tls"]["ok"], "late": wave["late"],
            "skipped": wave["skipped"],
            "limited_by": limited_by({name: used[name] for name in
                                      [*list(components)[1:], "receiver"]})}


def cell(used: dict) -> str:
    throttled = used["throttled_seconds"]
    return f"{used['process_cores']:.2f} ({throttled:.2f} s)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--senders", type=int, default=2)
    parser.add_argument("--sender-cores", type=float, default=1.0)
    parser.add_argument("--receiver-cores", type=float, default=1.0)
    parser.add_argument("--rates", default="200,400,600,800,1000")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--tls-ratio", type=float, default=0.7)
    flags = parser.parse_args()
    reason = cgroups.unavailable("cpu")
    if reason:
        raise SystemExit(f"this bench needs CPU cgroups: {reason}")
    rows = []
    with contextlib.ExitStack() as stack, httpx.Client(timeout=60) as http:
        receiver_group = stack.enter_context(cgroups.cpu_group(flags.receiver_cores))
        receiver = ReceiverProcess(QUIET, receiver_group.procs)
        stack.callback(receiver.stop)
        senders = []
        ports = [free_port() for _ in range(flags.senders)]
        for port in ports:
            group = stack.enter_context(cgroups.cpu_group(flags.sender_cores))
            sender = ServiceProcess("sender", {
                **QUIET, "TLSSTORM_SENDER_TARGET": f"127.0.0.1:{receiver.smtp_port}",
                "TLSSTORM_SENDER_HTTP_PORT": str(port),
                "TLSSTORM_SENDER_PEERS": ",".join(f"127.0.0.1:{peer}" for peer in ports)},
                group.procs)
            stack.callback(sender.stop)
            senders.append(sender)
        wave_step(http, receiver, senders, 100, 1, flags.tls_ratio)  # warm-up
        for rate in (float(text) for text in flags.rates.split(",")):
            rows.append(wave_step(http, receiver, senders, rate, flags.seconds,
                                  flags.tls_ratio))
            print(f"  {rate:g}/s done", file=sys.stderr)
    print(f"machine: {machine_note()}")
    print(f"receiver at {flags.receiver_cores:g} CPU, {flags.senders} sender replica(s) at "
          f"{flags.sender_cores:g} CPU each (cgroup quotas); waves of {flags.seconds:g} s at "
          f"{flags.tls_ratio:.0%} STARTTLS posted to sender1, split over the replicas by the "
          "senders; tracing off, no tickets")
    senders_header = " ".join(f"{f'sender{i + 1} CPU (thr.)':>19}" for i in range(flags.senders))
    print(f"{'offered':>8} {'received':>9} {senders_header} {'receiver CPU (thr.)':>20} "
          f"{'hs p50 / p99 ms':>17} {'late':>6} {'skipped':>8}  limited by")
    for row in rows:
        used = row["used"]
        senders_cells = " ".join(f"{cell(used[f'sender{i + 1}']):>19}"
                                 for i in range(flags.senders))
        handshake = row["tls"]["handshake_ms"]
        print(f"{row['rate']:>7g}/s {row['received']:>9} {senders_cells} "
              f"{cell(used['receiver']):>20} "
              f"{handshake['p50'] or 0:>8.1f} / {handshake['p99'] or 0:<6.1f} {row['late']:>6} "
              f"{row['skipped']:>8}  {', '.join(row['limited_by']) or '-'}")


if __name__ == "__main__":
    main()
