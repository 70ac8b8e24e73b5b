"""The sender's compiled SMTP engine (engine/smtp_engine.c), driven from the event loop.

Why compiled: in Python each SMTP reply cost the sender an event-loop callback and a few calls,
and under TLS copies through memory BIOs; per message it spent more than half the CPU of the
receiver it measures (issue 12). The engine holds every connection in one epoll set, served by
a thread of its own (which never touches Python objects), so the event loop wakes once per
finished connection, not once per reply. Each connection ends with one JSON report: its marks,
the messages accepted, the handshake, the command phases and the failure that ended it.

A wave hands its connections over ahead of their due times (`start` with a Schedule): the engine
connects each when due, or skips it when the wave has its limit in flight, and keeps their
reports (`quiet`) until the wave takes them on its next tick, or its last has ended; so a wave
wakes the event loop a few dozen times a second, whatever its rate, instead of a few times per
connection. A bot's connections one after another are a group of limit 1 that queues.

TLS is OpenSSL's own, with the SSL_CTX inside the Python SSLContext the sender configured (the
first field after CPython's object header, as common/tls.py reads it too): the ClientHello and
certificate checks are the ones that context describes. Or, for a profile that names it, the
engine's rustls client (a RustlsConfig): its handshake costs the sender about half the CPU of
OpenSSL 3.0's (bench/client_stack_floor.py), which a sender that must outrun its receiver needs.
"""

from __future__ import annotations

import _ssl
import asyncio
import ctypes
import importlib.machinery
import itertools
import json
import os
import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

_LIBRARY_NAME = "_smtp_engine"
_INT_MAX = 2**31 - 1  # a C int's, what job_t's counts and milliseconds are


class _Job(ctypes.Structure):
    _fields_ = (
        ("address", ctypes.c_char_p),
        ("port", ctypes.c_int),
        ("ssl_ctx", ctypes.c_void_p),
        ("rustls_config", ctypes.c_void_p),
        ("server_name", ctypes.c_char_p),
        ("check_hostname", ctypes.c_int),
        ("resume", ctypes.c_int),
        ("ehlo", ctypes.c_char_p),
        ("mail_from", ctypes.c_char_p),
        ("rcpt_to", ctypes.c_char_p),
        ("messages", ctypes.c_int),
        ("pieces", ctypes.c_char_p),
        ("piece_lengths", ctypes.POINTER(ctypes.c_int)),
        ("piece_count", ctypes.c_int),
        ("head_of", ctypes.POINTER(ctypes.c_int)),
        ("text_of", ctypes.POINTER(ctypes.c_int)),
        ("timeout_ms", ctypes.c_int),
        ("quick_ack", ctypes.c_int),
        ("trace_phases", ctypes.c_int),
        ("due_ns", ctypes.c_longlong),
        ("group", ctypes.c_long),
        ("group_limit", ctypes.c_int),
        ("queue", ctypes.c_int),
        ("quiet", ctypes.c_int),
    )


def _library_path() -> Path:
    """The engine built beside this module by `pip install` (setuptools' ext-modules)."""
    folder = Path(__file__).parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = folder / f"{_LIBRARY_NAME}{suffix}"
        if candidate.exists():
            return candidate
    raise ImportError(f"the SMTP engine {_LIBRARY_NAME} is not built in {folder}: reinstall "
                      "tlsstorm (pip install -e .; it needs a C compiler, libssl-dev and cargo)")


def _load() -> ctypes.CDLL:
    # Linked against the system's libssl.so.3, the very library Python's ssl module loaded:
    # one OpenSSL in the process, so the SSL_CTX of a Python SSLContext is the engine's too.
    library = ctypes.CDLL(str(_library_path()))
    if _address(library.SSL_CTX_new) != _address(ctypes.CDLL(_ssl.__file__).SSL_CTX_new):
        raise ImportError("the SMTP engine and Python's ssl module load different OpenSSL "
                          "libraries; rebuild tlsstorm against the OpenSSL Python uses")
    check_layout(library, _Job)
    library.engine_new.restype = ctypes.c_void_p
    library.engine_key_log.argtypes = [ctypes.c_char_p]
    library.engine_done_fd.argtypes = [ctypes.c_void_p]
    library.engine_start.argtypes = [ctypes.c_void_p, ctypes.POINTER(_Job)]
    library.engine_start.restype = ctypes.c_long
    library.engine_take.argtypes = [ctypes.c_void_p]
    library.engine_take.restype = ctypes.c_void_p
    library.engine_free_text.argtypes = [ctypes.c_void_p]
    library.engine_cancel.argtypes = [ctypes.c_void_p, ctypes.c_long]
    library.engine_free.argtypes = [ctypes.c_void_p]
    library.engine_rustls_config.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_int,
                                             ctypes.c_int, ctypes.c_int, ctypes.c_char_p,
                                             ctypes.c_size_t]
    library.engine_rustls_config.restype = ctypes.c_void_p
    library.engine_rustls_config_free.argtypes = [ctypes.c_void_p]
    return library


def check_layout(library: ctypes.CDLL, job: type[ctypes.Structure]) -> None:
    """Raises ImportError unless `job` has job_t's fields, in its order, at its offsets (the
    engine exports its fields' names, its size and their offsets): a field added, moved or
    resized on one side only would otherwise be read as another."""
    names = ctypes.string_at(ctypes.addressof(ctypes.c_char.in_dll(
        library, "engine_job_fields"))).decode().split()
    ours = [name for name, _ in job._fields_]
    if ours != names:
        raise ImportError(f"the SMTP engine's job_t has the fields {names}, engine.py's _Job "
                          f"{ours}: rebuild the engine (pip install -e .) or fix the mirror")
    size, *offsets = (ctypes.c_size_t * (len(names) + 1)).in_dll(library, "engine_job_layout")
    mirror = [*(getattr(job, name).offset for name in names), ctypes.sizeof(job)]
    for name, engine_has, we_have in zip([*names, "size"], [*offsets, size], mirror,
                                         strict=True):
        if engine_has != we_have:
            raise ImportError(f"the SMTP engine's job_t and engine.py's _Job differ at {name} "
                              f"({engine_has} in C, {we_have} here): rebuild the engine "
                              "(pip install -e .) or fix the mirror")


def _library_loaded() -> ctypes.CDLL:
    global _library
    if _library is None:
        _library = _load()
    return _library


def load_problem() -> str | None:
    """Why the compiled engine cannot be used here (one sentence), or None when it can."""
    try:
        _library_loaded()
    except (ImportError, OSError) as error:
        return str(error)
    return None


def _ints(values) -> ctypes.Array:
    listed = list(values)
    return (ctypes.c_int * len(listed))(*listed)


def _address(function: ctypes._CFuncPtr) -> int:
    return ctypes.cast(function, ctypes.c_void_p).value


_library: ctypes.CDLL | None = None
_groups = itertools.count(1)
# What a group hands the engine ahead of its connections' beginnings holds their messages: at
# most about this many bytes of them (every connection holds its own copy).
BYTES_AHEAD = 8 * 1024 * 1024


def key_log_from_environment() -> None:
    """OpenSSL's sessions in the engine log their keys where SSLKEYLOGFILE says (rustls's read
    it themselves), as browsers and curl do; raises OSError when that file cannot be written."""
    path = os.environ.get("SSLKEYLOGFILE")
    error = _library_loaded().engine_key_log(os.fsencode(path) if path else None)
    if error:
        raise OSError(-error, f"SSLKEYLOGFILE={path}: the key log cannot be written "
                      f"({os.strerror(-error)})")


def connections_ahead(size: int, per_connection: int, most: int) -> int:
    """How many connections of messages of `size` a group may hand over ahead: 2 to `most`."""
    return max(2, min(most, BYTES_AHEAD // (size + 256 * per_connection)))


def next_group() -> int:
    """A number for a new group of connections (a wave, a bot's list)."""
    return next(_groups)


def ssl_ctx_of(context: ssl.SSLContext) -> int:
    """The SSL_CTX pointer inside a Python SSLContext."""
    return ctypes.c_void_p.from_address(id(context) + object.__basicsize__).value


class RustlsConfig:
    """A client TLS configuration of the engine's rustls (engine/rustls_client): TLS 1.2-1.3
    (or 1.2 only), AEAD suites, X25519 first; tickets asked for but never used to resume.
    Without a CA file any certificate passes (its handshake signature is still checked), as
    Python's CERT_NONE; with one, the chain is checked, and the name too when `sni`."""

    def __init__(self, ca_file: Path | None, tls13: bool = True, tickets: bool = True,
                 sni: bool = True) -> None:
        self._lib = _library_loaded()
        self.check_hostname = ca_file is not None and sni
        error = ctypes.create_string_buffer(512)
        self.pointer = self._lib.engine_rustls_config(
            str(ca_file).encode() if ca_file else None, int(tls13), int(tickets),
            int(self.check_hostname), int(sni), error, len(error))
        if not self.pointer:
            raise ValueError(f"rustls configuration: {error.value.decode(errors='replace')}")

    def __del__(self) -> None:
        if getattr(self, "pointer", None):
            self._lib.engine_rustls_config_free(self.pointer)  # connections keep their own
            self.pointer = None


@dataclass(frozen=True, slots=True)
class Conversation:
    """What to say on one connection."""

    address: str
    port: int
    context: ssl.SSLContext | RustlsConfig | None  # STARTTLS with it; None: plain
    server_name: str | None  # SNI (unless an address) and the name checked
    resume: bool
    ehlo: bytes
    mail_from: bytes
    rcpt_to: bytes
    # Message i is pieces[head_of[i]] then pieces[text_of[i]], both dot-stuffed; the engine
    # ends it with ".\r\n". Messages of one size share their text piece.
    pieces: list[bytes]
    head_of: list[int]
    text_of: list[int]
    timeout_s: float
    quick_ack: bool
    trace_phases: bool


@dataclass(frozen=True, slots=True)
class Schedule:
    """When a connection of a group is due, and the group's limit of connections in flight."""

    due_ns: int  # time.perf_counter_ns()'s clock (CLOCK_MONOTONIC); 0: at once
    group: int  # next_group()
    limit: int  # due while the group has that many in flight: skipped, or with `queue` waits
    queue: bool = False  # begins when the group has room, after those queued before it
    quiet: bool = True  # its report waits for `take` (or for the group's last to end)


Report = dict  # one connection's JSON report, or {"id", "skipped"} / {"id", "cancelled"}


def hand_out(reports: Iterable[Report], waiting: dict[int, Callable[[Report], None]],
             loop: asyncio.AbstractEventLoop) -> None:
    """Each report to the callback of its connection (if one still waits for it)."""
    for report in reports:
        on_report = waiting.pop(report["id"], None)
        if on_report is None:
            continue
        try:
            on_report(report)
        except Exception as error:  # one callback's bug must not strand the other reports
            loop.call_exception_handler(
                {"message": "a connection's report could not be taken", "exception": error})


class Engine:
    """One engine per event loop: `start` hands a connection over with a callback for its
    report."""

    def __init__(self) -> None:
        self._lib = _library_loaded()
        self._engine = self._lib.engine_new()
        if not self._engine:
            raise OSError("the SMTP engine could not start (epoll set, descriptors or thread)")
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._lib.engine_done_fd(self._engine), self.take)
        self._waiting: dict[int, Callable[[Report], None]] = {}

    def start(self, talk: Conversation, on_report: Callable[[Report], None],
              schedule: Schedule | None = None) -> None:
        """Hand one conversation over: at once, or as `schedule` says (its report then waits
        for `take`, or for its group's last to end); raises OSError when the engine cannot
        take it."""
        context = talk.context
        # The engine takes its own reference to either.
        rustls = context.pointer if isinstance(context, RustlsConfig) else None
        ctx = ssl_ctx_of(context) if isinstance(context, ssl.SSLContext) else None
        messages = len(talk.head_of)
        timeout_ms = round(talk.timeout_s * 1000)
        if not 1 <= timeout_ms <= _INT_MAX:  # ctypes would wrap it silently
            raise ValueError(f"timeout {talk.timeout_s} s: the engine takes 1 ms to 24.8 days")
        job = _Job(talk.address.encode(), talk.port, ctx, rustls,
                   talk.server_name.encode() if talk.server_name else None,
                   int(bool(context is not None and context.check_hostname)), int(talk.resume),
                   talk.ehlo, talk.mail_from, talk.rcpt_to, messages,
                   b"".join(talk.pieces), _ints(map(len, talk.pieces)), len(talk.pieces),
                   _ints(talk.head_of), _ints(talk.text_of), timeout_ms,
                   int(talk.quick_ack), int(talk.trace_phases),
                   *((schedule.due_ns, schedule.group, schedule.limit, int(schedule.queue),
                      int(schedule.quiet)) if schedule else ()))
        started = self._lib.engine_start(self._engine, ctypes.byref(job))
        if started < 0:
            raise OSError(-started, f"the engine cannot take a connection to {talk.address}:"
                          f"{talk.port}: {os.strerror(-started)}")
        self._waiting[started] = on_report

    def cancel(self, group: int) -> None:
        """The group's connections not yet due are dropped (reports {"cancelled": true});
        after `close`, every connection already was."""
        if self._engine:
            self._lib.engine_cancel(self._engine, group)

    def take(self) -> None:
        """Each report waiting goes to its connection's callback (after `close`, none is)."""
        text = self._lib.engine_take(self._engine) if self._engine else None
        if not text:
            return
        try:
            lines = ctypes.string_at(text).splitlines()
        finally:
            self._lib.engine_free_text(text)
        hand_out(map(json.loads, lines), self._waiting, self._loop)

    def close(self) -> None:
        """Drop every connection in flight (the sender is stopping)."""
        if self._engine:
            self._loop.remove_reader(self._lib.engine_done_fd(self._engine))
            self._lib.engine_free(self._engine)
            self._engine = None
        waiting, self._waiting = self._waiting, {}
        for identifier, on_report in waiting.items():
            on_report({"id": identifier, "cancelled": True})
