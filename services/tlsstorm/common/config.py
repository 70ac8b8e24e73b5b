"""Settings for every service: command-line flags over TLSSTORM_* env vars over defaults."""

from __future__ import annotations

import argparse
import ipaddress
import sys
from pathlib import Path
from typing import Annotated, Literal, get_args, get_origin

from pydantic import (
    AliasChoices,
    BeforeValidator,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from tlsstorm.common.address import split_host_port

KeyType = Literal["rsa2048", "rsa3072", "rsa4096", "ecdsa-p256", "ecdsa-p384"]
TlsVersionName = Literal["1.2", "1.3"]
Port = Annotated[int, Field(ge=0, le=65535)]
# One token for every service (TLSSTORM_API_TOKEN, not a TLSSTORM_<SERVICE>_ variable).
ApiToken = Annotated[str | None, Field(
    validation_alias=AliasChoices("api_token", "TLSSTORM_API_TOKEN"),
    description="bearer token required by endpoints that start load or change state")]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _split_commas(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


def _networks(value: object) -> object:
    """A comma list (or list) of addresses or CIDRs, parsed once, host bits allowed."""
    entries = _split_commas(value)
    if not isinstance(entries, list):
        return entries
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ValueError(f"{entry!r} is not an address or CIDR") from None
    return networks


# Env values are comma lists, not JSON: NoDecode keeps pydantic-settings from parsing them.
CommaList = Annotated[list[str], NoDecode, BeforeValidator(_split_commas)]
NetworkList = Annotated[list[Network], NoDecode, BeforeValidator(_networks)]


class ReceiverSettings(BaseSettings):
    """The SMTP sink: where it listens and how its TLS looks to clients."""

    model_config = SettingsConfigDict(env_prefix="TLSSTORM_RECEIVER_", extra="forbid")

    host: str = Field("127.0.0.1", description="address both listeners bind (0.0.0.0 in a pod)")
    smtp_port: Port = Field(2525, description="SMTP port (STARTTLS offered)")
    http_port: Port = Field(8025, description="control/stats API port")
    hostname: str = Field("receiver.tlsstorm.test", description="SMTP greeting name and cert CN")
    cert_shape: Literal["chain", "self-signed"] = Field(
        "chain", description="generated certificate: a CA-issued leaf served with its "
        "intermediates, as mail servers present, or one self-signed certificate")
    cert_key_type: KeyType = Field("rsa2048", description="key of the generated (leaf) "
                                   "certificate")
    cert_intermediates: int = Field(1, ge=1, le=4, description="intermediate CAs served "
                                    "after the leaf (chain shape)")
    cert_intermediate_key_type: KeyType = Field("rsa2048", description="key of each "
                                                "intermediate CA (chain shape)")
    cert_root_key_type: KeyType = Field("rsa4096", description="key of the generated root CA "
                                        "(chain shape; it signs the top intermediate)")
    cert_names: CommaList = Field(
        default_factory=list, description="more DNS names or IPs in the certificate, besides "
        "--hostname, localhost and 127.0.0.1")
    ca_cert_file: Path | None = Field(None, description="PEM root CA to issue the chain from "
                                      "(generated if unset; the chart keeps one in a Secret)")
    ca_key_file: Path | None = Field(None, description="PEM private key for --ca-cert-file")
    cert_file: Path | None = Field(None, description="PEM certificate, leaf first, then its "
                                   "intermediates: served instead of a generated one")
    key_file: Path | None = Field(None, description="PEM private key for --cert-file")
    tls_min_version: TlsVersionName = Field("1.2", description="lowest TLS version accepted")
    tls_max_version: TlsVersionName = Field("1.3", description="highest TLS version accepted")
    session_tickets: bool = Field(True, description="issue session tickets (resumption)")
    require_starttls: bool = Field(False, description="refuse MAIL before STARTTLS (530)")
    handshake_timeout_s: float = Field(10.0, gt=0, description="TLS handshake deadline")
    idle_timeout_s: float = Field(30.0, gt=0, description="close a session idle this long")
    data_timeout_s: float = Field(60.0, gt=0, description="a whole DATA phase must end in this")
    max_message_bytes: int = Field(10 * 1024 * 1024, gt=0, description="SIZE limit (552 over)")
    drain_delay_s: float = Field(0.0, ge=0, le=300, description="on SIGTERM, how long it still "
                                 "serves while not ready (the chart: time for a Service to drop "
                                 "it)")
    drain_timeout_s: float = Field(10.0, gt=0, le=300, description="on SIGTERM, how long open "
                                   "transactions get to finish before their connections are cut")
    max_recipients: int = Field(100, ge=1, description="RCPT per message (452 over)")
    max_connections: int = Field(2000, ge=1, description="open sessions at most (421 over)")
    max_handshakes: int = Field(256, ge=1, description="TLS handshakes in progress at most "
                                "(STARTTLS answered 454 over)")
    memory_limit_bytes: int | None = Field(
        None, ge=16 * 1024 * 1024, description="memory the receiver may use; default: its "
        "cgroup's limit (memory.max / memory.limit_in_bytes), none without one")
    memory_budget_fraction: float = Field(
        0.8, gt=0, le=1, description="share of the memory limit sessions may fill; past it new "
        "connections get 421 and STARTTLS 454")
    session_memory_kib: int = Field(64, ge=1, description="memory reserved per open session")
    tls_session_memory_kib: int = Field(
        512, ge=1, description="memory reserved per TLS session (handshake and after)")
    refuse_starttls_from: NetworkList = Field(
        default_factory=list, description="CIDRs whose STARTTLS is answered 454 (they stay plain)")
    reject_from: NetworkList = Field(
        default_factory=list, description="CIDRs rejected with 554 at connect, before any TLS")
    gate_mode: Literal["off", "learn", "enforce"] = Field(
        "off", description="ClientHello gate: off; learn (fingerprint and count, refuse "
        "nothing); enforce (end denied handshakes with an alert before OpenSSL works)")
    gate_deny: CommaList = Field(default_factory=list, description="JA4 fingerprints the gate "
                                 "denies")
    gate_allow: CommaList = Field(default_factory=list, description="JA4 fingerprints the gate "
                                  "lets through; when set, every other one is denied")
    gate_require_sni: bool = Field(False, description="the gate denies hellos without SNI")
    gate_deny_below_tls13: bool = Field(False, description="the gate denies hellos offering "
                                        "TLS 1.2 at most")
    session_cpu: bool = Field(True, description="meter CPU time per session")
    processing_cpu_us: int = Field(0, ge=0, le=1_000_000, description="CPU work per message, "
                                   "standing in for spam/virus filtering")
    queue_fsync: bool = Field(False, description="write and fsync each message to a queue file "
                              "(in a worker thread), as an MTA queues it")
    api_token: ApiToken = None

    @field_validator("tls_max_version")
    @classmethod
    def _max_not_below_min(cls, value: str, info) -> str:
        minimum = info.data.get("tls_min_version")
        if minimum and float(value) < float(minimum):
            raise ValueError(f"tls_max_version {value} is below tls_min_version {minimum}")
        return value

    @field_validator("key_file")
    @classmethod
    def _key_with_cert(cls, value: Path | None, info) -> Path | None:
        if (value is None) != (info.data.get("cert_file") is None):
            raise ValueError("cert_file and key_file must be given together")
        return value

    @field_validator("ca_key_file")
    @classmethod
    def _ca_key_with_ca_cert(cls, value: Path | None, info) -> Path | None:
        if (value is None) != (info.data.get("ca_cert_file") is None):
            raise ValueError("ca_cert_file and ca_key_file must be given together")
        return value


class SenderSettings(BaseSettings):
    """The botnet emulator: where it may aim and how it identifies itself."""

    model_config = SettingsConfigDict(env_prefix="TLSSTORM_SENDER_", extra="forbid")

    host: str = Field("127.0.0.1", description="address the control API binds")
    http_port: Port = Field(8026, description="control API port")
    target: str = Field("127.0.0.1:2525", description="default SMTP target host:port")
    allowed_targets: CommaList = Field(
        default_factory=list,
        validation_alias=AliasChoices("allowed_targets", "TLSSTORM_ALLOWED_TARGETS"),
        description="comma list of host, host:port or CIDR; default: --target and loopback",
    )
    ca_file: Path | None = Field(None, description="CA bundle to verify the receiver (else any)")
    helo_name: str = Field("bot.tlsstorm.test", description="EHLO name")
    mail_from: str = Field("bot@tlsstorm.test", description="envelope sender")
    rcpt_to: str = Field("victim@receiver.tlsstorm.test", description="envelope recipient")
    timeout_s: float = Field(30.0, gt=0, description="per SMTP step and handshake")
    trace_commands: bool = Field(
        False, description="a span per SMTP command under smtp.send (more detail in traces; "
        "about 20% more sender CPU per plain message)")
    quick_ack: bool = Field(
        False, description="TCP_QUICKACK after each command is written, so replies are ACKed "
        "at once: no 40 ms delayed-ACK stalls against servers that answer in several "
        "segments (Postfix after STARTTLS)")
    max_concurrency: int = Field(256, ge=1, le=10_000, description="cap on wave concurrency")
    engine: Literal["auto", "native", "reference"] = Field(
        "auto", description="who holds the SMTP conversations: native (the compiled engine), "
        "reference (pure Python on aiosmtplib, several times the CPU per message), auto "
        "(native, or reference where the native engine was not built)")
    peers: CommaList = Field(
        default_factory=list, description="comma list of host:port naming every sender replica "
        "(a headless Service's name gives them all); a wave posted to one is split over those "
        "that answer")
    drain_delay_s: float = Field(0.0, ge=0, le=300, description="on SIGTERM, after its waves "
                                 "have stopped and their messages in flight ended, how long its "
                                 "API still answers (not ready), so the replica or client "
                                 "following a wave reads its part's last figures (the chart: 5)")
    drain_timeout_s: float = Field(10.0, gt=0, le=300, description="on SIGTERM, how long the "
                                   "messages in flight get to end before the engine is closed")
    api_token: ApiToken = None


class CollectorSettings(BaseSettings):
    """The span collector: where it listens, where it keeps results, where it forwards."""

    model_config = SettingsConfigDict(env_prefix="TLSSTORM_COLLECTOR_", extra="forbid")

    host: str = Field("127.0.0.1", description="address the OTLP/HTTP and report API binds")
    http_port: Port = Field(8027, description="OTLP/HTTP ingest, summary and report port")
    db_path: Path = Field(Path("results/collector.sqlite"), description="SQLite file of results")
    retention_hours: float = Field(168.0, gt=0, description="drop results older than this")
    plan_sweep: Path | None = Field(None, description="a sweep's sweep.json the planner page "
                                    "uses instead of the collector's own waves (the same "
                                    "model as `tlsstorm plan --sweep`)")
    max_buckets: int = Field(200_000, ge=100, description="cap on stored per-second cells")
    flush_interval_s: float = Field(1.0, gt=0, description="how often results reach SQLite")
    ephemeral: bool = Field(False, description="the SQLite file is on no volume (the chart "
                            "says so when it has none): the report says its results began "
                            "when this collector started")
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024, description="OTLP body cap (413)")
    forward_otlp_endpoint: str | None = Field(
        None,
        validation_alias=AliasChoices("forward_otlp_endpoint", "TLSSTORM_FORWARD_OTLP_ENDPOINT"),
        description="OTLP/HTTP endpoint (e.g. Jaeger's http://jaeger:4318) to forward batches to",
    )
    forward_queue: int = Field(1000, ge=1, description="batches waiting to be forwarded at most")
    forward_retries: int = Field(3, ge=0, le=20, description="attempts after the first")


class MeterSettings(BaseSettings):
    """A meter beside a mail server: which processes are the server, what it is called."""

    model_config = SettingsConfigDict(env_prefix="TLSSTORM_METER_", extra="forbid")

    target: str = Field("", max_length=300, description="the server's SMTP address, HOST:PORT, "
                        "as the sender aims at it: the figures are labelled with it")
    pid_file: Path | None = Field(None, description="watch the process tree under the pid in "
                                  "this file, read again each time (Postfix: "
                                  "/var/spool/postfix/pid/master.pid)")
    pid: int | None = Field(None, ge=1, description="watch the process tree under this pid")
    process_names: CommaList = Field(
        default_factory=list, description="watch processes with these names (as ps -o comm "
        "shows them: master, exim4) and their children")
    cgroup: str | None = Field(None, description="watch every process of this cgroup, as "
                               "/proc/PID/cgroup names it (/system.slice/postfix.service): "
                               "the complete count, short-lived processes included")
    cgroup_of_pid_file: Path | None = Field(
        None, description="watch the cgroup of the process whose pid is in this file (a "
        "container's first process: docker inspect -f '{{.State.Pid}}')")
    host: str = Field("127.0.0.1", description="address the meter's API binds")
    http_port: Port = Field(8028, description="the meter's API (stats, metrics) port")
    interval_s: float = Field(1.0, ge=0.1, le=60, description="how often it reads and reports")
    api_token: ApiToken = None

    @field_validator("target")
    @classmethod
    def _target_named(cls, value: str) -> str:
        if not value:
            raise ValueError("name the server the meter watches: --target HOST:PORT")
        host, port = split_host_port(value)
        return f"{host}:{port}"

    @model_validator(mode="after")
    def _one_selection(self) -> MeterSettings:
        given = [name for name in ("pid_file", "pid", "process_names", "cgroup",
                                   "cgroup_of_pid_file") if getattr(self, name)]
        if len(given) != 1:
            raise ValueError("say which processes are the server, with exactly one of "
                             "--pid-file, --pid, --process-names, --cgroup, "
                             "--cgroup-of-pid-file"
                             + (f" (got {', '.join(given)})" if given else ""))
        return self


def _flag(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


# Placeholders for values whose type alone does not say what goes there.
_METAVARS_BY_SUFFIX = (("_port", "PORT"), ("_s", "SECONDS"), ("_us", "MICROSECONDS"),
                       ("_bytes", "BYTES"), ("_file", "FILE"), ("_path", "FILE"),
                       ("_endpoint", "URL"), ("target", "HOST:PORT"), ("host", "ADDRESS"),
                       ("_token", "TOKEN"))


def _metavar(name: str, field) -> str:
    """What goes in a flag's value: its choices, or a word for its kind (PORT, SECONDS...)."""
    annotation = field.annotation
    if get_origin(annotation) is Literal:
        return "{" + ",".join(map(str, get_args(annotation))) + "}"
    if annotation is bool:
        return "{true,false}"
    if get_origin(annotation) is list:
        word = "TARGET" if "targets" in name else "NAME" if "names" in name else "CIDR"
        return f"{word}[,{word}...]"
    for suffix, metavar in _METAVARS_BY_SUFFIX:
        if name.endswith(suffix):
            return metavar
    return {int: "N", float: "NUMBER"}.get(annotation, "TEXT")


def add_flags(parser: argparse.ArgumentParser, settings_class: type[BaseSettings]) -> None:
    """One flag per settings field, so every env var has a flag of the same name."""
    prefix = settings_class.model_config.get("env_prefix", "")
    for name, field in settings_class.model_fields.items():
        env = f"{prefix}{name}".upper()
        aliases = getattr(field.validation_alias, "choices", None)
        if aliases:
            env = aliases[-1]
        default = field.default if field.default_factory is None else field.default_factory()
        description = (field.description or "").replace("%", "%%")  # argparse formats help
        parser.add_argument(
            _flag(name),
            dest=name,
            default=argparse.SUPPRESS,
            metavar=_metavar(name, field),
            help=f"{description} [env {env}, default {default!r}]",
        )


def load_settings(settings_class: type[BaseSettings], flags: argparse.Namespace, prog: str):
    """Build settings from flags and env; a bad value exits with one line per field."""
    given = {
        name: value for name, value in vars(flags).items() if name in settings_class.model_fields
    }
    try:
        return settings_class(**given)
    except ValidationError as error:
        prefix = settings_class.model_config.get("env_prefix", "")
        for problem in error.errors():
            if not problem["loc"]:  # about several fields together
                print(f"{prog}: {problem['msg'].removeprefix('Value error, ')}",
                      file=sys.stderr)
                continue
            name = str(problem["loc"][0])
            where = f"{_flag(name)} / {prefix}{name.upper()}"
            print(f"{prog}: {where}: {problem['msg']} (got {problem.get('input')!r})",
                  file=sys.stderr)
        raise SystemExit(2) from None
