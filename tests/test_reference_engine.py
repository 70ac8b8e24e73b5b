"""The reference engine (pure Python on aiosmtplib) against the compiled one (issue 31): for every
scripted and hostile server the engines are tested against, the same outcome on both, message
by message (accepted or failed, and the server's code); and the reference engine is what a
sender without a built engine uses, saying so."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers import pytest_against
from tests.locust_helpers import free_port
from tests.smtp_servers import (
    AFTER_EHLO,
    BIG_REPLY,
    IN_CONVERSATION,
    INSTEAD_OF_HANDSHAKE,
    TLS_CLOSE_NOTIFY,
    hostile_server,
    key_lines,
    scripted_server,
    server_answering_data_early,
    tls_server_writing_records,
)
from tlsstorm.common.config import SenderSettings
from tlsstorm.sender.allowlist import Target
from tlsstorm.sender.client import SmtpClient

ROOT = Path(__file__).resolve().parents[1]
GREETED = [b"220 ready\r\n", b"250 mx.test\r\n"]
OFFERING_TLS = [b"220 ready\r\n", b"250-mx.test\r\n250 STARTTLS\r\n"]
ONE_MESSAGE = [b"250 ok\r\n", b"250 ok\r\n", b"354 go on\r\n", b"250 queued\r\n", b"221 bye\r\n"]

# name: (the server for one connection, STARTTLS or not, message size)
SCRIPTED = {
    "a good server": (lambda: scripted_server([*GREETED, *ONE_MESSAGE]), False, 1024),
    "a reply split mid-line, then one that never ends": (lambda: scripted_server([
        b"220-mx.test ESMTP|\r\n220 ready\r\n", b"250-mx.test\r\n25|0 SIZE 1000\r\n",
        b"250 ok\r\n", b"A" * 70_000]), False, 1024),
    "a reply without a code": (lambda: scripted_server([*GREETED, b"hello there\r\n"]),
                               False, 1024),
    "a greeting of 554": (lambda: scripted_server([b"554 5.3.2 go away\r\n"]), False, 1024),
    "MAIL refused 550": (lambda: scripted_server([*GREETED, b"550 5.7.1 no thanks\r\n"]),
                         False, 1024),
    "RCPT answered 251": (lambda: scripted_server([*GREETED, b"250 ok\r\n",
                                                   b"251 will forward\r\n"]), False, 1024),
    "DATA refused 451": (lambda: scripted_server([*GREETED, b"250 ok\r\n", b"250 ok\r\n",
                                                  b"451 4.3.0 try later\r\n"]), False, 1024),
    "the message refused 552": (lambda: scripted_server([*GREETED, *ONE_MESSAGE[:3],
                                                         b"552 too big\r\n"]), False, 1024),
    "QUIT answered 500": (lambda: scripted_server([*GREETED, *ONE_MESSAGE[:4],
                                                   b"500 what\r\n"]), False, 1024),
    "a 30 KiB reply": (lambda: scripted_server([*GREETED, *ONE_MESSAGE[:3], BIG_REPLY,
                                                b"221 bye\r\n"]), False, 1024),
    "STARTTLS not offered": (lambda: scripted_server(GREETED), True, 1024),
    "STARTTLS refused 454": (lambda: scripted_server([*OFFERING_TLS, b"454 not now\r\n",
                                                      *ONE_MESSAGE]), True, 1024),
    "plaintext behind STARTTLS's 220": (lambda: scripted_server([
        *OFFERING_TLS, b"220 go ahead\r\n250 injected\r\n"]), True, 1024),
    "replies in several TLS records of one segment": (lambda: tls_server_writing_records([
        (b"\r\n", [b"250-mx.test\r\n", b"250-SIZE 1000000\r\n", b"250 8BITMIME\r\n"]),
        *AFTER_EHLO]), True, 1024),
    "a 250 before the message has left": (lambda: server_answering_data_early(False), False,
                                          10 << 20),
    "a 250 before the message has left, in TLS": (lambda: server_answering_data_early(True),
                                                  True, 10 << 20),
}
HOSTILE = {
    **{f"{case}, plain": (lambda case=case: hostile_server(case, False), False, 1024)
       for case in IN_CONVERSATION},
    **{f"{case}, in TLS": (lambda case=case: hostile_server(case, True), True, 1024)
       for case in [*IN_CONVERSATION, TLS_CLOSE_NOTIFY, *INSTEAD_OF_HANDSHAKE]},
}
CASES = {**SCRIPTED, **HOSTILE}


async def _send(engine: str, profile: str, server_of, tls: bool, size: int) -> list[dict]:
    server, thread = server_of()
    port = server.getsockname()[1]
    client = SmtpClient(SenderSettings(engine=engine, timeout_s=2))
    try:
        results = await client.send(Target("127.0.0.1", port, "127.0.0.1"), tls, 1, size,
                                    profile=profile)
    finally:
        client.close()
        await asyncio.to_thread(thread.join, 10)
        server.close()
    return [result.as_dict() for result in results]


# Where the engines name the same end differently, on purpose: aiosmtplib discards plaintext
# behind STARTTLS's 220 (then the server, which speaks no TLS, closes), the compiled engine
# refuses it. (reference's, native's)
NAMED_APART = {"plaintext behind STARTTLS's 220": ("ConnectionResetError", "StartTlsInjection")}


def _outcome(results: list[dict]) -> list[tuple[bool, int | None]]:
    return [(result["ok"], result["code"]) for result in results]


def _kinds(results: list[dict]) -> list[str]:
    return [(result["error"] or "accepted").split(":")[0] for result in results]


@pytest.mark.parametrize("case", list(CASES))
def test_both_engines_end_each_server_the_same_way(case):
    """The compiled engine on both its TLS stacks (rustls, OpenSSL), the reference engine on
    OpenSSL: each message's outcome and code the same; and the reference engine and the
    compiled one with rustls name the failure alike (OpenSSL names a peer's close its own way:
    UNEXPECTED_EOF_WHILE_READING)."""
    server_of, tls, size = CASES[case]
    runs = {"reference": ("reference", "default"), "native": ("native", "default")}
    if tls:
        runs["native, OpenSSL"] = ("native", "openssl")
    found = {name: asyncio.run(_send(engine, profile, server_of, tls, size))
             for name, (engine, profile) in runs.items()}

    seen = {name: [(result["ok"], result["code"], result["error"]) for result in results]
            for name, results in found.items()}
    expected = _outcome(found["reference"])
    for results in found.values():
        assert _outcome(results) == expected, seen
    reference, native = (_kinds(found[name]) for name in ("reference", "native"))
    if case in NAMED_APART:
        assert (reference[0], native[0]) == NAMED_APART[case], seen
    else:
        assert reference == native, seen


def _installed_without_compiler_or_cargo(tmp_path: Path) -> tuple[Path, str]:
    """tlsstorm built into a wheel with Python alone on PATH (no cc, no cargo) and installed
    into a folder of its own; that folder, and what the build said."""
    source = tmp_path / "source"
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name if source.exists() else _made(source) / name)
    shutil.copytree(ROOT / "services", source / "services", ignore=shutil.ignore_patterns(
        "__pycache__", "*.egg-info", "*.so", "target"))
    tools = _made(tmp_path / "bin")
    (tools / "python").symlink_to(sys.executable)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps",
         "--wheel-dir", str(tmp_path / "wheel"), str(source)],
        env={**os.environ, "PATH": str(tools)}, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    wheel = next((tmp_path / "wheel").glob("tlsstorm-*.whl"))
    installed = tmp_path / "installed"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--target", str(installed), str(wheel)], check=True, timeout=120)
    return installed, built.stdout + built.stderr


def _made(folder: Path) -> Path:
    folder.mkdir(parents=True)
    return folder


def test_an_install_without_compiler_or_cargo_sends_with_the_reference_engine_and_says_so(
        tmp_path, receiver):
    installed, build_log = _installed_without_compiler_or_cargo(tmp_path)
    assert "native SMTP engine is not built: it needs cargo" in build_log, build_log[-3000:]
    assert not list(installed.glob("tlsstorm/sender/_smtp_engine*")), "an engine was built"

    env = {**os.environ, "PYTHONPATH": str(installed), "OTEL_SDK_DISABLED": "true",
           "TLSSTORM_SENDER_HTTP_PORT": str(free_port()),
           "TLSSTORM_SENDER_TARGET": f"127.0.0.1:{receiver.smtp_port}"}
    said = tmp_path / "sender.out"
    with said.open("w") as out:
        sender = subprocess.Popen([sys.executable, "-m", "tlsstorm", "sender"], env=env,
                                  stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
    http = f"http://127.0.0.1:{env['TLSSTORM_SENDER_HTTP_PORT']}"
    try:
        _until_ready(http, sender)
        engine = httpx.get(f"{http}/v1/stats", timeout=10).json()["engine"]
        sent = httpx.post(f"{http}/v1/send", timeout=30, json={"tls": True, "count": 3,
                                                               "per_connection": 3}).json()
        wave = httpx.post(f"{http}/v1/waves", timeout=10, json={
            "rate": 50, "count": 10, "tls_ratio": 0.5}).json()
        wave = _until_over(f"{http}/v1/waves/{wave['id']}")
    finally:
        sender.terminate()
        sender.wait(10)

    assert engine["name"] == "reference", engine
    assert "the native engine cannot be used (the SMTP engine _smtp_engine is not built" \
        in engine["why"], engine
    assert "reference engine: aiosmtplib, because the native engine cannot be used" \
        in said.read_text(), said.read_text()
    assert [result["ok"] for result in sent["results"]] == [True] * 3, sent
    assert sent["results"][0]["tls_version"] == "TLSv1.3"
    assert (wave["engine"], wave["done"], wave["plain"]["ok"], wave["tls"]["ok"]) == (
        "reference", 10, 5, 5), wave

    asked = subprocess.run([sys.executable, "-m", "tlsstorm", "sender"], capture_output=True,
                           text=True, timeout=60, cwd=tmp_path,
                           env={**env, "TLSSTORM_SENDER_ENGINE": "native"})
    assert asked.returncode != 0
    assert "TLSSTORM_SENDER_ENGINE=native, but the SMTP engine _smtp_engine is not built" \
        in asked.stderr, asked.stderr


def _until_ready(http: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 30
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{http}/readyz", timeout=1).status_code == 200:
                return
        assert process.poll() is None and time.monotonic() < deadline, "sender not ready"
        time.sleep(0.1)


def _until_over(url: str) -> dict:
    deadline = time.monotonic() + 30
    while (wave := httpx.get(url, timeout=10).json())["status"] == "running":
        assert time.monotonic() < deadline, wave
        time.sleep(0.2)
    return wave


def test_the_reference_engine_logs_its_keys_where_sslkeylogfile_says(monkeypatch, tmp_path):
    engine_keys, server_keys = tmp_path / "engine.keys", tmp_path / "server.keys"
    monkeypatch.setenv("SSLKEYLOGFILE", str(engine_keys))
    results = asyncio.run(_send("reference", "openssl", lambda: tls_server_writing_records(
        [(b"\r\n", [b"250 mx.test\r\n"]), *AFTER_EHLO], server_keys), True, 1024))

    assert results[0]["ok"] is True, results
    logged = key_lines(server_keys)
    assert len(logged) == 5, logged  # TLS 1.3: four traffic secrets and the exporter's
    assert logged <= key_lines(engine_keys)


def test_the_senders_tests_pass_with_the_reference_engine():
    """Waves (due times, skips, stops, the concurrency cap), batches (in order, one after
    another), resumption, refused STARTTLS, bytes against the receiver's count, large messages
    held a few at a time: the sender's own tests, each sender in them on the reference engine
    (but the one about the compiled engine's thread)."""
    run = pytest_against(ROOT / "services", "tests/test_sender.py", "-k",
                         "not engine_thread_holds_the_conversations",
                         env={"TLSSTORM_SENDER_ENGINE": "reference"}, timeout=600)

    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "deselected" in run.stdout, run.stdout[-500:]
