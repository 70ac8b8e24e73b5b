"""Repeated measurements as a mean with a 95% confidence interval: on a shared VM one run of a
wave or a benchmark moves by +-25%, so one figure alone says little."""

from __future__ import annotations

import statistics

# Two-sided 95% quantiles of Student's t by degrees of freedom (1..10); 1.96 beyond.
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)


def t95(degrees: int) -> float:
    """The two-sided 95% quantile of Student's t with that many degrees of freedom."""
    return _T95[degrees - 1] if degrees <= len(_T95) else 1.96


def mean_ci(values: list[float]) -> tuple[float, float]:
    """(mean, half-width of its 95% confidence interval; 0 for a single value)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, t95(len(values) - 1) * statistics.stdev(values) / len(values) ** 0.5


def shown(values: list[float], unit: str = "", digits: int = 0) -> str:
    """'1,234 +- 56 us' (n=5), or the single value when there is one."""
    mean, half = mean_ci(values)
    text = f"{mean:,.{digits}f}"
    if len(values) > 1:
        text += f" +- {half:,.{digits}f}"
    return text + (f" {unit}" if unit else "")
