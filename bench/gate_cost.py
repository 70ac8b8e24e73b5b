"""What the ClientHello gate saves: the receiver's CPU per refused handshake against a full one
(RSA-2048 leaf and intermediate), and its process CPU per attempted STARTTLS session, for the
same TLS 1.2-only bots with the gate off and enforcing. Each figure the mean of --repeat waves
with its 95% confidence interval; ratios taken round by round.

Usage: python bench/gate_cost.py [--messages 400] [--rate 100] [--repeat 4]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from fixtures import certificate_files, stack_environment  # bench/ is on sys.path
from tlsstorm.common.intervals import shown
from tlsstorm.common.machine import machine_note
from tlsstorm.sweep.run import SweepRunner, stack_runner

GATE = {"TLSSTORM_RECEIVER_GATE_MODE": "enforce", "TLSSTORM_RECEIVER_GATE_DENY_BELOW_TLS13": "true"}


def wave(runner: SweepRunner, profile: str, flags: argparse.Namespace, label: str
         ) -> tuple[float | None, float | None, float]:
    """(full handshake CPU ms, refused handshake CPU ms, process CPU ms per session)."""
    point = runner.wave(1.0, flags.rate, flags.messages, label, profile=profile)
    tls = runner.http.get(f"{runner.receiver_url}/v1/stats").json()["tls"]
    sessions = max(tls["sessions"], 1)
    process_ms = point.process_cpu_ms_per_message * max(point.messages, 1) / sessions
    return tls["handshake_cpu_ms_mean"], tls["failed_handshake_cpu_ms_mean"], process_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=400)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--repeat", type=int, default=4)
    flags = parser.parse_args()
    full13, full12, refused, ungated_ms, gated_ms = [], [], [], [], []
    with tempfile.TemporaryDirectory() as folder:
        environment = stack_environment(Path(folder), *certificate_files(Path(folder),
                                                                         "rsa2048"))
        environment.pop("TLSSTORM_RECEIVER_CERT_FILE")  # the default chain, issued at start
        environment.pop("TLSSTORM_RECEIVER_KEY_FILE")
        with stack_runner(overrides=environment, label="gate off") as runner:
            runner.wave(1.0, flags.rate, 50, "warm-up")
            for number in range(1, flags.repeat + 1):
                hs, _, per_session = wave(runner, "bot-tls12", flags, f"bots, no gate {number}")
                full12.append(hs)
                ungated_ms.append(per_session)
        with stack_runner(overrides={**environment, **GATE}, label="gate enforcing") as runner:
            runner.wave(1.0, flags.rate, 50, "warm-up", profile="mta")
            for number in range(1, flags.repeat + 1):
                hs, _, _ = wave(runner, "mta", flags, f"TLS 1.3 MTA, let in {number}")
                full13.append(hs)
                _, denied, per_session = wave(runner, "bot-tls12", flags,
                                              f"bots, refused {number}")
                refused.append(denied)
                gated_ms.append(per_session)
    print(f"\nmachine: {machine_note()}")
    print(f"{flags.repeat} waves of {flags.messages} STARTTLS sessions at {flags.rate:g}/s per "
          "figure, RSA-2048 leaf + intermediate, no tickets; mean +- 95% interval")
    print(f"receiver CPU per handshake: full TLS 1.3 (MTA, let in) {shown(full13, 'ms', 3)}; "
          f"full TLS 1.2 (bots, no gate) {shown(full12, 'ms', 3)}; refused by the gate "
          f"{shown(refused, 'ms', 3)}")
    for name, full in (("TLS 1.3", full13), ("the bots' own TLS 1.2", full12)):
        share = [r / f for r, f in zip(refused, full, strict=True)]
        verdict = "met" if max(share) <= 0.4 else "not met"
        print(f"refused / full handshake ({name}): {shown(share, 'x', 3)} (target <= 0.4: "
              f"{verdict} in every round)" if name == "TLS 1.3" else
              f"refused / full handshake ({name}): {shown(share, 'x', 3)}")
    saving = [1 - g / u for g, u in zip(gated_ms, ungated_ms, strict=True)]
    print(f"receiver process CPU per attempted bot session: no gate {shown(ungated_ms, 'ms', 3)}"
          f", gate refusing {shown(gated_ms, 'ms', 3)} (saving {shown(saving, '', 2)})")


if __name__ == "__main__":
    main()
