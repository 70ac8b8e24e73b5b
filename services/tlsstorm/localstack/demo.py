"""`tlsstorm demo`: start the local stack, send one mixed wave, print what TLS cost the receiver."""

from __future__ import annotations

import json
import math
import os
import resource
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from tlsstorm.collector.report import (
    delivery_sentence,
    memory_sentence,
    outbound_sentence,
    process_sentence,
    target_sentences,
    text_table,
)
from tlsstorm.common.auth import bearer_headers
from tlsstorm.common.cpu_limit import BUSY_SHARE, limited_by, usage_between, usage_sentence
from tlsstorm.localstack.layout import LocalStack
from tlsstorm.localstack.wave_stats import receiver_wave_stats


def _run_locust_wave(local: LocalStack, messages: int, tls_ratio: float, users: int,
                     size: int) -> dict[str, Any]:
    """A headless Locust run through the sender, at the stack's target: exactly `messages`
    messages, then it ends."""
    wave_id = f"demo-{uuid.uuid4().hex[:8]}"
    command = local.locust_command(
        "SpamViaSender", "--headless", "--users", str(users), "--spawn-rate", str(users),
        "--max-messages", str(messages), "--tls-ratio", str(tls_ratio),
        "--message-size", str(size), "--wave-id", wave_id, "--run-time", "600s",
        "--stop-timeout", "30", "--only-summary", "--loglevel", "WARNING",
        "--target", local.target_name)
    finished = subprocess.run(command, env={**os.environ, **local.locust_env()}, check=False)
    if finished.returncode != 0:
        raise SystemExit(f"locust exited with code {finished.returncode}")
    return {"id": wave_id, "messages": messages}


def _cpu_counters(local: LocalStack, http: httpx.Client) -> dict[str, Any]:
    """Each side's CPU counters against its limit, Locust's (this process's children), and
    the sender's engine."""
    sender = http.get(local.sender_url("/v1/stats")).json()
    return {"sender": sender["cpu"], "sender_engine": sender["engine"],
            "receiver": http.get(local.receiver_url("/v1/stats")).json()["cpu"],
            "locust": (time.monotonic(), _children_cpu_seconds())}


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _cpu_over_wave(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Cores each component used over the wave against its limit; Locust runs as one
    process (one core at most)."""
    (started, cpu_then), (ended, cpu_now) = before["locust"], after["locust"]
    locust_cores = (cpu_now - cpu_then) / max(ended - started, 1e-9)
    used = {name: usage_between(before[name], after[name]) for name in ("sender", "receiver")}
    used["locust"] = {"process_cores": round(locust_cores, 3), "limit_cores": 1.0,
                      "limit_source": "one process", "throttled_periods": 0,
                      "throttled_seconds": 0.0, "seconds": round(ended - started, 3),
                      "busy": locust_cores > BUSY_SHARE}
    return {"usage": used, "limited_by": limited_by(used), "sender_engine": after["sender_engine"]}


def _headroom_sentence(cpu: dict[str, Any], received: int) -> str:
    """What each component spent over the wave, and whether a generator limited it."""
    usage = cpu["usage"]
    per_message = {name: used["process_cores"] * used["seconds"] * 1000 / max(received, 1)
                   for name, used in usage.items()}
    share = per_message["sender"] / per_message["receiver"] if per_message["receiver"] else 0
    sentence = ("CPU over the wave: " + "; ".join(
        usage_sentence(name, used) for name, used in usage.items()) +
        f". Per message: sender {per_message['sender']:.2f} ms, receiver "
        f"{per_message['receiver']:.2f} ms (sender/receiver {share:.2f}x), Locust "
        f"{per_message['locust']:.2f} ms.")
    generators = [name for name in cpu["limited_by"] if name != "receiver"]
    if generators:
        sentence += (f"\nGENERATOR-LIMITED: {', '.join(generators)} ran out of CPU, so the "
                     "latency above describes the generator as much as the receiver.")
    engine = cpu["sender_engine"]
    if engine["name"] != "native":
        sentence += f"\nThe sender sent with its {engine['name']} engine: {engine['why']}."
    return sentence


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
                    size: int) -> None:
    """The demo aimed at a real MTA: the sender's view of its sessions beside its meter."""
    with httpx.Client(timeout=30, headers=bearer_headers()) as http:
        wave = _run_locust_wave(local, messages, tls_ratio, users, size)
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


def run_demo(messages: int, tls_ratio: float, users: int, size: int,
             target: str | None = None) -> None:
    local = LocalStack(target=target)
    if local.target_name != "receiver":
        print(f"starting the local stack with {local.target_name} at {local.target} ...")
        local.stack.start()
        try:
            print(f"Locust (headless) sends {messages} messages of {size} bytes through the "
                  f"sender to {local.target_name} with {users} users, {tls_ratio:.0%} STARTTLS")
            _demo_at_target(local, messages, tls_ratio, users, size)
        finally:
            local.stack.stop()
        return
    print(f"starting the local stack (receiver {local.receiver_target}, "
          f"collector {local.collector_url()}) ...")
    local.stack.start()
    try:
        print(f"Locust (headless) sends {messages} messages of {size} bytes through the sender "
              f"with {users} users, {tls_ratio:.0%} STARTTLS")
        with httpx.Client(timeout=30, headers=bearer_headers()) as http:
            cpu_before = _cpu_counters(local, http)
            wave = _run_locust_wave(local, messages, tls_ratio, users, size)
            cpu = _cpu_over_wave(cpu_before, _cpu_counters(local, http))
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
    print(_headroom_sentence(cpu, received))
    agrees = (receiver["plain"]["sessions"], receiver["starttls"]["sessions"]) == (
        stats["plain"]["sessions"], stats["tls"]["sessions"])
    print(f"receiver /v1/stats for this wave: {stats['plain']['sessions']} plain, "
          f"{stats['tls']['sessions']} STARTTLS sessions "
          f"({'agrees with' if agrees else 'DIFFERS from'} the collector)")
    results = Path("results")
    results.mkdir(exist_ok=True)
    (results / "demo-latest.json").write_text(json.dumps(
        {"wave": wave, "receiver": stats, "collector": summary, "tls": tls_settings,
         "cpu": cpu}, indent=2))
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
