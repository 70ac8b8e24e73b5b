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
    delivery_sentence,
    generator_sentence,
    memory_sentence,
    outbound_sentence,
    process_sentence,
    target_sentences,
    text_table,
)
from tlsstorm.common.auth import bearer_headers
from tlsstorm.localstack.layout import LocalStack
from tlsstorm.localstack.wave_stats import receiver_wave_stats


def _run_locust_wave(local: LocalStack, messages: int, tls_ratio: float, users: int,
                     size: int, rate: float) -> dict[str, Any]:
    """A headless Locust run through the sender, at the stack's target: exactly `messages`
    messages at `rate` a second (each user paced to its share, one message per request so the
    seconds are even), then it ends."""
    wave_id = f"demo-{uuid.uuid4().hex[:8]}"
    command = local.locust_command(
        "SpamViaSender", "--headless", "--users", str(users), "--spawn-rate", str(users),
        "--max-messages", str(messages), "--user-rate", str(rate / users), "--batch", "1",
        "--tls-ratio", str(tls_ratio), "--message-size", str(size), "--wave-id", wave_id,
        "--run-time", f"{math.ceil(2 * messages / rate) + 60}s", "--stop-timeout", "30",
        "--only-summary", "--loglevel", "WARNING", "--target", local.target_name)
    finished = subprocess.run(command, env={**os.environ, **local.locust_env()}, check=False)
    if finished.returncode != 0:
        raise SystemExit(f"locust exited with code {finished.returncode}")
    return {"id": wave_id, "messages": messages}


def _per_message_sentence(summary: dict[str, Any], received: int) -> str:
    """Each side's CPU per message of the wave, from the same per-second figures the report
    gives (the generators' and the receiver's process spans)."""
    parts = [f"{entry['service']} "
             f"{entry['cores_mean'] * entry['seconds'] * 1000 / max(received, 1):.2f} ms"
             for entry in (summary["generators"] or {}).get("services", [])]
    per_message = (summary["process"] or {}).get("cpu_ms_per_message")
    if per_message is not None:
        parts.append(f"receiver process {per_message:.2f} ms")
    return "CPU per message over the wave: " + "; ".join(parts) + "."


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
        process, last = summary["process"], summary["last_unix_s"]
        generators = (summary["generators"] or {}).get("services", [])
        # The receiver's and both generators' (the sender, Locust) process spans cover the
        # wave's last second.
        sampled = process is not None and last is not None and \
            process["last_sample_unix_s"] > last and len(generators) >= 2 and \
            all(entry["seconds"] >= last - summary["first_unix_s"] for entry in generators)
        if (seen_sessions >= sessions and seen_messages >= messages and sampled) or \
                time.monotonic() > deadline:
            return summary
        time.sleep(0.25)


def _target_costs(local: LocalStack, http: httpx.Client, wave_id: str,
                  messages: int) -> dict[str, Any]:
    """The collector's figures of a metered server for the wave, once the sender's spans of
    every message and the meter's samples of its last second have arrived."""
    deadline = time.monotonic() + 30
    while True:
        costs = http.get(local.collector_url("/v1/targets/summary"),
                         params={"target": local.target, "wave": wave_id})
        if costs.status_code == 200:
            found = costs.json()
            sender = found["sender"]
            sent = sender["plain"]["messages"] + sender["starttls"]["messages"]
            if sent >= messages and found["process"] and \
                    found["process"]["samples"] >= found["process"]["seconds"] - 1:
                return found
        if time.monotonic() > deadline:
            raise SystemExit(f"tlsstorm demo: the collector has no figures of {local.target} "
                             f"for wave {wave_id} after 30 s (is its meter sending?)")
        time.sleep(0.5)


def _demo_at_target(local: LocalStack, messages: int, tls_ratio: float, users: int,
                    size: int, rate: float) -> None:
    """The demo aimed at a real MTA: the sender's view of its sessions beside its meter."""
    with httpx.Client(timeout=30, headers=bearer_headers()) as http:
        wave = _run_locust_wave(local, messages, tls_ratio, users, size, rate)
        costs = _target_costs(local, http, wave["id"], messages)
        report_html = http.get(local.collector_url("/"), params={"target": local.target,
                                                                 "wave": wave["id"]}).text
    sender = costs["sender"]
    failed = sum(sum(sender[mode]["errors"].values()) for mode in ("plain", "starttls"))
    print(f"\nwave {wave['id']}: {local.target_name} at {local.target} took "
          f"{messages - failed} of {messages} messages\n")
    print("the collector's table (the sender's side of each session):")
    print(text_table(sender, receiver=False))
    print()
    for line in target_sentences(costs):
        print(line)
    results = Path("results")
    results.mkdir(exist_ok=True)
    (results / "demo-latest.json").write_text(json.dumps({"wave": wave, "collector": costs},
                                                         indent=2))
    (results / "report.html").write_text(report_html)
    print(f"\nHTML report: {(results / 'report.html').resolve()}")
    print(f"raw figures: {(results / 'demo-latest.json').resolve()}")
    if failed:
        sys.exit(f"tlsstorm demo: {failed} of {messages} messages failed at {local.target}")


def run_demo(messages: int, tls_ratio: float, users: int, size: int, rate: float,
             target: str | None = None) -> None:
    local = LocalStack(target=target)
    if local.target_name != "receiver":
        print(f"starting the local stack with {local.target_name} at {local.target} ...")
        local.stack.start()
        try:
            print(f"Locust (headless) sends {messages} messages of {size} bytes through the "
                  f"sender to {local.target_name} at {rate:g}/s with {users} users, "
                  f"{tls_ratio:.0%} STARTTLS")
            _demo_at_target(local, messages, tls_ratio, users, size, rate)
        finally:
            local.stack.stop()
        return
    print(f"starting the local stack (receiver {local.receiver_target}, "
          f"collector {local.collector_url()}) ...")
    local.stack.start()
    try:
        print(f"Locust (headless) sends {messages} messages of {size} bytes through the sender "
              f"at {rate:g}/s with {users} users, {tls_ratio:.0%} STARTTLS")
        with httpx.Client(timeout=30, headers=bearer_headers()) as http:
            wave = _run_locust_wave(local, messages, tls_ratio, users, size, rate)
            engine = http.get(local.sender_url("/v1/stats")).json()["engine"]
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
    if delivered := delivery_sentence(summary["delivery"]):
        print(delivered)
    print(process_sentence(summary["process"]))
    print(memory_sentence(summary["memory"]))
    print(generator_sentence(summary["generators"]))
    print(_per_message_sentence(summary, received))
    if engine["name"] != "native":
        print(f"The sender sent with its {engine['name']} engine: {engine['why']}.")
    agrees = (receiver["plain"]["sessions"], receiver["starttls"]["sessions"]) == (
        stats["plain"]["sessions"], stats["tls"]["sessions"])
    print(f"receiver /v1/stats for this wave: {stats['plain']['sessions']} plain, "
          f"{stats['tls']['sessions']} STARTTLS sessions "
          f"({'agrees with' if agrees else 'DIFFERS from'} the collector)")
    results = Path("results")
    results.mkdir(exist_ok=True)
    (results / "demo-latest.json").write_text(json.dumps(
        {"wave": wave, "receiver": stats, "collector": summary, "tls": tls_settings,
         "sender_engine": engine}, indent=2))
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
