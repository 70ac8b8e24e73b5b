"""What happens to an accepted message: counted, its trace context read, then discarded."""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

from aiosmtpd.smtp import Envelope, Session

from tlsstorm.receiver.cpu_meter import run_in_thread
from tlsstorm.receiver.limits import SessionLimits
from tlsstorm.receiver.session import SessionRecord


class SessionServer(Protocol):
    """What a handler reads from the SMTP server it serves (receiver/smtp.py's MeasuredSMTP)."""

    record: SessionRecord
    limits: SessionLimits

_TRACEPARENT = b"\ntraceparent:"
_WAVE = b"\nx-tlsstorm-wave:"
_HEADER_SCAN_LIMIT = 16 * 1024


def _header(headers: bytes, lowered: bytes, name: bytes) -> str | None:
    start = lowered.find(name)
    if start < 0:
        return None
    start += len(name)
    end = headers.find(b"\n", start)
    value = headers[start : end if end >= 0 else len(headers)].strip()
    return value.decode("ascii", "replace")[:128] or None


def _busy(content: bytes, cpu_ns: int) -> None:
    """Spend `cpu_ns` of this thread's CPU hashing the message, as a content filter would."""
    deadline = time.thread_time_ns() + cpu_ns
    while time.thread_time_ns() < deadline:
        hashlib.sha256(content[:65536]).digest()


def _queue_and_discard(queue_dir: Path, content: bytes) -> None:
    handle, name = tempfile.mkstemp(dir=queue_dir, prefix="msg-")
    try:
        os.write(handle, content)
        os.fsync(handle)
    finally:
        os.close(handle)
        os.unlink(name)


class SinkHandler:
    """Accepts every message and discards it; it never relays.

    Optionally it first does what a real MTA does with a message (processing_cpu_us of CPU
    work, a queue file written and fsynced), so TLS's share of a server's cost can be studied
    at realistic filtering costs.
    """

    def __init__(self, processing_cpu_us: int = 0, queue_dir: Path | None = None) -> None:
        self.processing_cpu_ns = processing_cpu_us * 1000
        self.queue_dir = queue_dir
        self.queue_writers = ThreadPoolExecutor(4, "tlsstorm-queue") if queue_dir else None

    def close(self) -> None:
        if self.queue_writers is not None:
            self.queue_writers.shutdown(wait=True, cancel_futures=True)

    async def handle_RCPT(self, server: SessionServer, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        if len(envelope.rcpt_tos) >= server.limits.max_recipients:
            if "too_many_recipients" not in server.record.errors:
                server.record.errors.append("too_many_recipients")
            return "452 4.5.3 Error: too many recipients"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server: SessionServer, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        record = server.record
        record.messages += 1
        record.message_bytes += len(content)
        head = content[:_HEADER_SCAN_LIMIT]
        end_of_headers = head.find(b"\r\n\r\n")
        headers = b"\n" + (head if end_of_headers < 0 else head[:end_of_headers])
        lowered = headers.lower()
        traceparent = _header(headers, lowered, _TRACEPARENT)
        if traceparent:
            record.traceparents.append(traceparent)
        if record.wave_id is None:
            record.wave_id = _header(headers, lowered, _WAVE)
        if self.processing_cpu_ns:
            _busy(content, self.processing_cpu_ns)
        if self.queue_dir is not None and self.queue_writers is not None:
            await run_in_thread(self.queue_writers, _queue_and_discard, self.queue_dir, content)
            record.queue_fsyncs += 1
        return "250 2.0.0 OK: message accepted and discarded"
