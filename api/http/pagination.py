"""Listings a page at a time: `{"items": [...], "next": <absolute URL of the next page> | null}` (`api.schemas.Page`).

A listing fetches one row more than it shows (`Paging.fetch`) to know whether a next page exists; `next` is the same
request with the following `offset` (or, for event listings, the `after` cursor of the last item), under the
answer's base URL (storage/urls.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlencode

from fastapi import Request

from api.schemas import Page
from storage import urls

P = TypeVar("P", bound=Page[Any])

def next_url(request: Request, **params: int) -> str:
    """This request's URL with `params` replacing its query parameters of the same names, under the base URL."""
    query = {k: v for k, v in request.query_params.multi_items() if k not in params}
    path = request.url.path.removeprefix(request.scope.get("root_path", "") or "")
    return urls.absolute(path + "?" + urlencode([*query.items(), *((k, str(v)) for k, v in params.items())]))


@dataclass(frozen=True)
class Paging:
    request: Request
    limit: int
    offset: int

    @property
    def fetch(self) -> int:
        """Rows to ask for: one more than a page, to know whether another page follows."""
        return self.limit + 1

    def page(self, page_type: type[P], rows: Sequence[Any]) -> P:
        """The page of `rows` (fetched with `fetch`), with `next` when a row beyond it was found."""
        more = len(rows) > self.limit
        return page_type(items=list(rows[: self.limit]),
                         next=next_url(self.request, offset=self.offset + self.limit, limit=self.limit) if more
                         else None)


def cursor_page(page_type: type[P], request: Request, rows: Sequence[Any], *, limit: int, cursor: str) -> P:
    """A page of rows ordered by an increasing `cursor` attribute (fetched with limit + 1): `next` asks for the
    rows after the last one shown."""
    shown = list(rows[:limit])
    more = len(rows) > limit
    return page_type(items=shown, next=next_url(request, after=getattr(shown[-1], cursor), limit=limit) if more
                     else None)
