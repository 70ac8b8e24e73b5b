"""`tlsstorm demo`: start the local stack, send one mixed wave, print what TLS cost the receiver."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from tlsstorm.collector.report import outbound_sentence, text_table
from tlsstorm.local import LocalStack


def _headers() -> dict[str, str]:
    token = os.environ.get("TLSSTORM_API_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


def _run_wave(local: LocalStack, http: httpx.Client, spec: dict[str, Any]) -> dict[str, Any]:
    response = http.post(local.sender_url("/v1/waves"), json=spec)
    if response.status_code != 202:
        raise SystemExit(f"the sender refused the wave: {response.status_code} {response.text}")
    wave_id = response.json()["id"]
    deadline = time.monotonic() + spec["count"] / spec["rate"] + 120
    live = sys.stdout.isatty()
    shown = -1
    while True:
        wave = http.get(local.sender_url(f"/v1/waves/{wave_id}")).json()
        step = wave["done"] * 4 // max(wave["total"], 1)
        if live or step != shown:
            end = "\r" if live else "\n"
            print(f"  wave {wave_id}: {wave['done']}/{wave['total']} sent", end=end, flush=True)
            shown = step
        if wave["status"] != "running":
            if live:
                print()
            return wave
        if time.monotonic() > deadline:
            http.delete(local.sender_url(f"/v1/waves/{wave_id}"))
            raise SystemExit(f"wave {wave_id} did not finish in time")
        time.sleep(0.25)


def _receiver_stats(local: LocalStack, http: httpx.Client, wave: dict[str, Any]) -> dict:
    """The receiver's view of the wave, once every session the sender finished has ended there."""
    deadline = time.monotonic() + 10
    while True:
        response = http.get(local.receiver_url("/v1/stats"), params={"wave": wave["id"]})
        if response.status_code == 200:
            stats = response.json()
            if stats["plain"]["messages"] + stats["tls"]["messages"] >= (
                wave["plain"]["ok"] + wave["tls"]["ok"]
            ) or time.monotonic() > deadline:
                return stats
        elif time.monotonic() > deadline:
            raise SystemExit(f"the receiver saw no session of wave {wave['id']}")
        time.sleep(0.2)


def _collector_summary(local: LocalStack, http: httpx.Client, wave_id: str,
                       sessions: int, messages: int) -> dict:
    """The collector's summary of the wave once the spans of every session have arrived."""
    deadline = time.monotonic() + 30
    while True:
        summary = http.get(local.collector_url("/v1/summary"), params={"wave": wave_id}).json()
        receiver, sender = summary["receiver"], summary["sender"]
        seen_sessions = receiver["plain"]["sessions"] + receiver["starttls"]["sessions"]
        seen_messages = sender["plain"]["messages"] + sender["starttls"]["messages"]
        if (seen_sessions >= sessions and seen_messages >= messages) or \
                time.monotonic() > deadline:
            return summary
        time.sleep(0.25)


def run_demo(messages: int, tls_ratio: float, rate: float, concurrency: int, size: int) -> None:
    local = LocalStack()
    print(f"starting the local stack (receiver {local.receiver_target}, "
          f"collector {local.collector_url()}) ...")
    local.stack.start()
    try:
        with httpx.Client(timeout=30, headers=_headers()) as http:
            spec = {"rate": rate, "count": messages, "tls_ratio": tls_ratio,
                    "concurrency": concurrency, "size": size}
            print(f"sending {messages} messages of {size} bytes at {rate:g}/s, "
                  f"{tls_ratio:.0%} STARTTLS")
            wave = _run_wave(local, http, spec)
            stats = _receiver_stats(local, http, wave)
            sessions = stats["plain"]["sessions"] + stats["tls"]["sessions"]
            summary = _collector_summary(local, http, wave["id"], sessions, wave["done"])
            report_html = http.get(local.collector_url("/"), params={"wave": wave["id"]}).text
            tls_settings = http.get(local.receiver_url("/v1/tls")).json()
    finally:
        local.stack.stop()
    failed = wave["plain"]["failed"] + wave["tls"]["failed"]
    print(f"\nwave {wave['id']}: {wave['status']}, {wave['done']} sent, {failed} failed, "
          f"{wave['late']} late, {wave['skipped']} skipped, "
          f"{wave['achieved_rate']} msg/s; receiver certificate {tls_settings['cert_key_type']}")
    receiver = summary["receiver"]
    print("\nthe collector's cost table (receiver side, from its spans):")
    print(text_table(receiver))
    sentence = outbound_sentence(receiver)
    if sentence:
        print(f"\n{sentence}")
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
    if failed or not agrees or not (stats["plain"]["messages"] and stats["tls"]["messages"]):
        sys.exit(1)
