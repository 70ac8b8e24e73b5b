"""Refusals stay proved: each refusal path broken on purpose (a named mutant: one edit to a copy
of the code), and the tests that prove that refusal must then fail. A mutant they let live is a
test that passes with the refusal gone (issue 36: the gate without its alert once passed all
of tests/test_gate.py).

Named mutants, not a mutation tool: mutmut and cosmic-ray mutate every operator in a module and
run the whole suite per mutant (hours here, with real servers in most tests); these are the
seven breakages that matter, each killed in seconds by the tests named beside it."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import package_copy, pytest_against, replace_once


@dataclass(frozen=True)
class Mutant:
    file: str  # under services/tlsstorm
    original: str
    mutated: str
    tests: tuple[str, ...]  # pytest node ids or -k selections that must fail


MUTANTS = {
    "the gate closes without its alert": Mutant(
        "receiver/gate.py",
        "            self._transport.write(bytes((0x15, 0x03, 0x03, 0x00, 0x02, 0x02, alert)))\n",
        "", ("tests/test_gate.py", "-k", "broken_hellos or enforcing_gate_stops")),
    "the memory budget admits every session": Mutant(
        "receiver/memory.py",
        "    def _fits(self, more: int) -> bool:\n",
        "    def _fits(self, more: int) -> bool:\n        return True\n",
        ("tests/test_memory.py", "-k", "budget_too_small")),
    "the allowlist lets any address through": Mutant(
        "sender/allowlist.py",
        "            if not (any(ip in network for network in self._networks) or address in "
        "named):\n",
        "            if False:\n",
        ("tests/test_sender.py", "-k", "allowlist or not_allowed or forbidden")),
    "the SIZE limit is not enforced": Mutant(
        "receiver/app.py",
        "            data_size_limit=settings.max_message_bytes,\n",
        "            data_size_limit=None,\n",
        ("tests/test_bad_input.py", "-k", "oversized")),
    "STARTTLS is not required when it should be": Mutant(
        "receiver/app.py",
        "            require_starttls=settings.require_starttls,\n",
        "            require_starttls=False,\n",
        ("tests/test_receiver_delivery.py", "-k", "require_starttls")),
    "idle sessions are never closed": Mutant(
        "receiver/app.py",
        "            timeout=settings.idle_timeout_s,\n",
        "            timeout=3600,\n",
        ("tests/test_hostile.py", "-k", "idle")),
    "handshakes have no deadline": Mutant(
        "receiver/smtp.py",
        "            ssl_handshake_timeout=self._handshake_timeout_s,\n",
        "            ssl_handshake_timeout=3600,\n",
        ("tests/test_gate.py", "-k", "truncated_hello")),
}


def _copy_with(tmp_path: Path, mutant: Mutant | None) -> Path:
    """The package copied under tmp_path, the mutant applied."""
    root = package_copy(tmp_path)
    if mutant is not None:
        replace_once(root / "tlsstorm" / mutant.file, mutant.original, mutant.mutated)
    return root


def test_the_copy_is_what_the_tests_run(tmp_path):
    copy = _copy_with(tmp_path, None)
    env = {**os.environ, "PYTHONPATH": str(copy)}
    found = subprocess.run([sys.executable, "-c", "import tlsstorm.receiver.gate as gate; "
                            "print(gate.__file__)"], env=env, capture_output=True, text=True,
                           check=True).stdout
    assert found.startswith(str(copy)), found


@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", list(MUTANTS))
def test_every_refusal_mutant_is_killed(tmp_path, name):
    mutant = MUTANTS[name]
    finished = pytest_against(_copy_with(tmp_path, mutant), *mutant.tests)
    output = finished.stdout[-3000:] + finished.stderr[-2000:]
    # Killed: a test failed (pytest's 1). Not collected, or no test selected, is no verdict.
    assert finished.returncode == 1, f"{name}: survived or did not run ({finished.returncode})"
    assert "failed" in finished.stdout, output
