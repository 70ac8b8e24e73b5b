"""`tlsstorm check`: one plain and one STARTTLS mail through the sender, seen by the collector.

The same check runs as the chart's `helm test` and in the container smoke test.
"""

from __future__ import annotations

import time
import uuid

import httpx

from tlsstorm.common.auth import bearer_headers


def _seen(summary: dict) -> bool:
    receiver, sender = summary["receiver"], summary["sender"]
    return (receiver["plain"]["sessions"] >= 1 and receiver["starttls"]["sessions"] >= 1
            and receiver["starttls"]["handshakes_ok"] >= 1
            and sender["starttls"]["handshakes_ok"] >= 1)


def _post_when_reachable(http: httpx.Client, url: str, body: dict,
                         deadline: float) -> httpx.Response:
    """POST, retrying while the connection itself fails (the request was never sent).

    A fresh pod can be refused for a few seconds after it starts, by a NetworkPolicy enforcer
    that has not yet added its address or by a Service whose endpoints are still rolling; a
    `helm test` right after `helm upgrade --wait` meets exactly that.
    """
    waited = False
    while True:
        try:
            return http.post(url, json=body)
        except httpx.ConnectError as error:
            if time.monotonic() > deadline:
                raise
            if not waited:
                print(f"waiting for {url} to accept connections ({error})")
                waited = True
            time.sleep(0.5)


def run_check(sender_url: str, collector_url: str, timeout_s: float) -> int:
    wave = f"check-{uuid.uuid4().hex[:8]}"
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=30, headers=bearer_headers()) as http:
        for tls in (False, True):
            try:
                response = _post_when_reachable(
                    http, f"{sender_url}/v1/send", {"tls": tls, "wave": wave}, deadline)
            except httpx.ConnectError as error:
                print(f"FAIL: after {timeout_s:.0f} s the sender at {sender_url} still refuses "
                      f"connections: {error}")
                return 1
            response.raise_for_status()
            result = response.json()["results"][0]
            mode = "STARTTLS" if tls else "plain"
            if not result["ok"]:
                print(f"FAIL: the {mode} message was refused: {result['error']}")
                return 1
            print(f"sent one {mode} message: {result['code']} in {result['total_ms']:.1f} ms")
        while True:
            try:
                response = http.get(f"{collector_url}/v1/summary", params={"wave": wave})
                summary = response.json() if response.status_code == 200 else None
                failure = response.text
            except httpx.ConnectError as error:
                summary, failure = None, f"the collector refuses connections: {error}"
            if summary and _seen(summary):
                print(f"OK: the collector holds both sessions of wave {wave}, with the "
                      "handshake spans of sender and receiver")
                return 0
            if time.monotonic() > deadline:
                print(f"FAIL: after {timeout_s:.0f} s the collector's summary of wave {wave} "
                      "lacks a session or a handshake span: "
                      f"{summary['receiver'] if summary else failure}")
                return 1
            time.sleep(0.5)
