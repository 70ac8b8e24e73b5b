"""Locust as the botnet's command and control: spam waves through the tlsstorm sender.

Pick a user class and a shape in the web UI (`--class-picker`); set the TLS ratio, message
size, messages per connection and target under "Custom parameters".

- SpamViaSender: each task asks the sender's /v1/batch for the bot's next --batch connections
  (one after another, each STARTTLS or plain by the TLS ratio); every message the sender
  measured becomes a row of its own in Locust's statistics.
- DirectSmtpBot: a bot without the sender, stdlib smtplib under gevent, for comparison.
"""

from __future__ import annotations

import os

from locust import HttpUser, events, task
from locust.env import Environment
from options import next_is_tls, next_profile, paced, target_address
from reporting import MessageBudget, report_sender_result
from sender_watch import add_sender_tab  # noqa: F401 (the web UI's "Sender CPU" tab)
from shapes import ordered_shapes, preselect_in_web_ui
from smtp_bot import DirectSmtpBot  # noqa: F401 (a pickable user class)
from worker_cpu import start_cpu_reports  # noqa: F401 (each worker's CPU to the collector)

from tlsstorm.common.heap import freeze_startup_objects


class SpamViaSender(HttpUser):
    """A bot that drives the tlsstorm sender; Locust's --otel traces flow through it."""

    wait_time = paced
    messages_in_task = 0

    def on_start(self) -> None:
        self.budget = MessageBudget.of(self.environment)
        token = self.environment.parsed_options.api_token
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    @task
    def send_spam(self) -> None:
        options = self.environment.parsed_options
        per_connection = max(1, options.per_connection)
        count = self.messages_in_task = self.budget.take(max(1, options.batch) * per_connection)
        connections = -(-count // per_connection)
        tls = [next_is_tls(self.environment) for _ in range(connections)]
        payload = {"tls": tls, "count": count, "size": options.message_size,
                   "per_connection": per_connection}
        if options.tls_profiles:
            payload["profiles"] = [next_profile(self.environment) if flag else "default"
                                   for flag in tls]
        if target := target_address(self.environment):
            payload["target"] = target
        if options.wave_id:
            payload["wave"] = options.wave_id
        with self.client.post("/v1/batch", json=payload, headers=self.headers,
                              name="POST /v1/batch", catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"{response.status_code}: {response.text[:200]}")
                return
            for result in response.json()["results"]:
                report_sender_result(self.environment, result)


# The shape named by TLSSTORM_LOAD_SHAPE (constant, waves, rustock) is the default one, first in
# the web UI's list; every shape stays pickable there.
DEFAULT_SHAPE = os.environ.get("TLSSTORM_LOAD_SHAPE", "constant")
globals().update(ordered_shapes(DEFAULT_SHAPE))


@events.init.add_listener
def preselect_default_shape(environment: Environment, **_kwargs) -> None:
    preselect_in_web_ui(environment, DEFAULT_SHAPE)


@events.init.add_listener
def freeze_what_locust_built(**_kwargs) -> None:
    """Locust freezes its heap only when it forks workers itself (--processes); our workers are
    processes of their own, and a generator must not stall on its own collections."""
    freeze_startup_objects()
