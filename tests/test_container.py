"""The image, run as the chart runs it: non-root, read-only root filesystem, the chart's own
environment and certificate, on the host's loopback; one plain and one STARTTLS mail through it."""

from __future__ import annotations

import base64
import collections
import os
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.locust_helpers import free_port
from tests.test_chart import RELEASE, render

ROOT = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI") == "true"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
LOCAL_BASE = "local/python-base:bookworm"


def _receiver_memory_limit() -> int:
    """The receiver container's memory limit as the chart renders it, in bytes."""
    deployment = next(obj for obj in render() if obj["kind"] == "Deployment"
                      and obj["metadata"]["name"] == f"{RELEASE}-tlsstorm-receiver")
    limit = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"][
        "memory"]
    number, unit = re.fullmatch(r"(\d+)(Mi|Gi)", limit).groups()
    return int(number) * {"Mi": 2**20, "Gi": 2**30}[unit]


def _unavailable(reason: str):
    if IN_CI:
        pytest.fail(f"{reason} (CI never skips the container check: .ci/run installs docker)")
    pytest.skip(reason)


def _run(*command: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, **kwargs)


@pytest.fixture(scope="module")
def image() -> str:
    if not shutil.which("docker"):
        _unavailable("docker is not installed")
    started = _run("bash", "scripts/dockerd.sh", timeout=120)
    if started.returncode != 0:
        _unavailable(f"no Docker engine can run here: {started.stderr.strip()}")
    base = _run("bash", "scripts/base-image.sh", LOCAL_BASE, timeout=900)
    assert base.returncode == 0, base.stdout + base.stderr
    tag = f"smoke-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "IMAGE_TAG": tag, "BASE_IMAGE": LOCAL_BASE}
    if HOST_CA_BUNDLE.exists():
        env["EXTRA_CA"] = str(HOST_CA_BUNDLE)
    built = _run("bash", "scripts/build-image.sh", env=env, timeout=1800)
    assert built.returncode == 0, built.stdout[-4000:] + built.stderr[-4000:]
    # requirements.lock pins every package: pip fetches one version of each, no backtracking.
    fetched = collections.Counter(
        match.group(1).lower().replace("_", "-") for match in re.finditer(
            r"(?:Downloading|Using cached) ([A-Za-z0-9_.-]+?)-\d[^-\s]*[-.]", built.stdout))
    if fetched:
        assert max(fetched.values()) == 1, fetched.most_common(5)
    else:  # the install step came from Docker's cache, built (and checked) before
        assert "Using cache" in built.stdout, built.stdout[-4000:]
    yield f"tlsstorm:{tag}"
    _run("docker", "rmi", f"tlsstorm:{tag}")


def _chart_environment() -> tuple[dict[str, dict[str, str]], dict[str, dict[str, str]]]:
    """Each component's env as the chart renders it, and the Secrets' decoded data."""
    objects = render("--set", "components.locust.enabled=false")
    secrets = {obj["metadata"]["name"]: {key: base64.b64decode(value).decode()
                                         for key, value in obj["data"].items()}
               for obj in objects if obj["kind"] == "Secret"}
    environments = {}
    for obj in objects:
        if obj["kind"] != "Deployment" or obj["metadata"]["name"].endswith("-jaeger"):
            continue
        component = obj["metadata"]["labels"]["app.kubernetes.io/component"]
        env = {}
        for item in obj["spec"]["template"]["spec"]["containers"][0]["env"]:
            if "value" in item:
                env[item["name"]] = str(item["value"])
            else:
                reference = item["valueFrom"]["secretKeyRef"]
                env[item["name"]] = secrets[reference["name"]][reference["key"]]
        environments[component] = env
    return environments, secrets


def _on_loopback(env: dict[str, str], ports: dict[str, int]) -> dict[str, str]:
    """Cluster service names become loopback ports: the containers share the host network."""
    names = {f"{RELEASE}-tlsstorm-receiver:2525": f"127.0.0.1:{ports['smtp']}",
             f"http://{RELEASE}-tlsstorm-collector:8027": f"http://127.0.0.1:{ports['collector']}"}
    moved = {}
    for key, value in env.items():
        for cluster_name, loopback in names.items():
            value = value.replace(cluster_name, loopback)
        moved[key] = "127.0.0.1" if value == "0.0.0.0" else value
    moved.pop("TLSSTORM_FORWARD_OTLP_ENDPOINT", None)  # no Jaeger on this machine
    return moved


def _wait_ready(url: str, container: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    logs = _run("docker", "logs", container)
    raise AssertionError(f"{container} not ready at {url}:\n{logs.stdout}{logs.stderr}")


def test_image_runs_the_chart_environment_and_delivers_both_kinds_of_mail(image, tmp_path):
    environments, secrets = _chart_environment()
    memory_limit = _receiver_memory_limit()
    ports = {"smtp": free_port(), "receiver": free_port(), "sender": free_port(),
             "collector": free_port()}
    overrides = {
        "receiver": {"TLSSTORM_RECEIVER_SMTP_PORT": ports["smtp"],
                     "TLSSTORM_RECEIVER_HTTP_PORT": ports["receiver"]},
        "sender": {"TLSSTORM_SENDER_HTTP_PORT": ports["sender"]},
        "collector": {"TLSSTORM_COLLECTOR_HTTP_PORT": ports["collector"]},
    }
    certificate = tmp_path / "tls"
    certificate.mkdir()
    for name in ("ca.crt", "ca.key"):
        (certificate / name).write_text(secrets[f"{RELEASE}-tlsstorm-receiver-ca"][name])
        (certificate / name).chmod(0o644)  # the container's user 10001 reads it
    certificate.chmod(0o755)
    suffix = uuid.uuid4().hex[:6]
    started: list[str] = []
    try:
        for component in ("collector", "receiver", "sender"):
            env = _on_loopback(environments[component], ports)
            env.update({key: str(value) for key, value in overrides[component].items()})
            name = f"tlsstorm-{component}-{suffix}"
            command = ["docker", "run", "-d", "--name", name, "--network", "host",
                       "--read-only", "--tmpfs", "/tmp:rw,mode=1777",
                       "--user", "10001:10001", "--cap-drop", "ALL",
                       "--security-opt", "no-new-privileges"]
            if component == "collector":
                command += ["--tmpfs", "/data:rw,mode=1777"]
            if component == "receiver":
                # The pod's memory limit, as the chart sets it: the receiver must read it.
                command += ["-v", f"{certificate}:/etc/tlsstorm/tls:ro",
                            "--memory", str(memory_limit)]
            for key, value in env.items():
                command += ["-e", f"{key}={value}"]
            launched = _run(*command, image, "tlsstorm", component)
            assert launched.returncode == 0, launched.stderr
            started.append(name)
            _wait_ready(f"http://127.0.0.1:{ports[component]}/readyz", name)

        token = environments["sender"]["TLSSTORM_API_TOKEN"]
        check = _run("docker", "run", "--rm", "--network", "host", "--read-only", "--user",
                     "10001:10001", "--cap-drop", "ALL", "-e", f"TLSSTORM_API_TOKEN={token}",
                     image, "tlsstorm", "check",
                     "--sender-url", f"http://127.0.0.1:{ports['sender']}",
                     "--collector-url", f"http://127.0.0.1:{ports['collector']}", timeout=180)
        assert check.returncode == 0, check.stdout + check.stderr
        assert "OK: the collector holds both sessions" in check.stdout

        receiver_url = f"http://127.0.0.1:{ports['receiver']}"
        tls = httpx.get(f"{receiver_url}/v1/tls").json()
        # Leaf and intermediate issued from the chart's root, not from a root of its own.
        assert [entry["role"] for entry in tls["chain"]] == ["leaf", "intermediate"]
        budget = httpx.get(f"{receiver_url}/v1/stats").json()["memory"]["budget"]
        assert budget["limit_bytes"] == memory_limit  # from its own cgroup
        root = httpx.get(f"{receiver_url}/v1/tls/root.pem").text
        assert root == secrets[f"{RELEASE}-tlsstorm-receiver-ca"]["ca.crt"]
        unauthorised = httpx.post(f"http://127.0.0.1:{ports['sender']}/v1/send",
                                  json={"tls": False})
        assert unauthorised.status_code == 401
        read_only = _run("docker", "exec", started[1], "sh", "-c", "touch /probe")
        assert read_only.returncode != 0 and "Read-only file system" in read_only.stderr
        user = _run("docker", "exec", started[1], "id", "-u")
        assert user.stdout.strip() == "10001"
    finally:
        for name in started:
            _run("docker", "rm", "-f", name)
