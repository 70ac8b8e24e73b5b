"""`tlsstorm demo`: start the local stack, send one mixed wave, print what TLS cost the receiver."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from tlsstorm.collector.report import (
    memory_sentence,
    outbound_sentence,
    process_sentence,
    text_table,
)
from tlsstorm.common.auth import bearer_headers
from tlsstorm.local import LocalStack
from tlsstorm.sweep.run import receiver_wave_stats


def _run_locust_wave(local: LocalStack, messages: int, tls_ratio: float, users: int,
                     size: int) -> dict[str, Any]:
    """A headless Locust run through the sender: exactly `messages` messages, then it ends."""
    wave_id = f"demo-{uuid.uuid4().hex[:8]}"
    command = local.locust_command(
        "SpamViaSender", "--headless", "--users", str(users), "--spawn-rate", str(users),
        "--max-messages", str(messages), "--tls-ratio", str(tls_ratio),
        "--message-size", str(size), "--wave-id", wave_id, "--run-time", "600s",
        "--stop-timeout", "30", "--only-summary", "--loglevel", "WARNING")
    finished = subprocess.run(command, env={**os.environ, **local.locust_env()}, check=False)
    if finished.returncode != 0:
        raise SystemExit(f"locust exited with code {finished.returncode}")
    return {"id": wave_id, "messages": messages}


def _receiver_stats(local: LocalStack, http: httpx.Client, wave: dict[str, Any]) -> dict:
    """The receiver's view of the wave, once every message of it has arrived there."""
    stats = receiver_wave_stats(http, local.receiver_url(), wave["id"], wave["messages"], 10)
    if stats is None:
        raise SystemExit(f"the receiver saw no session of wave {wave['id']}")
    return stats


def _collector_summary(local: LocalStack, http: httpx.Client, wave_id: str,
                       sessions: int, messages: int) -> dict:
    """The collector's summary of the wave once the spans of every session have arrived, and
    the receiver's process samples of the wave's last second."""
    deadline = time.monotonic() + 30
    while True:
        response = http.get(local.collector_url("/v1/summary"), params={"wave": wave_id})
        if response.status_code == 404:  # no span of the wave has arrived yet
            if time.monotonic() > deadline:
                raise SystemExit(f"tlsstorm demo: no span of wave {wave_id} reached the "
                                 "collector in 30 s")
            time.sleep(0.25)
            continue
        summary = response.json()
        receiver, sender = summary["receiver"], summary["sender"]
        seen_sessions = receiver["plain"]["sessions"] + receiver["starttls"]["sessions"]
        seen_messages = sender["plain"]["messages"] + sender["starttls"]["messages"]
        process = summary["process"]
        sampled = process is not None and summary["last_unix_s"] is not None and \
            process["last_sample_unix_s"] > summary["last_unix_s"]
        if (seen_sessions >= sessions and seen_messages >= messages and sampled) or \
                time.monotonic() > deadline:
            return summary
        time.sleep(0.25)


def run_demo(messages: int, tls_ratio: float, users: int, size: int) -> None:
    local = LocalStack()
    print(f"starting the local stack (receiver {local.receiver_target}, "
          f"collector {local.collector_url()}) ...")
    local.stack.start()
    try:
        print(f"Locust (headless) sends {messages} messages of {size} bytes through the sender "
              f"with {users} users, {tls_ratio:.0%} STARTTLS")
        wave = _run_locust_wave(local, messages, tls_ratio, users, size)
        with httpx.Client(timeout=30, headers=bearer_headers()) as http:
            stats = _receiver_stats(local, http, wave)
            sessions = stats["plain"]["sessions"] + stats["tls"]["sessions"]
            summary = _collector_summary(local, http, wave["id"], sessions, messages)
            report_html = http.get(local.collector_url("/"), params={"wave": wave["id"]}).text
            tls_settings = http.get(local.receiver_url("/v1/tls")).json()
    finally:
        local.stack.stop()
    received = stats["plain"]["messages"] + stats["tls"]["messages"]
    print(f"\nwave {wave['id']}: the receiver accepted {received} of {messages} messages; "
          f"TLS {tls_settings['tls_min_version']}-{tls_settings['tls_max_version']}, "
          f"certificates served ({tls_settings['cert_source']}): "
          f"{tls_settings['chain_summary']}")
    receiver = summary["receiver"]
    print("\nthe collector's cost table (receiver side, from its spans):")
    print(text_table(receiver))
    sentence = outbound_sentence(receiver)
    if sentence:
        print(f"\n{sentence}")
    print(process_sentence(summary["process"]))
    print(memory_sentence(summary["memory"]))
    agrees = (receiver["plain"]["sessions"], receiver["starttls"]["sessions"]) == (
        stats["plain"]["sessions"], stats["tls"]["sessions"])
    print(f"receiver /v1/stats for this wave: {stats['plain']['sessions']} plain, "
          f"{stats['tls']['sessions']} STARTTLS sessions "
          f"({'agrees with' if agrees else 'DIFFERS from'} the collector)")
    results = Path("results")
    results.mkdir(exist_ok=True)
    (results / "demo-latest.json").write_text(json.dumps(
        {"wave": wave, "receiver": stats, "collector": summary, "tls": tls_settings}, indent=2))
    report = results / "report.html"
    report.write_text(report_html)
    print(f"\nHTML report with plots: {report.resolve()}")
    print(f"raw figures: {(results / 'demo-latest.json').resolve()}")
    problems = []
    if received != messages:
        problems.append(f"the receiver accepted {received} of {messages} messages")
    if not agrees:
        problems.append("the receiver and the collector count different sessions")
    expected_tls = math.floor(messages * tls_ratio)  # Locust spreads STARTTLS exactly so
    if stats["tls"]["messages"] != expected_tls:
        problems.append(f"{stats['tls']['messages']} STARTTLS messages arrived where "
                        f"{expected_tls} were sent")
    if problems:
        sys.exit("tlsstorm demo: " + "; ".join(problems))
