"""Prints a load shape's ticks at given run times, as JSON (a separate process: importing
Locust monkey-patches the interpreter, which the test process must not suffer).

Usage: python shape_ticks.py SHAPE '{"num_users": 10, ...}' 0 4.9 5 ...
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "load"))

import shapes  # found through the path to load/ above


def main() -> None:
    name, options, *times = sys.argv[1:]
    defaults = {"num_users": 10, "spawn_rate": 5, "run_time": None, "wave_period": 60.0,
                "wave_burst": 20.0, "phase_seconds": 60.0, "tls_ratio": 0.3, "wave_id": ""}
    parsed = SimpleNamespace(**{**defaults, **json.loads(options)})
    shape = shapes.SHAPES[name]()
    shape.runner = SimpleNamespace(environment=SimpleNamespace(parsed_options=parsed,
                                                               runner=None))
    ticks = []
    for at in map(float, times):
        shape.get_run_time = lambda at=at: at
        ticks.append({"at": at, "tick": shape.tick(), "tls_ratio": parsed.tls_ratio,
                      "wave_id": parsed.wave_id})
    print(json.dumps(ticks))


if __name__ == "__main__":
    main()
