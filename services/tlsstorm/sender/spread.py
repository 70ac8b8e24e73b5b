"""A wave split over the sender's replicas (issue 12): the replica that takes it finds its peers
(TLSSTORM_SENDER_PEERS; in the chart, a headless Service that names every ready replica), asks
each to send every Nth connection under the same wave id, and sends its own share. Any replica
holding a part answers for the whole wave (behind a Service, a poll lands on any of them):
counters summed, latency histograms merged, each part listed."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
import time
from typing import Any

import httpx

from tlsstorm.common.address import split_host_port
from tlsstorm.common.histogram import LatencyHistogram
from tlsstorm.sender.waves import OtherParts, Wave


async def other_replicas(http: httpx.AsyncClient, peers: list[str], default_port: int,
                         own_instance: str) -> list[str]:
    """The base URLs of the replicas that answer, without this one (known by its instance)."""
    loop = asyncio.get_running_loop()
    urls: set[str] = set()
    for entry in peers:
        host, port = split_host_port(entry, default_port)
        with contextlib.suppress(OSError):
            for family, _, _, _, address in await loop.getaddrinfo(
                    host, port, type=socket.SOCK_STREAM):
                host_part = f"[{address[0]}]" if family == socket.AF_INET6 else address[0]
                urls.add(f"http://{host_part}:{port}")

    async def instance(url: str) -> str | None:
        try:
            return (await http.get(f"{url}/v1/stats")).json()["instance"]
        except (httpx.HTTPError, ValueError, KeyError):
            return None

    ordered = sorted(urls)
    names = await asyncio.gather(*(instance(url) for url in ordered))
    return [url for url, name in zip(ordered, names, strict=True)
            if name not in (None, own_instance)]


async def start_shares(http: httpx.AsyncClient, wave: Wave, remotes: list[str]) -> list[str]:
    """Share k (connections k, k + N, ...) to the k-th peer; what each refusal said."""
    spec = wave.spec.model_dump(exclude={"share"})

    async def start(offset: int, url: str) -> str | None:
        body = {**spec, "share": {"id": wave.id, "offset": offset, "stride": wave.stride}}
        try:
            response = await http.post(f"{url}/v1/waves", json=body)
        except httpx.HTTPError as failure:
            return f"{url}: {type(failure).__name__}: {failure}"
        return None if response.status_code == 202 else \
            f"{url}: {response.status_code} {response.text[:300]}"

    refusals = await asyncio.gather(*(start(offset, url)
                                      for offset, url in enumerate(remotes, start=1)))
    return [refusal for refusal in refusals if refusal]


async def stop_parts(http: httpx.AsyncClient, wave_id: str, remotes: list[str]) -> None:
    async def stop(url: str) -> None:
        # A replica out of reach ends its part on its own.
        with contextlib.suppress(httpx.HTTPError):
            await http.delete(f"{url}/v1/waves/{wave_id}", params={"part": "true"})

    await asyncio.gather(*(stop(url) for url in remotes))


async def wave_held_elsewhere(http: httpx.AsyncClient, wave_id: str, remotes: list[str]
                              ) -> dict[str, Any] | None:
    """The whole wave from the first other replica that holds a part of it."""
    for url in remotes:
        with contextlib.suppress(httpx.HTTPError, ValueError):
            response = await http.get(f"{url}/v1/waves/{wave_id}", params={"forwarded": "true"})
            if response.status_code == 200:
                return response.json()
    return None


async def whole_wave(http: httpx.AsyncClient | None, others: OtherParts, remotes: list[str],
                     own: dict[str, Any] | None = None) -> dict[str, Any]:
    """This replica's part (`own`, with histograms; none for a wave only handed to it) and
    every other part of the wave, combined: each as read from `remotes` now, else as last read
    or handed over (a replica that stopped: a pod deleted); messages of a part that no replica
    holds (it never started) count as skipped."""

    async def part(url: str) -> dict[str, Any] | None:
        try:
            response = await http.get(f"{url}/v1/waves/{others.wave_id}",
                                      params={"part": "true"})
            return response.json() if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None

    found = await asyncio.gather(*(part(url) for url in remotes))
    read_now = set()
    for url, found_part in zip(remotes, found, strict=True):
        if found_part is not None:
            read_now.add(part_offset(found_part))
            others.keep(part_offset(found_part), url, found_part)
    parts = [] if own is None else [("this replica", own)]
    own_offset = None if own is None else part_offset(own)
    for offset, (replica, last) in sorted(others.by_offset.items()):
        if offset == own_offset:
            continue
        if offset not in read_now and last["status"] == "running":
            # Gone mid-part without handing in: its last figures count, what it did after
            # is not known.
            last = {**last, "status": "gone"}
        parts.append((replica, last))
    return _combined(others.total_messages, [found_part for _, found_part in parts], [
        {"replica": replica, "offset": part_offset(found_part),
         "status": found_part["status"], "total": found_part["total"],
         # A replica of an older release (mid-upgrade) does not say.
         "done": found_part["done"], "limited_by": found_part.get("limited_by", []),
         "limit": found_part.get("limit"), "engine": found_part.get("engine")}
        for replica, found_part in parts])


def part_offset(part: dict[str, Any]) -> int:
    """Which share a part is: the replica that took the wave sends offset 0 (no share)."""
    return (part["spec"]["share"] or {}).get("offset", 0)


HANDED = " (handed over)"  # how a part handed over is listed, after the replica that sent it


def parts_to_hand_over(wave: Wave | None, others: OtherParts, instance: str
                       ) -> list[tuple[str, dict[str, Any]]]:
    """A stopping replica's own part of a wave (if it sends one) and every other part it
    knows: (the replica that sent it, the part). Passing the others on keeps the whole wave
    known when every replica is replaced in turn (a rollout)."""
    known = [(replica.removesuffix(HANDED), part) for replica, part in others.by_offset.values()
             if wave is None or part_offset(part) != wave.offset]
    return ([(instance, wave.as_dict(histograms=True))] if wave is not None else []) + known


async def hand_over(http: httpx.AsyncClient, others: OtherParts,
                    parts: list[tuple[str, dict[str, Any]]], remotes: list[str]) -> list[str]:
    """A replica stopping hands a wave's parts (parts_to_hand_over) to the other replicas, so
    whichever answers for the wave afterwards counts them (else a deleted pod's part, the
    whole wave's first share included, would be known only as last polled, if at all); a
    replica that sends no part of the wave keeps them and answers for it; one that sends a
    part itself (409) keeps its own figures of it. What each failure said."""

    async def give(url: str, replica: str, part: dict[str, Any]) -> str | None:
        try:
            response = await http.put(
                f"{url}/v1/waves/{others.wave_id}/parts/{part_offset(part)}",
                json={"replica": replica, "stride": others.stride, "part": part})
        except httpx.HTTPError as failure:
            return f"{url}: {type(failure).__name__}: {failure}"
        return None if response.status_code in (200, 409) else \
            f"{url}: {response.status_code} {response.text[:300]}"

    failures = await asyncio.gather(*(give(url, replica, part) for url in remotes
                                      for replica, part in parts))
    return [failure for failure in failures if failure]


def _combined(total_messages: int, parts: list[dict], listed: list[dict]) -> dict[str, Any]:
    summed = {key: sum(part[key] for part in parts)
              for key in ("total", "scheduled", "done", "late", "skipped", "in_flight")}
    summed["skipped"] += total_messages - summed.pop("total")
    statuses = {part["status"] for part in parts}
    # "gone": a replica went away mid-part; its last figures are counted, what it did after
    # is not known.
    status = next((s for s in ("running", "failed", "gone", "stopped") if s in statuses),
                  "completed")
    started = min(part["started_unix_s"] for part in parts)
    ends = [part["ended_unix_s"] for part in parts]
    ended = None if None in ends else max(ends)
    elapsed = (ended or time.time()) - started
    errors: collections.Counter[str] = collections.Counter()
    profiles: collections.Counter[str] = collections.Counter()
    for part in parts:
        errors.update(part["errors"])
        profiles.update(part["starttls_by_profile"])
    spec = {**parts[0]["spec"], "share": None}
    return {
        **parts[0], **summed, "spec": spec, "status": status, "total": total_messages,
        "started_unix_s": started, "ended_unix_s": ended, "elapsed_s": round(elapsed, 3),
        "achieved_rate": round(summed["done"] / elapsed, 2) if elapsed > 0 else None,
        "plain": _mode([part["plain"] for part in parts]),
        "tls": _mode([part["tls"] for part in parts]),
        "errors": dict(errors), "starttls_by_profile": dict(profiles),
        # The whole wave was limited by its senders if any replica was busy (each part says).
        "limited_by": ["sender"] if any(part.get("limited_by") for part in parts) else [],
        "limit": "; ".join(part["limit"] for part in parts if part.get("limit")) or None,
        "sender_cpu": None,  # per replica, in parts
        "sender_telemetry_seconds": round(sum(part.get("sender_telemetry_seconds", 0.0)
                                              for part in parts), 6),
        "engine": ", ".join(sorted({part.get("engine") or "unknown" for part in parts})),
        "parts": sorted(listed, key=lambda entry: entry["offset"]),
    }


def _mode(parts: list[dict[str, Any]]) -> dict[str, Any]:
    mode = {key: sum(part[key] for part in parts)
            for key in ("ok", "failed", "bytes_sent", "bytes_received")}
    for name in ("handshake_ms", "total_ms"):
        merged = LatencyHistogram()
        for part in parts:
            merged.merge(LatencyHistogram.from_state(part["histograms"][name]))
        mode[name] = merged.summary()
    return mode
