"""The commands README.md and docs/ tell a user to type: each parses, each named make target and
tlsstorm flag exists, and the safe ones (curl against the local services) run and succeed."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from tlsstorm.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_FENCE = re.compile(r"```(?:sh|bash|shell)\n(.*?)```", re.S)


def _commands() -> list[tuple[str, str]]:
    """(file, command) for each command line of the docs' shell blocks, continuations joined."""
    found = []
    for doc in DOCS:
        for block in _FENCE.findall(doc.read_text()):
            for command in re.sub(r"\\\n\s*", " ", block).splitlines():
                command = command.split("  #")[0].strip()
                if command and not command.startswith("#"):
                    found.append((doc.name, command))
    return found


COMMANDS = _commands()
MAKE_TARGETS = set(re.findall(r"^([a-z-]+):", (ROOT / "Makefile").read_text(), re.M))


def test_the_docs_have_commands_to_check():
    assert len(COMMANDS) > 20
    assert any(command.startswith("curl") for _, command in COMMANDS)


@pytest.mark.parametrize(("doc", "command"), COMMANDS, ids=[c for _, c in COMMANDS])
def test_each_documented_command_parses(doc, command):
    syntax = subprocess.run(["bash", "-n", "-c", command], capture_output=True, text=True)
    assert syntax.returncode == 0, f"{doc}: {syntax.stderr}"
    words = shlex.split(command)
    assert words[0] != "open", f"{doc}: `open` is macOS's; on Linux it is xdg-open"
    if words[0] == "make":
        unknown = [target for target in words[1:] if "=" not in target
                   and target not in MAKE_TARGETS]
        assert not unknown, f"{doc}: no make target {unknown}"
    if words[0].endswith("tlsstorm"):
        try:
            build_parser().parse_args(words[1:])
        except SystemExit as exit_:
            assert exit_.code == 0, f"{doc}: tlsstorm refuses {command!r}"


def _local(command: str, ports: dict[str, int]) -> list[str]:
    """A curl line aimed at this test's services, failing on an HTTP error."""
    for default, port in ports.items():
        command = command.replace(f"localhost:{default}", f"127.0.0.1:{port}")
    words = shlex.split(command)
    return [words[0], "--fail-with-body", "--max-time", "60", *words[1:]]


def test_documented_curl_commands_succeed_against_the_services(receiver, sender):
    ports = {"8025": receiver.service.http_port, "8026": sender.service.http_port}
    curls = [command for _, command in COMMANDS if command.startswith("curl")]
    assert curls
    for command in curls:
        ran = subprocess.run(_local(command, ports), capture_output=True, text=True)
        assert ran.returncode == 0, f"{command}: {ran.stdout} {ran.stderr}"
    assert receiver.wait_sessions(3)["tls"]["sessions"] >= 3


def test_the_readme_fits_on_a_screen_or_two_and_its_links_lead_somewhere():
    """What tlsstorm is, the two commands, what they show, where next: the rest is in docs/."""
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 100
    for doc in DOCS:
        for link in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", doc.read_text()):
            assert (doc.parent / link.strip()).exists(), f"{doc.name}: {link} leads nowhere"
