"""Spam messages of a set size, with the trace context and wave id in their headers."""

from __future__ import annotations

import functools
import itertools

_LINE = b"Buy cheap watches now! Limited offer for TLS spam research only. tlsstorm."
_counter = itertools.count(1)


@functools.lru_cache(maxsize=64)
def _filler(length: int) -> bytes:
    """Body text of exactly `length` bytes in CRLF lines (built once per size)."""
    if length <= 2:
        return b"\r\n"[: max(length, 0)] if length > 0 else b""
    line = _LINE + b"\r\n"
    body = line * (length // len(line) + 1)
    return body[: length - 2] + b"\r\n"


def build_message(
    size: int, mail_from: str, rcpt_to: str, traceparent: str | None, wave_id: str | None
) -> bytes:
    """A message of `size` bytes (or just its headers, when they are longer)."""
    return b"".join(message_parts(size, mail_from, rcpt_to, traceparent, wave_id))


def message_parts(
    size: int, mail_from: str, rcpt_to: str, traceparent: str | None, wave_id: str | None
) -> tuple[bytes, bytes]:
    """build_message's header (with the blank line) and text, apart: every message of one size
    shares the same text object (built once per size), which a sender of many large messages
    then holds once."""
    number = next(_counter)
    headers = (
        f"From: <{mail_from}>\r\nTo: <{rcpt_to}>\r\n"
        f"Subject: tlsstorm message {number}\r\n"
        f"Message-ID: <{number}.tlsstorm@{mail_from.partition('@')[2] or 'tlsstorm.test'}>\r\n"
    )
    if traceparent:
        headers += f"traceparent: {traceparent}\r\n"
    if wave_id:
        headers += f"X-Tlsstorm-Wave: {wave_id}\r\n"
    head = headers.encode("ascii") + b"\r\n"
    return head, _filler(size - len(head))
