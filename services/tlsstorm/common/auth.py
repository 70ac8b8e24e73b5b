"""Bearer-token guard for endpoints that start load or change state."""

from __future__ import annotations

import hmac
import os

from fastapi import Header, HTTPException, status


def bearer_guard(token: str | None):
    """A FastAPI dependency: a no-op without a token, else 401 unless the bearer matches."""

    def check(authorization: str | None = Header(default=None)) -> None:
        if token is None:
            return
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip(), token):
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                detail="this endpoint needs 'Authorization: Bearer <TLSSTORM_API_TOKEN>'",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return check


def bearer_headers() -> dict[str, str]:
    """What a client of our own APIs sends: the token from TLSSTORM_API_TOKEN, if any."""
    token = os.environ.get("TLSSTORM_API_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}
