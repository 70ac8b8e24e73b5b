"""ClientHello fingerprints (JA4) counted as the receiver's gate and the collector both keep
them: per fingerprint [sessions, CPU us, sessions refused], merged by addition, ranked."""

from __future__ import annotations

from typing import Any

FingerprintCounts = dict[str, list[int]]  # ja4 -> [sessions, cpu_us, denied]
SESSIONS, CPU_US, DENIED = 0, 1, 2


def count(counts: FingerprintCounts, ja4: str, cpu_us: int, denied: bool) -> None:
    entry = counts.setdefault(ja4, [0, 0, 0])
    entry[SESSIONS] += 1
    entry[CPU_US] += cpu_us
    entry[DENIED] += denied


def merge(counts: FingerprintCounts, other: FingerprintCounts) -> None:
    for ja4, values in other.items():
        entry = counts.setdefault(ja4, [0, 0, 0])
        for index, value in enumerate(values):
            entry[index] += value


def top(counts: FingerprintCounts, by: int = SESSIONS, limit: int = 10) -> list[dict[str, Any]]:
    """The fingerprints first by sessions (SESSIONS) or by CPU (CPU_US), each with its
    sessions, CPU and refusals."""
    ranked = sorted(counts.items(), key=lambda item: (-item[1][by], item[0]))[:limit]
    return [{"ja4": ja4, "sessions": sessions, "cpu_ms": round(cpu_us / 1000, 3),
             "denied": denied} for ja4, (sessions, cpu_us, denied) in ranked]
