"""A server's address as users write it: host:port, [v6]:port or host."""

from __future__ import annotations

# host:port, [v6]:port or host: what a target may look like before anything resolves it.
TARGET_PATTERN = r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(:[0-9]{1,5})?$"


def split_host_port(text: str, default_port: int = 25) -> tuple[str, int]:
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":")
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host, port_text = text, ""
    if not host:
        raise ValueError(f"target {text!r} has no host")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"target {text!r} has a bad port: use host:port with port 1-65535")
    return host, int(port_text)
