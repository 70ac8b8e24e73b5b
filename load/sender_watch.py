"""The sender's CPU beside Locust's own: a "Sender CPU" tab in the web UI, one row per sender
replica, and a warning in the log (where Locust puts its own CPU warning) when a replica is
busy: throttled, or above 85% of its limit, so that what Locust shows is generator-limited."""

from __future__ import annotations

import json
import logging
import time

import gevent
import requests
from flask import Response, request
from locust import events
from locust.env import Environment
from locust.runners import WorkerRunner

TAB = "sender-cpu"
POLL_S = 2.0
FORGET_AFTER_S = 30.0  # a replica not seen for this long has gone (scaled down, restarted)
COLUMNS = (("sender", "Sender replica"), ("engine", "Engine"), ("cores", "Cores used"),
           ("limit", "Limit"), ("share", "Share of limit"), ("throttled", "Throttled (s)"),
           ("state", "State"))
logger = logging.getLogger(__name__)


class SenderWatch:
    """Polls the sender's /v1/stats (each poll may reach another replica behind a Service)."""

    def __init__(self, environment: Environment) -> None:
        self.environment = environment
        self.replicas: dict[str, dict[str, object]] = {}
        self.warned: set[str] = set()

    def poll_forever(self) -> None:
        while True:
            self.poll_once()
            gevent.sleep(POLL_S)

    def poll_once(self) -> None:
        host = self.environment.host
        if not host:
            return
        try:
            stats = requests.get(f"{host.rstrip('/')}/v1/stats", timeout=POLL_S).json()
            cpu, instance = stats["cpu"], stats["instance"]
        except (requests.RequestException, ValueError, KeyError, TypeError):
            return  # not a tlsstorm sender, or not up yet: nothing to show
        recent = cpu.get("recent")
        if recent is None:
            return
        busy = bool(recent["busy"])
        # A replica of an older release does not say; the reference engine costs several times
        # the native one's CPU per message, so a busy replica on it says why.
        engine = stats.get("engine", {}).get("name", "?")
        state = "ok"
        if busy:
            state = "BUSY: results are generator-limited"
            if engine == "reference":
                state += " (reference engine)"
        self.replicas[instance] = {
            "sender": instance, "engine": engine, "cores": f"{recent['process_cores']:.2f}",
            "limit": f"{cpu['limit_cores']:g} ({cpu['limit_source']})",
            "share": f"{recent['share_of_limit'] or 0:.0%}",
            "throttled": f"{recent['throttled_seconds']:g}",
            "state": state,
            "seen": time.monotonic()}
        if busy and instance not in self.warned:
            self.warned.add(instance)
            logger.warning("sender %s is busy (%.2f cores, %s of its %g-core limit, throttled "
                           "%g s): what this run shows is limited by the sender, not the "
                           "receiver; give it more CPU or replicas", instance,
                           recent["process_cores"], self.replicas[instance]["share"],
                           cpu["limit_cores"], recent["throttled_seconds"])

    def rows(self) -> list[dict[str, object]]:
        now = time.monotonic()
        for instance in [name for name, row in self.replicas.items()
                         if now - float(row["seen"]) > FORGET_AFTER_S]:
            del self.replicas[instance]
        return [{key: value for key, value in row.items() if key != "seen"}
                for _, row in sorted(self.replicas.items())]


@events.init.add_listener
def add_sender_tab(environment: Environment, **_kwargs) -> None:
    """On the process that serves the web UI (the master, or a lone Locust)."""
    if environment.web_ui is None or isinstance(environment.runner, WorkerRunner):
        return
    watch = SenderWatch(environment)
    environment.web_ui.template_args["extended_tabs"] = [{"title": "Sender CPU", "key": TAB}]
    environment.web_ui.template_args["extended_tables"] = [
        {"key": TAB, "structure": [{"key": key, "title": title} for key, title in COLUMNS]}]

    @environment.web_ui.app.after_request
    def add_sender_rows(response: Response) -> Response:
        if request.path != "/stats/requests" or not response.is_json:
            return response
        body = response.get_json()
        body["extended_stats"] = [{"key": TAB, "data": watch.rows()}]
        response.set_data(json.dumps(body))
        return response

    gevent.spawn(watch.poll_forever)
