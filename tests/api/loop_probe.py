"""Which thread ran a call: the tests that keep slow work off the event loop share this probe."""
from __future__ import annotations

import asyncio

import pytest


def record_loop_calls(monkeypatch: pytest.MonkeyPatch, owner: object, name: str) -> list[bool]:
    """Wraps `owner.name` (a module function or a method); each call appends whether it ran on
    a thread with a running event loop. Returns that list."""
    on_loop: list[bool] = []
    original = getattr(owner, name)

    def probe(*args: object, **kwargs: object) -> object:
        try:
            asyncio.get_running_loop()
            on_loop.append(True)
        except RuntimeError:
            on_loop.append(False)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, probe)
    return on_loop
