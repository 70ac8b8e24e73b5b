"""load/locustfile.py for a worker whose start-up is slow: its `init` takes SLOW_INIT_S seconds
before tlsstorm's listeners are set up, while Locust already delivers the master's messages."""

from __future__ import annotations

import os

import gevent
from locust import events


@events.init.add_listener  # registered before load/options.py's listener, so it runs first
def slow_start(**_kwargs) -> None:
    gevent.sleep(float(os.environ["SLOW_INIT_S"]))


from locustfile import *  # noqa: E402, F403 (the real user classes and shapes, from load/)
