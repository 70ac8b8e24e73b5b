"""Real mail servers the local stack can start as the measured target, each beside a meter that
reads its processes from the kernel: Postfix (Debian's package, an instance of its own, as root)
and Exim (in a container of tlsstorm's image, which carries it: Debian's exim4 and postfix
packages exclude each other). Both offer STARTTLS with a chain issued like the receiver's,
accept mail from loopback and discard it."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tlsstorm.common.config import ReceiverSettings
from tlsstorm.common.pki import server_certificate
from tlsstorm.localstack.processes import CHECKOUT, Child, tlsstorm_command

SCRIPTS = CHECKOUT / "scripts"
LOCAL_TARGETS = ("postfix", "exim")
POSTFIX_INSTANCE = "tlsstorm-postfix-target"
def target_cpus() -> str:
    """The CPUs the measured server (a local MTA, or the receiver) may run on, taskset's list
    (TLSSTORM_TARGET_CPUS), e.g. "1" to keep it off the generator's core: its capacity is then
    that core's, as on a server of its own. Empty: wherever the scheduler puts it."""
    return os.environ.get("TLSSTORM_TARGET_CPUS", "")


def pinned() -> list[str]:
    """A command's prefix that runs it on target_cpus(), when set."""
    return ["taskset", "-c", target_cpus()] if target_cpus() else []


@dataclass(frozen=True)
class LocalTarget:
    """A mail server the stack starts, and its meter (both children of the stack)."""

    name: str
    address: str  # host:port the sender aims at
    meter_url: str
    children: list[Child]
    files: tempfile.TemporaryDirectory  # its chain, removed with it


def certificate_files(hostname: str, folder: Path, names: list[str] | None = None
                      ) -> tuple[Path, Path]:
    """The chain the receiver would serve (its settings, TLSSTORM_RECEIVER_* included: key
    types, intermediates, the root to issue from), issued for `hostname`, as PEM files: leaf
    then intermediates, and the leaf's key."""
    settings = ReceiverSettings(hostname=hostname, cert_names=[hostname, *(names or [])])
    served = server_certificate(settings).served
    cert, key = folder / "cert.pem", folder / "key.pem"
    cert.write_bytes(served.cert_pem)
    key.write_bytes(served.key_pem)
    key.chmod(0o600)
    return cert, key


def _meter(name: str, address: str, port: int, telemetry: dict[str, str],
           **watch: str) -> Child:
    env = {**telemetry, "TLSSTORM_METER_TARGET": address, "TLSSTORM_METER_HTTP_PORT": str(port),
           **{f"TLSSTORM_METER_{key.upper()}": value for key, value in watch.items()}}
    return Child(f"{name} meter", tlsstorm_command("meter"),
                 f"http://127.0.0.1:{port}/readyz", env=env)


def local_target(name: str, smtp_port: int, meter_port: int,
                 telemetry: dict[str, str]) -> LocalTarget:
    """Postfix or Exim on a loopback port, with its meter; SystemExit saying what is missing
    when this machine cannot run it."""
    address = f"127.0.0.1:{smtp_port}"
    meter_url = f"http://127.0.0.1:{meter_port}"
    files = tempfile.TemporaryDirectory(prefix=f"tlsstorm-{name}-")
    folder = Path(files.name)
    if name == "postfix":
        if os.geteuid() != 0 or shutil.which("postfix") is None:
            raise SystemExit("the local Postfix target needs root (Postfix's master runs as "
                             "root) and Debian's postfix package (make system-deps)")
        cert, key = certificate_files("postfix.tlsstorm.test", folder)
        server = Child("postfix", [*pinned(), "bash", str(SCRIPTS / "postfix-sink.sh"), "run",
                                   str(smtp_port), str(cert), str(key)],
                       f"smtp://{address}", env={"TLSSTORM_POSTFIX_NAME": POSTFIX_INSTANCE})
        meter = _meter(name, address, meter_port, telemetry,
                       pid_file=f"/var/spool/{POSTFIX_INSTANCE}/pid/master.pid")
        return LocalTarget(name, address, meter_url, [server, meter], files)
    if name == "exim":
        if shutil.which("docker") is None:
            raise SystemExit("the local Exim target runs in a container: it needs Docker "
                             "(Debian: docker.io; scripts/dockerd.sh starts the engine)")
        cert, key = certificate_files("exim.tlsstorm.test", folder)
        pid_file = folder / "exim.pid"
        server = Child("exim", ["bash", str(SCRIPTS / "exim-target.sh"), "run", str(smtp_port),
                                str(cert), str(key)], f"smtp://{address}",
                       env={"TLSSTORM_EXIM_PID_FILE": str(pid_file),
                            **({"TLSSTORM_EXIM_CPUSET": target_cpus()} if target_cpus()
                               else {})})
        # The container's cgroup: Exim's reception processes ignore SIGCHLD, so the CPU of
        # its delivery processes is in no process's count, only in the cgroup's.
        meter = _meter(name, address, meter_port, telemetry, cgroup_of_pid_file=str(pid_file))
        return LocalTarget(name, address, meter_url, [server, meter], files)
    raise SystemExit(f"no local target {name!r}: choose one of {', '.join(LOCAL_TARGETS)}, or "
                     "name your own server as HOST:PORT with its meter's URL")
