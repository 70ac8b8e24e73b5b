"""The receiver's CPU meter: one metering point, the event loop's callbacks.

Everything a session costs runs as callbacks of the loop (its socket reads and writes, the
TLS records, its task's steps, its timers, its close) or in a worker thread it waits for.
asyncio runs every callback in a copy of the context it was scheduled from, so a context
variable set when the connection is accepted follows all of the connection's work. The meter
times each callback with the thread's CPU clock and charges it to the session in whose context
it ran. Each loop iteration also polls the sockets (epoll), turns what is ready into callbacks
and keeps its timers: that time is shared equally by the callbacks the iteration ran. Callbacks
of nobody (the HTTP API, the sampler) are summed apart, and the process figure, which the stats
set beside the charged one, shows whatever else remains. What a callback spends on telemetry
(building a session's spans) is set aside: it is in the telemetry account, not the session's.

asyncio has no hook per callback (a task factory sees tasks only), hence the one patch of
`asyncio.Handle._run`, dispatching to the meter of the running loop; loops without a meter run
callbacks as before.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from asyncio import selector_events
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

_thread_cpu_ns = time.thread_time_ns
_ACCOUNT: contextvars.ContextVar[CpuAccount | None] = contextvars.ContextVar(
    "tlsstorm_session_cpu", default=None)
_METERS: dict[asyncio.AbstractEventLoop, LoopMeter] = {}
_original_run = asyncio.Handle._run
_ACCEPT = selector_events.BaseSelectorEventLoop._accept_connection


class CpuAccount:
    """The CPU one session has cost so far; sealed once its figure is reported."""

    __slots__ = ("loop_ns", "running_since", "sealed", "thread_ns")

    def __init__(self) -> None:
        self.loop_ns = 0
        self.thread_ns = 0  # written by worker threads only
        self.running_since = 0
        self.sealed = False

    def charged_ns(self) -> int:
        """Everything so far, the callback running now included."""
        running = _thread_cpu_ns() - self.running_since if self.running_since else 0
        return self.loop_ns + self.thread_ns + running


class LoopMeter:
    """Times the callbacks of one loop; what belongs to no session is summed apart."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.accept_ns = 0  # the listening socket's accept callbacks, shared by what they accept
        self.accepted = 0
        self.unowned_ns = 0  # callbacks of no session: HTTP API, sampler, span export hand-off
        self.after_seal_ns = 0  # a session's callbacks after its figure was reported
        self.idle_wakeups_ns = 0  # loop iterations that ran no callback
        self._ran: list[CpuAccount | None] = []  # whose callbacks the current iteration ran
        self._callbacks_ns = 0
        self._set_aside_ns = 0  # of the callback running now: not its owner's (telemetry)

    def install(self) -> None:
        asyncio.Handle._run = _metered_run  # type: ignore[method-assign]
        _METERS[self.loop] = self
        run_once = self.loop._run_once  # type: ignore[attr-defined]

        def timed_run_once() -> None:
            """One loop iteration: its poll and bookkeeping are shared by its callbacks."""
            self._ran.clear()
            self._callbacks_ns = 0
            started = _thread_cpu_ns()
            run_once()
            self._share_iteration(_thread_cpu_ns() - started - self._callbacks_ns)

        # An instance attribute: other loops of the process are untouched.
        self.loop._run_once = timed_run_once  # type: ignore[attr-defined]

    def _share_iteration(self, overhead_ns: int) -> None:
        if not self._ran:
            self.idle_wakeups_ns += overhead_ns
            return
        share = overhead_ns // len(self._ran)
        for account in self._ran:
            self._charge(account, share)

    def _charge(self, account: CpuAccount | None, elapsed: int) -> None:
        if account is None:
            self.unowned_ns += elapsed
        elif account.sealed:
            self.after_seal_ns += elapsed
        else:
            account.loop_ns += elapsed

    def uninstall(self) -> None:
        _METERS.pop(self.loop, None)

    def open_account(self) -> CpuAccount:
        """A new connection's account, followed by everything scheduled from here on."""
        account = CpuAccount()
        _ACCOUNT.set(account)
        self.accepted += 1
        return account

    def set_aside(self, ns: int) -> None:
        """CPU the running callback spent on something accounted elsewhere (telemetry): it is
        charged to no session and to nothing of this meter's."""
        self._set_aside_ns += ns

    def accept_share_ns(self) -> int:
        """One connection's share of accepting: the mean so far (accepts come in batches)."""
        return self.accept_ns // self.accepted if self.accepted else 0

    def run(self, handle: asyncio.Handle) -> None:
        context = handle._context  # type: ignore[attr-defined]
        account = context.get(_ACCOUNT)
        started = _thread_cpu_ns()
        if account is not None:
            account.running_since = started
        try:
            _original_run(handle)
        finally:
            elapsed = _thread_cpu_ns() - started
            self._callbacks_ns += elapsed
            elapsed -= self._set_aside_ns
            self._set_aside_ns = 0
            if account is None:  # the accepting task opens its connection's account
                account = context.get(_ACCOUNT)
            if account is not None:
                account.running_since = 0
            elif getattr(handle._callback, "__func__", None) is _ACCEPT:  # type: ignore[attr-defined]
                self.accept_ns += elapsed
                return
            self._ran.append(account)
            self._charge(account, elapsed)

    def snapshot(self) -> dict[str, float]:
        return {"accept_seconds": self.accept_ns / 1e9,
                "unowned_callbacks_seconds": self.unowned_ns / 1e9,
                "idle_wakeups_seconds": self.idle_wakeups_ns / 1e9,
                "after_seal_seconds": self.after_seal_ns / 1e9}


def _metered_run(handle: asyncio.Handle) -> None:
    meter = _METERS.get(handle._loop) if _METERS else None  # type: ignore[attr-defined]
    if meter is None:
        _original_run(handle)
    else:
        meter.run(handle)


async def run_in_thread(executor: Executor, function: Callable[..., Any], *args: Any) -> Any:
    """Run `function` in a worker thread, its CPU charged to the calling session.

    Unlike asyncio.to_thread, the result comes back by a callback scheduled in the session's
    context (to_thread's comes in the worker's empty one, and would be charged to nobody).
    """
    loop = asyncio.get_running_loop()
    context = contextvars.copy_context()
    account = context.get(_ACCOUNT)
    outcome = loop.create_future()

    def work() -> None:
        started = _thread_cpu_ns()
        try:
            result = function(*args)
        except BaseException as error:  # handed to the awaiting session
            loop.call_soon_threadsafe(_settle, outcome, None, error, context=context)
        else:
            loop.call_soon_threadsafe(_settle, outcome, result, None, context=context)
        finally:
            if account is not None:
                account.thread_ns += _thread_cpu_ns() - started

    executor.submit(work)
    return await outcome


def _settle(outcome: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if outcome.cancelled():
        return
    if error is not None:
        outcome.set_exception(error)
    else:
        outcome.set_result(result)

