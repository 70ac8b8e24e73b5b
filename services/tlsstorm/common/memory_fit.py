"""Memory per concurrent session, fitted from RSS samples against the sessions open in each mode.

Shared by the receiver (its own samples) and the collector (the receivers' per-second samples).
"""

from __future__ import annotations

import collections


class MemorySamples:
    """RSS against concurrent sessions (plain, TLS), a few times a second since the last reset,
    for memory per concurrent session: RSS = base + plain_bytes x plain + tls_bytes x tls."""

    def __init__(self, keep: int = 7200) -> None:
        self.samples: collections.deque[tuple[int, int, int]] = collections.deque(maxlen=keep)

    def add(self, rss: int, plain: int, tls: int) -> None:
        self.samples.append((rss, plain, tls))

    def clear(self) -> None:
        self.samples.clear()

    def fit(self) -> dict[str, float | None]:
        """Least squares over the samples; a mode whose concurrency never varied has no figure
        (a two-regressor fit: numpy for one 3x3 system would be the only numpy here)."""
        varying = [index for index in (1, 2)
                   if len({sample[index] for sample in self.samples}) > 1]
        result: dict[str, float | None] = {"plain": None, "tls": None}
        if not varying:
            return result
        rows = [[1.0, *(float(sample[i]) for i in varying)] for sample in self.samples]
        targets = [float(sample[0]) for sample in self.samples]
        size = len(rows[0])
        normal = [[sum(row[i] * row[j] for row in rows) for j in range(size)]
                  for i in range(size)]
        right = [sum(row[i] * target for row, target in zip(rows, targets, strict=True))
                 for i in range(size)]
        solution = _solve(normal, right)
        if solution is None:
            return result
        for position, index in enumerate(varying, start=1):
            # A negative slope means RSS did not follow the sessions (the allocator kept what
            # earlier sessions freed): no figure rather than a wrong one.
            if solution[position] > 0:
                result["plain" if index == 1 else "tls"] = round(solution[position])
        return result


def _solve(matrix: list[list[float]], right: list[float]) -> list[float] | None:
    """Gaussian elimination with partial pivoting; None when the system is singular."""
    size = len(right)
    augmented = [[*row, value] for row, value in zip(matrix, right, strict=True)]
    for column in range(size):
        pivot = max(range(column, size), key=lambda row: abs(augmented[row][column]))
        if abs(augmented[pivot][column]) < 1e-9:
            return None
        augmented[column], augmented[pivot] = augmented[pivot], augmented[column]
        for row in range(size):
            if row != column:
                factor = augmented[row][column] / augmented[column][column]
                augmented[row] = [a - factor * b for a, b in zip(augmented[row],
                                                                  augmented[column],
                                                                  strict=True)]
    return [augmented[i][size] / augmented[i][i] for i in range(size)]
