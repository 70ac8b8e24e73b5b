"""The Locust web UI's swarm form and the receiver's per-wave stats, for the UI tests."""

from __future__ import annotations

import httpx


def receiver_wave(receiver_url: str, wave: str) -> dict | None:
    """The receiver's stats of one wave, or None if it saw no session of it."""
    response = httpx.get(f"{receiver_url}/v1/stats", params={"wave": wave})
    return response.json() if response.status_code == 200 else None


def wave_modes(stats: dict | None) -> tuple[dict, dict] | None:
    """A wave's plain and STARTTLS counters (its process figures move with time)."""
    return (stats["plain"], stats["tls"]) if stats else None


def wave_sessions(stats: dict | None) -> int:
    return stats["plain"]["sessions"] + stats["tls"]["sessions"] if stats else 0


def start_from_ui(page, fields: dict[str, str]) -> None:
    """Fill the swarm form (a first run's page, or the dialog behind New; a list's field by its
    option's value) and press Start."""
    custom = page.get_by_role("button", name="Custom parameters")
    if custom.count() and not page.locator('input[name="waveId"]').is_visible():
        custom.click()
    for name, value in fields.items():
        field = page.locator(f'[name="{name}"]')
        if field.evaluate("element => element.tagName") == "SELECT":  # a list: the targets
            field.select_option(value)
        else:
            field.fill(value)
    page.get_by_role("button", name="Start").click()


def only_user_class(page, name: str, others: tuple[str, ...] = ("DirectSmtpBot",)) -> None:
    """The class picker checks every user class for a run by default: leave only `name`."""
    for other in others:
        page.locator("tr", has_text=other).locator('input[type="checkbox"]').uncheck()
    assert page.locator("tr", has_text=name).locator('input[type="checkbox"]').is_checked()
