"""Jaeger beside the local stack: the chart's own Jaeger config, run by a binary built here
(scripts/go-build.sh jaeger), so the embedded default shows the traces a cluster user sees."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

from tlsstorm.localstack.processes import CHECKOUT

CONFIG_TEMPLATE = CHECKOUT / "charts" / "tlsstorm" / "files" / "jaeger-config.yaml"
# The chart's jaeger.maxTraces (a test keeps the two equal).
MAX_TRACES = 50_000
OTLP_HTTP_PORT = 4318
UI_PORT = 16686
HEALTH_PORT = 13133


def jaeger_binary() -> Path | None:
    """TLSSTORM_JAEGER, else `jaeger` on PATH, else the one scripts/go-build.sh put in .tools."""
    configured = os.environ.get("TLSSTORM_JAEGER")
    if configured:
        if not Path(configured).is_file():
            raise SystemExit(f"TLSSTORM_JAEGER={configured}: no such file")
        return Path(configured)
    found = shutil.which("jaeger")
    if found:
        return Path(found)
    built = CHECKOUT / ".tools" / "bin" / "jaeger"
    return built if built.is_file() else None


def render_config() -> str:
    """The chart's config as the chart fills it in, listening on loopback only."""
    bound = int(os.environ.get("TLSSTORM_JAEGER_MAX_TRACES", MAX_TRACES))
    return (CONFIG_TEMPLATE.read_text().replace("@HOST@", "127.0.0.1")
            .replace("@MAX_TRACES@", str(bound)))


def config_file(text: str) -> Path:
    """A file Jaeger reads at start; removed when this process exits."""
    descriptor, name = tempfile.mkstemp(prefix="tlsstorm-jaeger-", suffix=".yaml")
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
    atexit.register(Path(name).unlink, missing_ok=True)
    return Path(name)


def command(binary: Path, config: Path) -> list[str]:
    return [str(binary), "--config", str(config)]


def health_url() -> str:
    """What the chart's probes ask (healthcheckv2)."""
    return f"http://127.0.0.1:{HEALTH_PORT}/status"


def ui_url() -> str:
    return f"http://127.0.0.1:{UI_PORT}/"


def api_example() -> str:
    """Where a user finds the traces that began in Locust (the query API answers JSON)."""
    return f"http://127.0.0.1:{UI_PORT}/api/traces?service=locust&limit=20"


def otlp_endpoint() -> str:
    return f"http://127.0.0.1:{OTLP_HTTP_PORT}"
