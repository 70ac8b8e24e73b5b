"""`tlsstorm demo`: start the local stack, send one mixed wave, print what TLS cost the receiver."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from tlsstorm.local import LocalStack


def _per_message(total: float, messages: int) -> float | None:
    return total / messages if messages else None


def cost_rows(stats: dict[str, Any]) -> list[tuple[str, float | None, float | None]]:
    """(label, plain, tls) rows from a receiver /v1/stats body."""
    plain, tls = stats["plain"], stats["tls"]
    rows: list[tuple[str, float | None, float | None]] = [
        ("sessions", plain["sessions"], tls["sessions"]),
        ("messages", plain["messages"], tls["messages"]),
        ("handshake p50 ms", None, tls["handshake_ms"]["p50"]),
        ("handshake p95 ms", None, tls["handshake_ms"]["p95"]),
        ("receiver CPU ms/msg", plain["cpu_ms_per_message"], tls["cpu_ms_per_message"]),
    ]
    for label, key in (("wire bytes in/msg", "wire_bytes_in"),
                       ("wire bytes out/msg", "wire_bytes_out")):
        rows.append((label, _per_message(plain[key], plain["messages"]),
                     _per_message(tls[key], tls["messages"])))
    return rows


def format_cost_table(stats: dict[str, Any]) -> str:
    lines = [f"{'':<22}{'plain':>12}{'TLS':>12}{'TLS/plain':>12}"]
    for label, plain, tls in cost_rows(stats):
        factor = f"{tls / plain:.2f}x" if plain and tls and label not in (
            "sessions", "messages") else ""
        lines.append(f"{label:<22}{_cell(plain):>12}{_cell(tls):>12}{factor:>12}")
    return "\n".join(lines)


def _cell(value: float | None) -> str:
    if value is None:
        return "-"
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.3f}" if value < 100 else f"{value:,.0f}"


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


def run_demo(messages: int, tls_ratio: float, rate: float, concurrency: int, size: int) -> None:
    local = LocalStack()
    print(f"starting the local stack (receiver {local.receiver_target}) ...")
    local.stack.start()
    try:
        with httpx.Client(timeout=30, headers=_headers()) as http:
            spec = {"rate": rate, "count": messages, "tls_ratio": tls_ratio,
                    "concurrency": concurrency, "size": size}
            print(f"sending {messages} messages of {size} bytes at {rate:g}/s, "
                  f"{tls_ratio:.0%} STARTTLS")
            wave = _run_wave(local, http, spec)
            stats = _receiver_stats(local, http, wave)
            tls_settings = http.get(local.receiver_url("/v1/tls")).json()
    finally:
        local.stack.stop()
    failed = wave["plain"]["failed"] + wave["tls"]["failed"]
    print(f"\nwave {wave['id']}: {wave['status']}, {wave['done']} sent, {failed} failed, "
          f"{wave['late']} late, {wave['skipped']} skipped, "
          f"{wave['achieved_rate']} msg/s; receiver certificate {tls_settings['cert_key_type']}")
    print(format_cost_table(stats))
    tls = stats["tls"]
    if tls["sessions"]:
        out_per_session = tls["wire_bytes_out"] / tls["sessions"]
        print(f"\nper STARTTLS session the receiver sent {out_per_session:,.0f} bytes for a "
              f"{size:,}-byte message ({out_per_session / size:.2f}x the message itself)")
    saved = Path("results") / "demo-latest.json"
    saved.parent.mkdir(exist_ok=True)
    saved.write_text(json.dumps({"wave": wave, "receiver": stats, "tls": tls_settings}, indent=2))
    print(f"raw figures: {saved.resolve()}")
    if failed or not (stats["plain"]["messages"] and stats["tls"]["messages"]):
        sys.exit(1)
