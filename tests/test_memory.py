"""Memory: the receiver survives any offered load within its cgroup's limit, sheds what it cannot
take the way an MTA does (421 at connect, 454 to STARTTLS), counts it, and measures memory per
concurrent session the way /proc sees it.

Clients are asyncio streams in this process (not our sender), the receiver a process of its
own in a memory cgroup of 256 MiB, as the chart's default pod limit holds it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ssl
import time

import httpx
import pytest

from tests import cgroups
from tests.receiver_process import ReceiverProcess, process_rss_bytes
from tlsstorm.common.process import raise_open_files_limit

LIMIT = 256 * 1024 * 1024
raise_open_files_limit()  # a thousand client sockets here (the receiver lifts its own)
BODY = b"Subject: spam\r\n\r\n" + (b"x" * 76 + b"\r\n") * 26 + b".\r\n"
REPLY_TIMEOUT_S = 60


def _client_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def _reply(reader: asyncio.StreamReader) -> bytes:
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionResetError("closed without a reply")
        if line[3:4] != b"-":
            return line


async def _open(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                context: ssl.SSLContext | None) -> str | None:
    """Greeting and EHLO, then with a context STARTTLS and EHLO again; the code of the reply
    that refused the session, or None once it is open."""
    greeting = await _reply(reader)
    if not greeting.startswith(b"220"):
        return greeting[:3].decode()
    writer.write(b"EHLO bot.test\r\n")
    await _reply(reader)
    if context is not None:
        writer.write(b"STARTTLS\r\n")
        reply = await _reply(reader)
        if not reply.startswith(b"220"):
            return reply[:3].decode()
        await writer.start_tls(context)
        writer.write(b"EHLO bot.test\r\n")
        await _reply(reader)
    return None


async def _starttls_session(port: int, context: ssl.SSLContext) -> str:
    """One message over STARTTLS on a new connection; the reply that decided it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        refused = await _open(reader, writer, context)
        if refused is not None:
            return refused
        for command in (b"MAIL FROM:<bot@spam.test>", b"RCPT TO:<victim@receiver.tlsstorm.test>",
                        b"DATA"):
            writer.write(command + b"\r\n")
            await _reply(reader)
        writer.write(BODY)
        accepted = await _reply(reader)
        writer.write(b"QUIT\r\n")
        await _reply(reader)
        return accepted[:3].decode()
    finally:
        writer.close()


async def _probe_health(receiver: ReceiverProcess, stop: asyncio.Event,
                        answers: collections.Counter) -> None:
    async with httpx.AsyncClient() as http:
        while not stop.is_set():
            try:
                answers[(await http.get(f"{receiver.http}/healthz", timeout=5)).status_code] += 1
            except httpx.HTTPError as error:
                answers[type(error).__name__] += 1
            await asyncio.sleep(0.5)


async def _swarm(receiver: ReceiverProcess, clients: int, seconds: float, peak: list[int]):
    """`clients` concurrent bots, each sending STARTTLS messages on new connections until
    `seconds` pass (bounded: a bot starts no session after that)."""
    context = _client_context()
    outcomes: collections.Counter[str] = collections.Counter()
    health: collections.Counter = collections.Counter()
    deadline = time.monotonic() + seconds

    async def bot() -> None:
        while time.monotonic() < deadline:
            try:
                outcomes[await asyncio.wait_for(
                    _starttls_session(receiver.smtp_port, context), REPLY_TIMEOUT_S)] += 1
            except (OSError, TimeoutError, ssl.SSLError) as error:
                outcomes[type(error).__name__] += 1

    stop = asyncio.Event()
    prober = asyncio.create_task(_probe_health(receiver, stop, health))
    bots = [asyncio.create_task(bot()) for _ in range(clients)]
    while not all(task.done() for task in bots):
        with contextlib.suppress(OSError):
            peak[0] = max(peak[0], process_rss_bytes(receiver.pid))
        await asyncio.sleep(0.1)
    stop.set()
    await prober
    return outcomes, health


@pytest.fixture
def receiver_in_256_mib(start_collector):
    """The receiver in its cgroup, reporting to a collector of its own."""
    collector = start_collector()
    with cgroups.memory_group(LIMIT) as group:
        receiver = ReceiverProcess({"OTEL_EXPORTER_OTLP_ENDPOINT": collector.http,
                                    "OTEL_BSP_SCHEDULE_DELAY": "500"},
                                   group.path / "cgroup.procs")
        receiver.collector = collector
        try:
            yield receiver, group
        finally:
            receiver.stop()


def test_512_starttls_bots_for_30_s_never_kill_it_and_every_refusal_is_a_counted_reply(
    receiver_in_256_mib
):
    receiver, group = receiver_in_256_mib
    budget = receiver.stats()["memory"]["budget"]
    assert budget["limit_bytes"] == LIMIT  # read from its own cgroup

    peak = [0]
    outcomes, health = asyncio.run(_swarm(receiver, clients=512, seconds=30, peak=peak))

    assert receiver.process.poll() is None and group.oom_kills() == 0
    assert set(health) == {200}, health
    # Every session got an SMTP reply: delivered, or refused at connect or at STARTTLS.
    assert set(outcomes) <= {"250", "421", "454"}, outcomes
    assert outcomes["250"] > 1000
    assert peak[0] < LIMIT
    time.sleep(1)
    stats = receiver.stats()
    errors = collections.Counter(stats["plain"]["errors"]) + collections.Counter(
        stats["tls"]["errors"])
    assert errors["memory_full"] == outcomes["421"]
    assert errors["tls_memory_full"] + errors["handshake_busy"] == outcomes["454"]
    assert stats["tls"]["messages"] == outcomes["250"]
    assert stats["memory"]["peak_rss_bytes"] <= budget["limit_bytes"]


async def _hold(port: int, tls: bool, count: int, opened: list, release: asyncio.Event):
    """Open `count` sessions (STARTTLS done if `tls`), keep them idle until `release`."""
    context = _client_context()

    async def one() -> str:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            refused = await _open(reader, writer, context if tls else None)
            if refused is not None:
                return refused
            opened.append(1)
            await release.wait()
            writer.write(b"QUIT\r\n")
            await _reply(reader)
            return "held"
        finally:
            writer.close()

    tasks = []
    for index in range(count):
        tasks.append(asyncio.create_task(one()))
        if index % 50 == 49:
            await asyncio.sleep(0.05)  # a ramp, not one burst
    return tasks


async def _plateaus(receiver: ReceiverProcess, tls: bool, steps: list[int]):
    """RSS from /proc at each plateau of held sessions; the receiver's own figure at the end."""
    release = asyncio.Event()
    opened: list[int] = []
    tasks: list[asyncio.Task] = []
    seen: list[tuple[int, int]] = []
    httpx.post(f"{receiver.http}/v1/stats/reset").raise_for_status()
    for target in steps:
        tasks += await _hold(receiver.smtp_port, tls, target - len(tasks), opened, release)
        deadline = time.monotonic() + 60
        while len(opened) < target and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        await asyncio.sleep(3.0)  # samples: four a second here, one a second to the collector
        seen.append((len(opened), process_rss_bytes(receiver.pid)))
    figure = receiver.stats()["memory"]
    await asyncio.sleep(2.0)  # the last second's sample reaches the collector
    release.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    return seen, figure, collections.Counter(map(str, results))


@pytest.mark.parametrize(("tls", "steps"), [(True, [0, 100, 200]),
                                            (False, [0, 500, 1000])], ids=["tls", "plain"])
def test_memory_per_concurrent_session_agrees_with_proc(receiver_in_256_mib, tls, steps):
    """Held sessions in plateaus; /proc's RSS slope against the receiver's fitted figure. The
    1,000 idle plain connections are also the "idle flood" case: all served, none killed."""
    receiver, group = receiver_in_256_mib

    started = time.time()
    seen, figure, results = asyncio.run(_plateaus(receiver, tls, steps))
    collected = httpx.get(f"{receiver.collector.http}/v1/summary",
                          params={"since": started, "until": time.time()}).json()["memory"]

    assert results == {"held": steps[-1]}, results
    assert receiver.process.poll() is None and group.oom_kills() == 0
    (low_sessions, low_rss), (high_sessions, high_rss) = seen[0], seen[-1]
    from_proc = (high_rss - low_rss) / (high_sessions - low_sessions)
    mode = "tls" if tls else "plain"
    assert figure["bytes_per_session"][mode] == pytest.approx(from_proc, rel=0.25), (seen, figure)
    assert figure["peak_sessions"]["all"] == steps[-1]
    # The collector's figure, from the receiver's one-a-second samples, agrees too.
    collected_mode = "starttls" if tls else "plain"
    assert collected["bytes_per_session"][collected_mode] == pytest.approx(from_proc, rel=0.25), \
        (seen, collected)
    assert collected["peak_sessions"][collected_mode] == steps[-1]


def test_a_budget_too_small_for_the_load_sheds_with_421_and_454_and_counts_each():
    """Shedding made necessary (no root needed): a budget of 128 MiB (half of a 256 MiB
    limit) that holds the receiver's own RSS and a few STARTTLS sessions of 8 MiB each; held
    sessions past it are refused the way an MTA refuses them, and each refusal is counted."""
    receiver = ReceiverProcess({"TLSSTORM_RECEIVER_MEMORY_LIMIT_BYTES": str(LIMIT),
                                "TLSSTORM_RECEIVER_MEMORY_BUDGET_FRACTION": "0.5",
                                "TLSSTORM_RECEIVER_TLS_SESSION_MEMORY_KIB": "8192",
                                "TLSSTORM_RECEIVER_SESSION_MEMORY_KIB": "1024"})
    try:
        async def load() -> collections.Counter:
            release = asyncio.Event()
            opened: list[int] = []
            tasks = await _hold(receiver.smtp_port, True, 40, opened, release)
            tasks += await _hold(receiver.smtp_port, False, 200, opened, release)
            deadline = time.monotonic() + 30
            while sum(task.done() for task in tasks) + len(opened) < len(tasks) and \
                    time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            release.set()
            return collections.Counter(map(str, await asyncio.gather(*tasks,
                                                                     return_exceptions=True)))

        outcomes = asyncio.run(load())
        assert receiver.process.poll() is None
        deadline = time.monotonic() + 15  # a session is counted once it has closed
        while (stats := receiver.stats())["plain"]["sessions"] + stats["tls"]["sessions"] < \
                sum(outcomes.values()) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        receiver.stop()
    print(f"held, refused: {dict(outcomes)}")
    assert set(outcomes) == {"held", "421", "454"}, outcomes
    errors = collections.Counter(stats["plain"]["errors"]) + collections.Counter(
        stats["tls"]["errors"])
    assert errors["tls_memory_full"] == outcomes["454"] > 0
    assert errors["memory_full"] == outcomes["421"] > 0


def test_stats_are_read_on_the_loop_that_updates_them(start_receiver):
    """/v1/stats fits the memory samples the event loop keeps adding. Read from a worker thread
    (FastAPI's way with plain functions) the fit met "deque mutated during iteration", a 500 in
    CI; here the loop adds samples without pause while /v1/stats is asked 40 times."""
    receiver = start_receiver()
    monitor = receiver.service.memory

    async def add_samples(seconds: float) -> None:
        index, deadline = 0, time.monotonic() + seconds
        while time.monotonic() < deadline:
            monitor.samples.add(1000 + index, index % 9, index % 4)
            index += 1
            if index % 50 == 0:
                await asyncio.sleep(0)

    adding = asyncio.run_coroutine_threadsafe(add_samples(8.0), receiver.loop)
    statuses = collections.Counter(httpx.get(f"{receiver.http}/v1/stats").status_code
                                   for _ in range(40))
    adding.cancel()
    assert statuses == {200: 40}, statuses
