"""The span exporter's HTTP transport to a plain-HTTP collector: one kept-alive connection of the
standard library's http.client, behind OpenTelemetry's transport interface (BaseHTTPTransport,
the one its exporters' client takes and that user transports register for).

Why not the library's urllib3 or requests transports: the services export every second whatever
the load, and a request of a second's spans costs their exporter's thread about half the CPU
through http.client (on which urllib3 itself is built) that it costs through urllib3 (its pool
manager, header-dict copies, retry and timeout objects), and a quarter of what it costs through
requests (which also reads the proxy and netrc settings on every request): bench/span_cost.py.
The exporter's client keeps its retries, backoff, compression and its retry of a connection
error at once (a kept-alive connection the collector has closed meanwhile).
HTTPS and proxied endpoints stay with the library's requests transport (WireSpanExporter).
"""

from __future__ import annotations

import http.client
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from opentelemetry.exporter.http.transport._base import BaseHTTPResult, BaseHTTPTransport


@dataclass(frozen=True, slots=True)
class _Result(BaseHTTPResult):
    body: bytes = b""
    header_map: Mapping[str, str] = field(default_factory=dict)

    def content(self) -> bytes:
        return self.body

    def headers(self) -> Mapping[str, str]:
        return self.header_map  # http.client's message: its look-ups ignore case


class PlainHTTPTransport(BaseHTTPTransport):
    """HTTP/1.1 to one plain-HTTP origin over a connection kept open between requests (opened
    again after an error, or when the server says it closes). One request at a time, as the
    batch processor exports: under its lock, from its thread or a flush's."""

    def __init__(self) -> None:
        self._connection: http.client.HTTPConnection | None = None

    def request(self, method: str, url: str, *, headers: dict[str, str] | None = None,
                timeout: float | None = None, data: bytes | None = None) -> BaseHTTPResult:
        parts = urlsplit(url)
        if parts.scheme != "http":
            raise ValueError(f"{url}: this transport speaks plain HTTP only")
        origin = (parts.hostname or "", parts.port or 80)
        path = parts.path or "/"
        if parts.query:
            path += f"?{parts.query}"
        try:
            connection = self._connected(origin, timeout)
            connection.request(method, path, body=data, headers=headers or {})
            response = connection.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException) as error:
            self.close()
            return _Result(error=error)
        if response.will_close:
            self.close()
        return _Result(status_code=response.status, reason=response.reason, body=body,
                       header_map=response.headers)

    def _connected(self, origin: tuple[str, int], timeout: float | None
                   ) -> http.client.HTTPConnection:
        connection = self._connection
        if connection is None or (connection.host, connection.port) != origin:
            self.close()
            self._connection = http.client.HTTPConnection(*origin, timeout=timeout)
        else:  # each request has what is left of the export's deadline
            connection.timeout = timeout
            if connection.sock is not None:
                connection.sock.settimeout(timeout)
        return self._connection

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def is_connection_error(self, exception: Exception | None) -> bool:
        """Refused, reset, closed before the reply (a kept-alive connection the server had
        closed), a name that does not resolve: worth another try, as urllib3's transport
        says of its own connection errors."""
        return isinstance(exception, (ConnectionError, socket.gaierror,
                                      http.client.BadStatusLine))
