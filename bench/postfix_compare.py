"""Our receiver and Postfix's smtpd, same machine, same certificate, same sender waves: CPU per
plain and per STARTTLS session, and the TLS/plain factor each shows. The receiver must not
distort the factor a real MTA shows (target: within 25%).

Needs Debian's postfix (and root): scripts/postfix-sink.sh runs an instance of its own.
Usage: python bench/postfix_compare.py [--messages 300] [--rate 60] [--key-type rsa2048]
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path

from fixtures import (  # bench/ is on sys.path
    certificate_files,
    free_port,
    stack_environment,
    wave_arguments,
)
from machine import machine_note, process_cpu_seconds
from tlsstorm.sweep.run import SweepRunner, stack_runner

ROOT = Path(__file__).resolve().parents[1]


def smtpd_cpu_seconds(port: int) -> dict[int, float]:
    """CPU of every smtpd process serving the sink's port, by pid."""
    cpu = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if command.startswith(f"smtpd -n 127.0.0.1:{port} "):
            cpu[int(entry.name)] = process_cpu_seconds(int(entry.name))
    return cpu


def postfix_wave(runner: SweepRunner, port: int, tls_ratio: float, rate: float,
                 messages: int) -> float:
    """smtpd CPU microseconds per session of one wave aimed at Postfix."""
    before = smtpd_cpu_seconds(port)
    response = runner.http.post(f"{runner.sender_url}/v1/waves", json={
        "rate": rate, "count": messages, "tls_ratio": tls_ratio, "concurrency": 64,
        "target": f"127.0.0.1:{port}"})
    response.raise_for_status()
    wave_id = response.json()["id"]
    while True:
        wave = runner.http.get(f"{runner.sender_url}/v1/waves/{wave_id}").json()
        if wave["status"] != "running":
            break
        time.sleep(0.2)
    after = smtpd_cpu_seconds(port)
    cpu = sum(after[pid] - before.get(pid, 0.0) for pid in after)
    ok = wave["plain"]["ok"] + wave["tls"]["ok"]
    if ok < messages:
        print(f"  Postfix accepted {ok} of {messages} ({wave['skipped']} skipped by the "
              f"open-loop pacing, errors {wave['errors']}); CPU is per accepted message")
    if not ok:
        raise SystemExit("Postfix accepted nothing")
    return cpu * 1e6 / ok


def main() -> None:
    flags = wave_arguments(__doc__, messages=300, rate=60.0)
    postfix_port = free_port()
    with tempfile.TemporaryDirectory() as folder:
        cert, key = certificate_files(Path(folder), flags.key_type)
        subprocess.run(["bash", str(ROOT / "scripts/postfix-sink.sh"), "start",
                        str(postfix_port), str(cert), str(key)], check=True,
                       stdout=subprocess.DEVNULL)
        try:
            with stack_runner(overrides=stack_environment(Path(folder), cert, key)) as runner:
                runner.wave(0.5, flags.rate, 100, "warm-up")
                postfix_wave(runner, postfix_port, 0.5, flags.rate, 100)
                ours = {ratio: runner.wave(ratio, flags.rate, flags.messages,
                                           f"receiver {ratio:.0%} TLS")
                        for ratio in (0.0, 1.0)}
                theirs = {ratio: postfix_wave(runner, postfix_port, ratio, flags.rate,
                                              flags.messages) for ratio in (0.0, 1.0)}
        finally:
            subprocess.run(["bash", str(ROOT / "scripts/postfix-sink.sh"), "stop"], check=False)
    print(f"machine: {machine_note()}")
    print(f"certificate {flags.key_type}, {flags.messages} messages per wave at "
          f"{flags.rate:g}/s, one message per session, no session resumption")
    rows = {
        "tlsstorm receiver (process)": [ours[r].process_cpu_ms_per_message * 1000
                                        for r in (0.0, 1.0)],
        "tlsstorm receiver (sessions)": [ours[r].cpu_ms_per_message * 1000 for r in (0.0, 1.0)],
        "Postfix smtpd": [theirs[0.0], theirs[1.0]],
    }
    print(f"{'':<30}{'plain us':>10}{'TLS us':>10}{'extra us':>10}{'TLS/plain':>11}")
    for name, (plain, tls) in rows.items():
        print(f"{name:<30}{plain:>10,.0f}{tls:>10,.0f}{tls - plain:>10,.0f}{tls / plain:>10.2f}x")
    ours_factor = rows["tlsstorm receiver (sessions)"][1] / rows["tlsstorm receiver (sessions)"][0]
    postfix_factor = theirs[1.0] / theirs[0.0]
    print(f"the receiver's factor is {ours_factor / postfix_factor:.2f}x Postfix's "
          f"(target within 25%: {0.75 <= ours_factor / postfix_factor <= 1.25})")
    print(f"plain session: receiver {rows['tlsstorm receiver (sessions)'][0] / theirs[0.0]:.2f}x "
          "Postfix smtpd's CPU (target <= 1.5x)")


if __name__ == "__main__":
    main()
