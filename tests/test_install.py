"""Installs are reproducible: the lock is in step with pyproject.toml, and a machine without
Python's venv module is told what to install."""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"


def _locked() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        if "==" in line and not line.lstrip().startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version.split()[0]
    return pins


def _declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = [*project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        declared.extend(extra)
    return [Requirement(text) for text in declared]


def test_every_declared_dependency_is_locked_at_a_version_it_allows():
    locked = _locked()
    for requirement in _declared():
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{requirement.name} is not in requirements.lock: run make lock"
        assert requirement.specifier.contains(locked[name], prereleases=True), \
            f"requirements.lock pins {name}=={locked[name]}, outside {requirement}: make lock"


def test_the_lock_is_used_by_make_install_and_the_image():
    assert "--constraint $(LOCK)" in (ROOT / "Makefile").read_text()
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "requirements.lock" in dockerfile and "--constraint /src/requirements.lock" in dockerfile


def test_without_venv_a_user_who_is_not_root_is_told_the_one_line_to_run(tmp_path):
    no_venv = tmp_path / "python3"
    no_venv.write_text("#!/bin/sh\nexit 1\n")  # a python3 whose `import venv` fails
    no_venv.chmod(0o755)
    finished = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
         "make", "--no-print-directory", "-C", str(ROOT), "python-venv", f"PYTHON={no_venv}"],
        capture_output=True, text=True, timeout=60)

    assert finished.returncode != 0
    assert "Run: sudo apt-get install -y python3-venv" in finished.stdout
