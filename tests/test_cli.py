"""The `tlsstorm` command: settings from flags and env, clear errors, and the local stack."""

from __future__ import annotations

import argparse
import html
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import httpx
import pytest

from tests.helpers import tcp_packets
from tests.locust_helpers import free_port
from tlsstorm.cli import build_parser
from tlsstorm.common.config import ReceiverSettings, SenderSettings, load_settings


def _stack_env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("TLSSTORM_",
                                                                                "OTEL_"))}
    env.update({
        "TLSSTORM_RECEIVER_SMTP_PORT": str(free_port()),
        "TLSSTORM_RECEIVER_HTTP_PORT": str(free_port()),
        "TLSSTORM_SENDER_HTTP_PORT": str(free_port()),
        "TLSSTORM_COLLECTOR_HTTP_PORT": str(free_port()),
        "TLSSTORM_LOCUST_WEB_PORT": str(free_port()),
    })
    return env


def test_flags_override_env_and_env_overrides_defaults(monkeypatch):
    monkeypatch.setenv("TLSSTORM_RECEIVER_SMTP_PORT", "2600")
    monkeypatch.setenv("TLSSTORM_RECEIVER_CERT_KEY_TYPE", "ecdsa-p256")
    flags = build_parser().parse_args(["receiver", "--smtp-port", "2700"])

    settings = load_settings(ReceiverSettings, flags, "tlsstorm receiver")

    assert settings.smtp_port == 2700
    assert settings.cert_key_type == "ecdsa-p256"
    assert settings.http_port == 8025


def test_allowed_targets_env_is_a_comma_list(monkeypatch):
    monkeypatch.setenv("TLSSTORM_ALLOWED_TARGETS", "receiver:2525, 10.0.0.0/8")

    assert SenderSettings().allowed_targets == ["receiver:2525", "10.0.0.0/8"]


@pytest.mark.parametrize(("args", "env", "message"), [
    (["--smtp-port", "notaport"], {}, "--smtp-port / TLSSTORM_RECEIVER_SMTP_PORT"),
    (["--cert-key-type", "dsa"], {}, "--cert-key-type / TLSSTORM_RECEIVER_CERT_KEY_TYPE"),
    ([], {"TLSSTORM_RECEIVER_TLS_MIN_VERSION": "1.3", "TLSSTORM_RECEIVER_TLS_MAX_VERSION": "1.2"},
     "below tls_min_version"),
    (["--cert-file", "/etc/hostname", "--key-file", "/etc/hostname"], {},
     "cannot serve TLS with /etc/hostname, /etc/hostname: "),
    (["--ca-cert-file", "/etc/hostname", "--ca-key-file", "/etc/hostname"], {},
     "cannot serve TLS with /etc/hostname, /etc/hostname: "),
    (["--cert-file", "/nonexistent.pem", "--key-file", "/nonexistent.pem"], {},
     "No such file or directory"),
])
def test_bad_settings_exit_2_with_one_clear_line(args, env, message):
    finished = subprocess.run(
        [sys.executable, "-m", "tlsstorm", "receiver", *args], env={**_stack_env(), **env},
        capture_output=True, text=True, timeout=60,
    )

    assert finished.returncode == 2
    assert message in finished.stderr
    assert "Traceback" not in finished.stderr


def test_up_starts_the_stack_and_ctrl_c_stops_it_cleanly(tmp_path):
    env = _stack_env()
    collector_url = f"http://127.0.0.1:{env['TLSSTORM_COLLECTOR_HTTP_PORT']}"
    locust_url = f"http://127.0.0.1:{env['TLSSTORM_LOCUST_WEB_PORT']}"
    sender_url = f"http://127.0.0.1:{env['TLSSTORM_SENDER_HTTP_PORT']}"
    receiver_url = f"http://127.0.0.1:{env['TLSSTORM_RECEIVER_HTTP_PORT']}"
    up = subprocess.Popen([sys.executable, "-m", "tlsstorm", "up", "--no-jaeger"], env=env,
                          cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:  # Locust starts last: then all are up
            try:
                if httpx.get(locust_url).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        sent = httpx.post(f"{sender_url}/v1/send", json={"tls": True}, timeout=30).json()
        assert sent["results"][0]["ok"] is True
        assert httpx.get(f"{receiver_url}/v1/stats").json()["tls"]["messages"] == 1
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            summary = httpx.get(f"{collector_url}/v1/summary").json()
            if summary["receiver"]["starttls"]["sessions"] == 1:
                break
            time.sleep(0.2)
        assert summary["receiver"]["starttls"]["sessions"] == 1
    finally:
        up.send_signal(signal.SIGINT)
        output, _ = up.communicate(timeout=30)

    assert up.returncode == 0, output
    assert "tlsstorm is up" in output and receiver_url in output and locust_url in output
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{sender_url}/healthz")


def test_demo_prints_the_plain_versus_tls_table(tmp_path):
    finished = subprocess.run(
        [sys.executable, "-m", "tlsstorm", "demo", "--messages", "40", "--users", "4"],
        env=_stack_env(), cwd=tmp_path, capture_output=True, text=True, timeout=180,
    )

    assert finished.returncode == 0, finished.stdout + finished.stderr
    lines = {line.split("  ")[0]: line for line in finished.stdout.splitlines()}
    assert lines["sessions"].split()[1:3] == ["28", "12"]
    assert lines["receiver CPU ms/msg"].rstrip().endswith("x")
    assert "agrees with the collector" in finished.stdout
    assert (tmp_path / "results" / "demo-latest.json").exists()
    report = html.unescape((tmp_path / "results" / "report.html").read_text())
    assert "<svg" in report
    # One truth per figure: the generators' CPU (and what limited the wave, if anything) is
    # the report's sentence, word for word; Locust's one process can use one core.
    generators = next(line for line in finished.stdout.splitlines()
                      if "load generators" in line or line.startswith("GENERATOR-LIMITED"))
    assert generators in report
    assert re.search(r"locust \d+\.\d\d cores of 1, busy \d+ of \d+ s", generators), generators
    assert "CPU per message over the wave: locust " in finished.stdout


@pytest.mark.skipif(not shutil.which("tcpdump") and os.environ.get("CI") != "true",
                    reason="tcpdump is not installed (make system-deps installs it)")
def test_demo_over_starttls_serves_a_chain_and_its_bytes_out_match_a_capture(tmp_path):
    env = _stack_env()
    smtp_port = int(env["TLSSTORM_RECEIVER_SMTP_PORT"])
    pcap = tmp_path / "demo.pcap"
    capture = subprocess.Popen(
        [shutil.which("tcpdump") or "tcpdump", "-i", "lo", "-U", "--immediate-mode", "-w",
         str(pcap), "-s", "128", f"tcp port {smtp_port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)  # tcpdump is listening
    try:
        finished = subprocess.run(
            [sys.executable, "-m", "tlsstorm", "demo", "--messages", "20", "--users", "4",
             "--tls-ratio", "1"],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=180,
        )
    finally:
        capture.terminate()
        capture.wait(10)

    assert finished.returncode == 0, finished.stdout + finished.stderr
    lines = {line.split("  ")[0]: line for line in finished.stdout.splitlines()}
    assert lines["sessions"].split()[1:3] == ["0", "20"]
    assert re.search(r"certificates served \(chain\): leaf rsa2048 [\d,]+ B \+ "
                     r"intermediate rsa2048 [\d,]+ B", finished.stdout), finished.stdout
    table_out = float(lines["wire bytes out/msg"].split()[4].replace(",", ""))
    connections = sum(1 for packet in tcp_packets(pcap)
                      if packet.destination_port == smtp_port and packet.flags & 0x12 == 0x02)
    captured_out = sum(packet.payload for packet in tcp_packets(pcap)
                       if packet.source_port == smtp_port)
    assert connections == 20
    assert table_out == pytest.approx(captured_out / connections, rel=0.05)


def _subcommands(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield from action.choices.items()


def test_every_subcommand_renders_its_help_with_placeholders_that_say_what_goes_there():
    parser = build_parser()
    subcommands = dict(_subcommands(parser))
    helps = {name: sub.format_help() for name, sub in subcommands.items()}

    assert set(helps) >= {"receiver", "sender", "collector", "up", "demo", "sweep", "check"}
    for name, sub in subcommands.items():
        # argparse's own placeholder is the flag's name in capitals: every value flag sets one.
        unnamed = [action.option_strings for action in sub._actions
                   if action.option_strings and action.nargs != 0 and action.metavar is None
                   and action.choices is None]
        assert not unnamed, (name, unnamed)
    assert "--smtp-port PORT" in helps["receiver"]
    assert "--cert-key-type {rsa2048,rsa3072,rsa4096,ecdsa-p256,ecdsa-p384}" in helps["receiver"]
    assert "--cert-names NAME[,NAME...]" in helps["receiver"]
    assert "--idle-timeout-s SECONDS" in helps["receiver"]
    assert "--tls-ratio RATIO" in helps["demo"]


@pytest.mark.parametrize("command", ["receiver", "sender", "collector", "demo", "sweep"])
def test_help_runs_from_the_shell(command):
    finished = subprocess.run([sys.executable, "-m", "tlsstorm", command, "--help"],
                              capture_output=True, text=True, timeout=60)

    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.startswith(f"usage: tlsstorm {command}")


@pytest.mark.parametrize(("args", "message"), [
    (["--messages", "0"], "--messages: at least 1, not 0"),
    (["--tls-ratio", "1.5"], "a TLS ratio is between 0 and 1, not 1.5"),
    (["--tls-ratio", "lots"], "not a number: 'lots'"),
])
def test_demo_refuses_values_it_cannot_honour(args, message):
    finished = subprocess.run([sys.executable, "-m", "tlsstorm", "demo", *args],
                              capture_output=True, text=True, timeout=60)

    assert finished.returncode == 2
    assert message in finished.stderr
