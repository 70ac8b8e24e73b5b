"""The knobs of a spam wave in Locust: command-line flags, LOCUST_* env vars, web UI fields.

The TLS ratio lives in `environment.parsed_options.tls_ratio`. Shapes change it while a test
runs; in distributed mode the master sends the change to every worker.
"""

from __future__ import annotations

import itertools
import logging
import os

from locust import User, constant_pacing, events
from locust.env import Environment
from locust.rpc import Message
from locust.runners import MasterRunner, WorkerRunner

from tlsstorm.sender.profiles import ProfileMix
from tlsstorm.sender.waves import is_tls


def _targets(text: str) -> dict[str, str]:
    """TLSSTORM_TARGETS: name=host:port,... (the chart's and `tlsstorm up`'s servers)."""
    pairs = [part.split("=", 1) for part in text.split(",") if "=" in part]
    return {name.strip(): address.strip() for name, address in pairs}


TARGETS = _targets(os.environ.get("TLSSTORM_TARGETS", ""))
OPTIONS_MESSAGE = "tlsstorm-options"
OPTIONS_REQUEST = "tlsstorm-options-request"
# The options shapes change while a test runs (the rest are fixed when it starts).
LIVE_OPTIONS = ("tls_ratio", "wave_id")
logger = logging.getLogger(__name__)
_message_numbers = itertools.count()


@events.init_command_line_parser.add_listener
def add_wave_options(parser) -> None:
    parser.add_argument("--tls-ratio", type=float, default=0.3, env_var="LOCUST_TLS_RATIO",
                        include_in_web_ui=True,
                        help="share of messages sent with STARTTLS, 0 to 1")
    parser.add_argument("--message-size", type=int, default=2048,
                        env_var="LOCUST_MESSAGE_SIZE", include_in_web_ui=True,
                        help="message size in bytes")
    parser.add_argument("--per-connection", type=int, default=1,
                        env_var="LOCUST_PER_CONNECTION", include_in_web_ui=True,
                        help="messages per SMTP connection")
    parser.add_argument("--batch", type=int, default=10, env_var="LOCUST_BATCH",
                        include_in_web_ui=True,
                        help="SpamViaSender: connections per request to the sender, sent one "
                        "after another (the request's HTTP cost is shared by them)")
    parser.add_argument("--user-rate", type=float, default=0.0, env_var="LOCUST_USER_RATE",
                        include_in_web_ui=True,
                        help="messages a second each user sends, its requests paced to it (0: as "
                        "fast as it can); the wave's rate is this times the users")
    parser.add_argument("--tls-profiles", type=str, default="", env_var="LOCUST_TLS_PROFILES",
                        include_in_web_ui=True,
                        help="SpamViaSender: shares of the sender's TLS personalities over "
                        "STARTTLS connections, e.g. mta:0.3,bot-tls12:0.7 (empty: default)")
    if TARGETS:
        # The release's servers, by name: the web UI shows a list (the receiver first).
        parser.add_argument("--target", type=str, default=next(iter(TARGETS)),
                            choices=list(TARGETS), env_var="LOCUST_TARGET",
                            include_in_web_ui=True,
                            help="the server the sender aims at: " + ", ".join(
                                f"{name} ({address})" for name, address in TARGETS.items()))
    else:
        parser.add_argument("--target", type=str, default="", env_var="LOCUST_TARGET",
                            include_in_web_ui=True,
                            help="SMTP host:port; empty means the sender's own default target")
    parser.add_argument("--wave-id", type=str, default="", env_var="LOCUST_WAVE_ID",
                        include_in_web_ui=True,
                        help="label for these messages in the receiver's and collector's stats")
    parser.add_argument("--wave-period", type=float, default=60.0, env_var="LOCUST_WAVE_PERIOD",
                        include_in_web_ui=True, help="SpamWaves: seconds from burst to burst")
    parser.add_argument("--wave-burst", type=float, default=20.0, env_var="LOCUST_WAVE_BURST",
                        include_in_web_ui=True, help="SpamWaves: seconds each burst lasts")
    parser.add_argument("--phase-seconds", type=float, default=60.0,
                        env_var="LOCUST_PHASE_SECONDS", include_in_web_ui=True,
                        help="RustockTimeline: seconds per phase (20% -> 30% -> 70% TLS)")
    parser.add_argument("--smtp-target", type=str, default="127.0.0.1:2525",
                        env_var="LOCUST_SMTP_TARGET", include_in_web_ui=True,
                        help="DirectSmtpBot: the receiver's SMTP host:port")
    parser.add_argument("--max-messages", type=int, default=0, env_var="LOCUST_MAX_MESSAGES",
                        help="stop the run after this many messages (0: no limit); each Locust "
                        "process counts its own, so with workers the limit is per worker")
    parser.add_argument("--api-token", type=str, default=os.environ.get("TLSSTORM_API_TOKEN", ""),
                        is_secret=True, help="bearer token for the sender (TLSSTORM_API_TOKEN)")


def target_address(environment: Environment) -> str:
    """Where the sender should aim: the chosen server's address (a name from the list), an
    address typed in, or "" for the sender's own default."""
    chosen = environment.parsed_options.target.strip()
    return TARGETS.get(chosen, chosen)


def paced(user: User) -> float:
    """The users' wait_time: none, or with --user-rate the pause after a task that makes its
    `messages_in_task` take 1/rate s each, the task's own time included (Locust's
    constant_pacing), so a wave runs at users x rate whatever the messages cost."""
    rate = float(user.environment.parsed_options.user_rate or 0)
    if rate <= 0:
        return 0.0
    return constant_pacing(user.messages_in_task / rate)(user)


def next_is_tls(environment: Environment) -> bool:
    """Spread STARTTLS evenly over this process's messages at the current ratio."""
    ratio = min(max(float(environment.parsed_options.tls_ratio), 0.0), 1.0)
    return is_tls(next(_message_numbers), ratio)


_mixes: dict[str, ProfileMix] = {}


def next_profile(environment: Environment) -> str:
    """The next STARTTLS connection's TLS personality, by --tls-profiles' shares (exact over
    this process's connections); "default" when none are set."""
    text = environment.parsed_options.tls_profiles.strip()
    if not text:
        return "default"
    if text not in _mixes:
        shares = {}
        for part in text.split(","):
            name, _, share = part.partition(":")
            try:
                shares[name.strip()] = float(share or 1)  # an unknown name: the sender says so
            except ValueError:
                raise ValueError(f"--tls-profiles: {share!r} in {part!r} is not a share (give "
                                 "name:share, e.g. mta:0.3,bot-tls12:0.7)") from None
        _mixes[text] = ProfileMix(shares)
    return _mixes[text].next()


def set_wave_options(environment: Environment, **changes) -> None:
    """Change options while a test runs, here and on every worker."""
    unknown = set(changes) - set(LIVE_OPTIONS)
    if unknown:
        raise ValueError(f"only {LIVE_OPTIONS} change while a test runs, not {sorted(unknown)}")
    vars(environment.parsed_options).update(changes)
    if isinstance(environment.runner, MasterRunner):
        environment.runner.send_message(OPTIONS_MESSAGE, changes)


def _apply_option_changes(environment: Environment, msg: Message, **_kwargs) -> None:
    """A worker takes the master's changes (Locust calls listeners with `environment`, `msg`)."""
    vars(environment.parsed_options).update(msg.data)
    logger.info("wave options from the master: %s",
                ", ".join(f"{name}={value}" for name, value in sorted(msg.data.items())))


def _answer_with_current_options(environment: Environment, msg: Message, **_kwargs) -> None:
    """The master tells a worker that just set up its listener what the options are now."""
    current = {name: getattr(environment.parsed_options, name) for name in LIVE_OPTIONS}
    environment.runner.send_message(OPTIONS_MESSAGE, current, client_id=msg.node_id)


@events.init.add_listener
def listen_for_option_changes(environment: Environment, **_kwargs) -> None:
    """Workers follow the master's option changes, including those made before they listened.

    A worker is connected, and handles the master's messages, before Locust fires `init`: a
    worker joining mid-run can miss a change sent in between (Locust drops a message with no
    listener). So once listening, it asks the master for the current options.
    """
    runner = environment.runner
    if isinstance(runner, MasterRunner):
        runner.register_message(OPTIONS_REQUEST, _answer_with_current_options)
    elif isinstance(runner, WorkerRunner):
        runner.register_message(OPTIONS_MESSAGE, _apply_option_changes)
        runner.send_message(OPTIONS_REQUEST)
