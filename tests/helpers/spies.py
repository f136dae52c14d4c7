"""Record what the workers hand the engine, while the engine still runs."""

from __future__ import annotations

from typing import Any

import pytest


def record_calls(monkeypatch: pytest.MonkeyPatch, owner: object, name: str) -> list[list[Any]]:
    """Wrap `owner.name` (e.g. `trainer.sample`): each call's second positional argument (the requests or specs)
    is recorded as a list, in call order, and the real function runs."""
    calls: list[list[Any]] = []
    real = getattr(owner, name)

    def spy(first: Any, items: Any, *args: Any, **kw: Any) -> Any:
        calls.append(list(items))
        return real(first, items, *args, **kw)

    monkeypatch.setattr(owner, name, spy)
    return calls
