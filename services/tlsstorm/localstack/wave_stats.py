"""A wave's figures as the receiver saw them, read from its API once the wave has arrived."""

from __future__ import annotations

import time
from typing import Any

import httpx


def receiver_wave_stats(http: httpx.Client, receiver_url: str, wave_id: str, messages: int,
                        timeout_s: float) -> dict[str, Any] | None:
    """The receiver's stats of a wave once `messages` of it have arrived (at the deadline, as
    they are); None when no session of the wave ever ended there."""
    deadline = time.monotonic() + timeout_s
    while True:
        response = http.get(f"{receiver_url}/v1/stats", params={"wave": wave_id})
        if response.status_code == 200:
            stats = response.json()
            if stats["plain"]["messages"] + stats["tls"]["messages"] >= messages or \
                    time.monotonic() > deadline:
                return stats
        elif time.monotonic() > deadline:
            return None
        time.sleep(0.2)
