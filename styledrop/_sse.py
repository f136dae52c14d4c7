"""Server-sent events read from a line iterator, as the WHATWG HTML standard's "event stream interpretation"
describes (https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class ServerSentEvent:
    event: str = "message"
    data: str = ""
    id: str | None = None
    retry: int | None = None  # milliseconds


def parse_sse(lines: Iterable[str]) -> Iterator[ServerSentEvent]:
    """Events from `lines` (without their line endings). Comments (`: ping`) are skipped; an event is dispatched at
    a blank line when it has data or sets `retry`; an event without data that only sets `retry` is yielded too,
    so a reader can honour the reconnection time."""
    event, last_id, retry = "", None, None
    data: list[str] = []
    for line in lines:
        if not line:
            if data or retry is not None:
                yield ServerSentEvent(event=event or "message", data="\n".join(data), id=last_id, retry=retry)
            event, data, retry = "", [], None
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
        elif name == "id":
            if "\0" not in value:
                last_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            retry = int(value)
