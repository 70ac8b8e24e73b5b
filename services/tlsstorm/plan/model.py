"""The cost model a plan is built on, from measurements only: a sweep's saved results (and a
mitigation matrix's), never constants in code. It names its source, its fit and the machine."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

from tlsstorm.plan.fit import ScalingFit, fit_scaling
from tlsstorm.plan.latency import LatencyCurve, fit_latency


class ModelError(ValueError):
    """The results given cannot make a model; the text says what to run instead."""


@dataclass(frozen=True)
class Mitigation:
    """A setting measured by `tlsstorm sweep --matrix`, against the matrix's baseline row."""

    key: str
    label: str
    plain_ms: float
    tls_ms: float
    per_connection: int = 1  # messages per connection the row sent

    def cost_ms(self, ratio: float) -> float:
        return self.plain_ms * (1 - ratio) + self.tls_ms * ratio


@dataclass(frozen=True)
class CostModel:
    source: str
    machine: dict[str, Any] | None
    fit: ScalingFit  # the receiver process's CPU against rate and TLS ratio
    size: int  # message size the waves carried
    processing_cpu_us: int  # per-message work the receiver did besides SMTP while measured
    bytes_in: tuple[float, float]  # per message, to the server: plain, STARTTLS
    bytes_out: tuple[float, float]  # per message, from the server
    latency: LatencyCurve | None
    mitigations: list[Mitigation] = field(default_factory=list)
    baseline: Mitigation | None = None
    server: str = "the receiver"  # whose CPU: the receiver's, or the metered server's
    # The busiest the waves kept the server (share of its cores): past it, a plan extrapolates.
    highest_load: float | None = None

    def saving(self, mitigation: Mitigation, ratio: float) -> float:
        """Share of the receiver's CPU the mitigation saved at that ratio, in the matrix."""
        baseline = self.baseline.cost_ms(ratio) if self.baseline else 0.0
        return 1 - mitigation.cost_ms(ratio) / baseline if baseline else 0.0

    def per_connection_factor(self, mode_ratio: float, per_connection: int) -> float:
        """What CPU per message becomes with `per_connection` messages per connection, as
        a share of one per connection: the matrix's batch row against its baseline splits
        each mode's cost into a part per session (connection, EHLO, handshake) and a part
        per message. Raises ModelError without that row."""
        if per_connection == 1:
            return 1.0
        batch = next((m for m in self.mitigations if m.key == "batch"), None)
        if batch is None or self.baseline is None or batch.per_connection < 2:
            raise ModelError("messages per connection other than 1 need the matrix's batch row "
                             "(tlsstorm sweep --matrix baseline,batch, then --matrix "
                             "results/matrix/matrix.json)")
        measured_k = batch.per_connection
        factors = []
        for single, batched in ((self.baseline.plain_ms, batch.plain_ms),
                                (self.baseline.tls_ms, batch.tls_ms)):
            per_session = (single - batched) * measured_k / (measured_k - 1)
            share = min(max(per_session / single, 0.0), 1.0) if single else 0.0
            factors.append(1 - share * (1 - 1 / per_connection))
        return factors[0] * (1 - mode_ratio) + factors[1] * mode_ratio

    def describe(self) -> dict[str, Any]:
        return {"source": self.source, "server": self.server, "machine": self.machine,
                "fit": self.fit.as_dict(),
                "size": self.size, "processing_cpu_us": self.processing_cpu_us,
                "bytes_in_per_message": {"plain": self.bytes_in[0], "starttls": self.bytes_in[1]},
                "bytes_out_per_message": {"plain": self.bytes_out[0],
                                          "starttls": self.bytes_out[1]},
                "latency": self.latency.as_dict() if self.latency else None,
                "highest_load_measured": (None if self.highest_load is None
                                          else round(self.highest_load, 3)),
                "mitigations": [m.key for m in self.mitigations]}


def from_sweep(path: Path, matrix: Path | None = None) -> CostModel:
    """A model from `tlsstorm sweep`'s sweep.json (and `--matrix`'s matrix.json)."""
    data = _read(path, "tlsstorm sweep --scenario rustock --capacity-rates 100 200 400")
    model = from_sweep_data(data, str(path))
    if matrix is None:
        return model
    rows = _read(matrix, "tlsstorm sweep --matrix all").get("rows") or []
    mitigations = [Mitigation(row["key"], row["label"], row["plain_ms"], row["tls_ms"],
                              int(row.get("per_connection", 1))) for row in rows]
    baseline = next((m for m in mitigations if m.key == "baseline"), None)
    if baseline is None:
        raise ModelError(f"{matrix}: no baseline row to measure savings against "
                         "(tlsstorm sweep --matrix baseline,<rows>)")
    return replace(model, mitigations=[m for m in mitigations if m is not baseline],
                   baseline=baseline)


def from_sweep_data(data: dict[str, Any], source: str) -> CostModel:
    """A model from a sweep's JSON (a file's, or the waves a collector exports as one)."""
    waves = data.get("waves") or []
    steps = [step for found in (data.get("capacity_steps") or {}).values() for step in found]
    try:
        fits = fits_from_waves([*waves, *steps])
    except (KeyError, ValueError) as error:
        raise ModelError(f"{source}: {error}; a model needs waves at two or more TLS ratios "
                         "(tlsstorm sweep --scenario rustock --capacity-rates 100 200 400)"
                         ) from None
    settings = data.get("settings", {})
    return CostModel(
        source=source, machine=data.get("machine"), fit=fits.cpu, server=server_named(waves),
        size=int(settings.get("size", 2048)),
        processing_cpu_us=int(settings.get("processing_cpu_us", 0)),
        bytes_in=(_per_message(waves, "plain", "in", source),
                  _per_message(waves, "tls", "in", source)),
        bytes_out=(_per_message(waves, "plain", "out", source),
                   _per_message(waves, "tls", "out", source)),
        latency=fits.latency, highest_load=fits.highest_load)


def _read(path: Path, how: str) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except OSError as error:
        raise ModelError(f"cannot read {path}: {error.strerror}; make one with: {how}") from None
    except json.JSONDecodeError as error:
        raise ModelError(f"{path} is not JSON ({error.msg}, line {error.lineno})") from None


def receiver_cores(wave: dict[str, Any]) -> float:
    """The server's cores busy over a wave."""
    return wave["achieved_rate"] * wave["process_cpu_ms_per_message"] / 1000


def server_cores(wave: dict[str, Any]) -> float:
    """The cores the server could use: the receiver's one event loop has one; a metered
    server (many processes) its limit, as its meter read it."""
    used = wave.get("receiver_cpu") or {}
    if wave.get("measured_by") == "meter" and used.get("limit_cores"):
        return float(used["limit_cores"])
    return 1.0


def load_of(wave: dict[str, Any]) -> float:
    """The share of the server's cores busy over a wave: the latency curve's load."""
    return receiver_cores(wave) / server_cores(wave)


def server_named(waves: list[dict[str, Any]]) -> str:
    metered = next((wave for wave in waves if wave.get("measured_by") == "meter"), None)
    return f"the server at {metered['target']}" if metered else "the receiver"


class Fits(NamedTuple):
    cpu: ScalingFit
    latency: LatencyCurve | None
    highest_load: float  # the busiest wave's share of the server's cores


def fits_from_waves(waves: list[dict[str, Any]]) -> Fits:
    """The CPU fit and the latency curve from waves as a sweep saves them (TLS ratio,
    achieved rate, process CPU per message, session p99). Generator-limited waves measured
    the sender: no part of a model."""
    measured = [wave for wave in waves if "sender" not in wave.get("limited_by", [])]
    fit = fit_scaling([(wave["tls_ratio"], wave["achieved_rate"], receiver_cores(wave))
                       for wave in measured])
    latency = fit_latency([(load_of(wave), wave["tls_ratio"], wave.get("plain_session_p99_ms"),
                            wave.get("tls_session_p99_ms"), wave.get("session_p99_ms"))
                           for wave in measured])
    if latency:  # the load a plan asks a p99 at is the CPU fit's, as wrong as it is here
        latency = replace(latency, load_error=_largest_error(fit, measured))
    return Fits(fit, latency, max(load_of(wave) for wave in measured))


def _largest_error(fit: ScalingFit, waves: list[dict[str, Any]]) -> float:
    """The CPU fit's largest error, relative, over the waves it was fitted on."""
    errors = [abs(receiver_cores(wave) / fitted - 1) for wave in waves
              if (fitted := fit.cores(wave["achieved_rate"], wave["tls_ratio"])) > 0]
    return max(errors, default=0.0)


def _per_message(waves: list[dict[str, Any]], mode: str, direction: str, path: str) -> float:
    """Bytes per message of a mode in a direction (one message per session in a sweep)."""
    values = []
    for wave in waves:
        both, out = wave.get(f"{mode}_bytes_per_session"), wave.get(f"{mode}_out_bytes_per_session")
        if both is None or out is None:
            continue
        values.append(out if direction == "out" else both - out)
    if not values:
        raise ModelError(f"{path} has no {mode} session with bytes in and out; re-run the "
                         "sweep with this version, with waves at 0 and above 0 TLS ratios")
    return statistics.fmean(values)
