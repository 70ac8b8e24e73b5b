"""A wave posted to one sender replica is split over every replica (issue 12): each sends every
Nth connection under the same wave id, the TLS ratio stays exact over the whole wave, and the
replica that took it answers (and stops) for all of it."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.helpers import wait_for
from tests.locust_helpers import free_port
from tests.receiver_process import ServiceProcess

TOKEN = "spread-test-token"


def _sender(receiver, port: int, peers: str, **env: str) -> ServiceProcess:
    return ServiceProcess("sender", {
        "OTEL_SDK_DISABLED": "true", "TLSSTORM_API_TOKEN": TOKEN,
        "TLSSTORM_SENDER_TARGET": f"127.0.0.1:{receiver.smtp_port}",
        "TLSSTORM_SENDER_PEERS": peers, "TLSSTORM_SENDER_HTTP_PORT": str(port), **env})


@pytest.fixture
def replicas(receiver) -> Iterator[list[ServiceProcess]]:
    """Two sender processes that name each other (and a peer that never answers) as peers;
    each stopped answers 2 s more (its drain) for its part's last figures."""
    ports = [free_port(), free_port()]
    peers = ",".join([*(f"127.0.0.1:{port}" for port in ports), f"127.0.0.1:{free_port()}"])
    started = []
    try:
        for port in ports:
            started.append(_sender(receiver, port, peers, TLSSTORM_SENDER_DRAIN_DELAY_S="2"))
        yield started
    finally:
        for sender in started:
            if sender.process.poll() is None:
                sender.stop()


def _http() -> httpx.Client:
    return httpx.Client(timeout=30, headers={"Authorization": f"Bearer {TOKEN}"})


def _until_over(http: httpx.Client, url: str, deadline_s: float = 60) -> dict:
    deadline = time.monotonic() + deadline_s
    while (wave := http.get(url).json())["status"] == "running":
        assert time.monotonic() < deadline, wave
        time.sleep(0.2)
    return wave


def _sent(sender: ServiceProcess) -> int:
    return sum(sender.stats()["messages"].values())


def test_a_wave_is_shared_by_the_replicas_and_answered_for_as_one(receiver, replicas):
    first, second = replicas
    with _http() as http:
        started = http.post(f"{first.http}/v1/waves", json={
            "rate": 100, "count": 201, "tls_ratio": 0.3, "concurrency": 16}).json()
        wave = _until_over(http, f"{first.http}{started['url']}")

    assert started["replicas"] == 2
    assert wave["status"] == "completed", wave
    assert (wave["total"], wave["done"], wave["skipped"]) == (201, 201, 0)
    # Exact over the whole wave, not per share: floor(201 x 0.3) STARTTLS.
    assert (wave["tls"]["ok"], wave["plain"]["ok"]) == (math.floor(201 * 0.3), 141)
    assert wave["tls"]["handshake_ms"]["count"] == 60
    assert [(part["offset"], part["done"]) for part in wave["parts"]] == [(0, 101), (1, 100)]
    assert (_sent(first), _sent(second)) == (101, 100)
    # Behind a Service a poll lands on any replica: the one holding the other part answers
    # for the whole wave too.
    with _http() as http:
        seen_from_second = http.get(f"{second.http}{started['url']}").json()
    assert {key: seen_from_second[key] for key in ("done", "total", "plain", "tls")} == \
        {key: wave[key] for key in ("done", "total", "plain", "tls")}
    receiver.wait_sessions(201)
    by_wave = receiver.stats(wave=started["id"])
    assert (by_wave["plain"]["sessions"], by_wave["tls"]["sessions"]) == (141, 60)


def test_stopping_the_wave_stops_every_replicas_share(replicas):
    first, second = replicas
    with _http() as http:
        started = http.post(f"{first.http}/v1/waves", json={
            "rate": 20, "count": 2000, "tls_ratio": 0.5}).json()
        time.sleep(1)
        stopped = http.delete(f"{first.http}{started['url']}").json()
        part = http.get(f"{second.http}{started['url']}", params={"part": "true"}).json()

    assert stopped["status"] == "stopped"
    assert part["status"] == "stopped"
    assert [entry["status"] for entry in stopped["parts"]] == ["stopped", "stopped"]
    assert 0 < stopped["done"] < 2000
    # Sending stopped on both replicas, not only their status: nothing more leaves either.
    sent = (_sent(first), _sent(second))
    time.sleep(2)  # at 20/s a replica still sending would add about 20
    assert (_sent(first), _sent(second)) == sent
    assert min(sent) > 0


def test_a_share_needs_the_token_and_a_wave_id_cannot_be_sent_twice(replicas):
    first, _ = replicas
    share = {"rate": 10, "count": 4, "share": {"id": "0123456789ab", "offset": 1, "stride": 2}}
    assert httpx.post(f"{first.http}/v1/waves", json=share).status_code == 401
    with _http() as http:
        assert http.post(f"{first.http}/v1/waves", json=share).status_code == 202
        again = http.post(f"{first.http}/v1/waves", json=share)
        bad = http.post(f"{first.http}/v1/waves", json={
            **share, "share": {"id": "0123456789ab", "offset": 2, "stride": 2}})
    assert again.status_code == 409 and "already here" in again.text
    assert bad.status_code == 422


@pytest.mark.parametrize("stopped", ["share holder", "wave taker"])
def test_a_replica_stopped_mid_wave_hands_in_its_last_figures(receiver, replicas, stopped):
    """SIGTERM mid-wave to a replica (a pod deleted): the one holding a share, or the one the
    wave was posted to (it sends share 0). It turns not ready and refuses new load, stops its
    share, lets its messages in flight end and hands its part's final figures to the other,
    which was not asked about the wave before the stopped one had exited. The whole wave
    counts every message either replica sent, as the receiver does; a replica started after
    the wave (the deleted pod's replacement) answers for it by asking the others."""
    taker, holder = replicas
    leaving, staying = (holder, taker) if stopped == "share holder" else (taker, holder)
    with _http() as http:
        started = http.post(f"{taker.http}/v1/waves", json={
            "rate": 100, "count": 600, "tls_ratio": 0.5}).json()
        time.sleep(2)
        leaving.process.terminate()
        # The signal lands between two requests, not before the next one.
        wait_for(lambda: http.get(f"{leaving.http}/readyz").status_code == 503, timeout=5)
        refused = http.post(f"{leaving.http}/v1/send", json={"count": 1})
        assert refused.status_code == 503 and "shutting down" in refused.text
        assert leaving.process.wait(15) == 0
        wave = _until_over(http, f"{staying.http}{started['url']}")

    parts = {entry["offset"]: entry for entry in wave["parts"]}
    left, stayed = (1, 0) if stopped == "share holder" else (0, 1)
    assert (parts[stayed]["status"], parts[stayed]["done"]) == ("completed", 300), wave
    assert parts[left]["status"] == "stopped" and 0 < parts[left]["done"] < 300, wave
    assert parts[left]["replica"].endswith("(handed over)"), wave
    assert wave["status"] == "stopped" and wave["done"] == 300 + parts[left]["done"], wave
    accepted = wave["plain"]["ok"] + wave["tls"]["ok"]
    assert accepted == wave["done"], wave
    receiver.wait_sessions(accepted)
    by_wave = receiver.stats(wave=started["id"])
    assert by_wave["plain"]["messages"] + by_wave["tls"]["messages"] == accepted

    replacement = _sender(receiver, free_port(), f"127.0.0.1:{staying.http.rsplit(':', 1)[1]}")
    try:
        with _http() as http:
            seen = http.get(f"{replacement.http}{started['url']}").json()
    finally:
        replacement.stop()
    assert {key: seen[key] for key in ("done", "plain", "tls", "status")} == \
        {key: wave[key] for key in ("done", "plain", "tls", "status")}


def test_a_handed_part_that_does_not_fit_the_wave_is_refused(replicas):
    """The hand-over takes a part only for a wave this replica holds, at an offset it does not
    send, describing that share; a bad body is one clear refusal and the wave still answers."""
    taker, _ = replicas
    with _http() as http:
        started = http.post(f"{taker.http}/v1/waves", json={"rate": 50, "count": 20}).json()
        wave = _until_over(http, f"{taker.http}{started['url']}")
        part = http.get(f"{taker.http}{started['url']}", params={"part": "true"}).json()
        url = f"{taker.http}{started['url']}/parts"
        # Its own share, a share the wave has not, a body for another wave, garbage.
        own = http.put(f"{url}/0", json={"replica": "x", "stride": 2, "part": part})
        beyond = http.put(f"{url}/2", json={"replica": "x", "stride": 2, "part": {
            **part, "spec": {**part["spec"], "share": {"id": wave["id"], "offset": 2,
                                                       "stride": 3}}}})
        garbage = http.put(f"{url}/1", json={"replica": "x", "stride": 2,
                                              "part": {"done": -1}})
        unauthenticated = httpx.put(f"{url}/1", json={"replica": "x", "stride": 2,
                                                      "part": part})
        after = http.get(f"{taker.http}{started['url']}").json()
    assert own.status_code == 409 and "sends part 0 of wave" in own.text
    assert beyond.status_code == 422 and "is not what this body describes" in beyond.text
    assert garbage.status_code == 422
    assert unauthenticated.status_code == 401
    assert {key: after[key] for key in ("done", "status")} == \
        {key: wave[key] for key in ("done", "status")}


def test_a_wave_outlives_every_replica_replaced_in_turn(receiver):
    """A rollout mid-wave: two new replicas start, then the replica the wave was posted to
    stops, then the one holding the other share. Each stopping hands every part it knows to
    the others, so the new replicas, which send no part of the wave, answer for all of it:
    every message the stopped replicas sent, as the receiver counts them."""
    ports = [free_port() for _ in range(4)]
    peers = ",".join(f"127.0.0.1:{port}" for port in ports)
    started: list[ServiceProcess] = []
    try:
        for port in ports[:2]:
            started.append(_sender(receiver, port, peers, TLSSTORM_SENDER_DRAIN_DELAY_S="1"))
        taker, holder = started
        with _http() as http:
            wave_url = http.post(f"{taker.http}/v1/waves", json={
                "rate": 100, "count": 900, "tls_ratio": 0.5}).json()["url"]
            for port in ports[2:]:
                started.append(_sender(receiver, port, peers))
            successors = started[2:]
            for leaving in (taker, holder):
                time.sleep(1.5)
                leaving.process.terminate()
                assert leaving.process.wait(15) == 0
            seen = [http.get(f"{successor.http}{wave_url}").json() for successor in successors]
    finally:
        for sender in started:
            if sender.process.poll() is None:
                sender.stop()

    wave = seen[0]
    assert {key: seen[1][key] for key in ("done", "plain", "tls")} == \
        {key: wave[key] for key in ("done", "plain", "tls")}
    assert [(part["offset"], part["status"]) for part in wave["parts"]] == \
        [(0, "stopped"), (1, "stopped")], wave
    assert all(part["replica"].endswith("(handed over)") for part in wave["parts"]), wave
    assert wave["status"] == "stopped" and 0 < wave["done"] < 900, wave
    accepted = wave["plain"]["ok"] + wave["tls"]["ok"]
    assert accepted == wave["done"], wave
    receiver.wait_sessions(accepted)
    by_wave = receiver.stats(wave=wave["id"])
    assert by_wave["plain"]["messages"] + by_wave["tls"]["messages"] == accepted


def test_a_replica_killed_mid_wave_is_listed_gone_with_its_last_figures(replicas):
    """SIGKILL to the share holder (no drain, no hand-over): the replica answering for the wave
    counts the share's figures as it last read them and says the share is gone, so the wave
    does not look complete."""
    taker, holder = replicas
    with _http() as http:
        started = http.post(f"{taker.http}/v1/waves", json={
            "rate": 100, "count": 600, "tls_ratio": 0.5}).json()
        time.sleep(2)
        seen = http.get(f"{taker.http}{started['url']}").json()
        holder.process.kill()
        holder.process.wait(10)
        wave = _until_over(http, f"{taker.http}{started['url']}")

    parts = {entry["offset"]: entry for entry in wave["parts"]}
    assert (parts[0]["status"], parts[0]["done"]) == ("completed", 300), wave
    assert parts[1]["status"] == "gone", wave
    assert {entry["offset"]: entry["done"] for entry in seen["parts"]}[1] <= parts[1]["done"]
    assert wave["status"] == "gone" and wave["done"] == 300 + parts[1]["done"] < 600, wave
