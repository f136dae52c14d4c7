"""The queries behind the gallery pages: a user's generations, newest first, a page at a time, grouped by style
and adapter version, with the file name each image downloads as.

Page-only reads (the JSON API lists generations flat); a fixed number of queries per page whatever its size.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.schemas import GenerationPublic
from storage.generation_settings import SETTING_NAMES
from storage.models import Adapter, Generation, Style, User

PER_PAGE = 24
MAX_PAGE = 10_000  # deeper offsets are refused by the page route (a 404 page), not sent to the database


def slug(text: str | None, default: str = "styledrop") -> str:
    """A file-name-safe lowercase slug: 'Blue stripes / poster!' → 'blue-stripes-poster'."""
    out = re.sub(r"[^a-z0-9]+", "-", (text or "").lower()).strip("-")[:48].strip("-")
    return out or default


@dataclass(frozen=True)
class Shot:
    """One generation as the gallery shows it: its fields, and a download name per image."""

    gen: GenerationPublic
    style_id: str | None
    files: list[tuple[str, str]]  # (image URL, download file name)
    reuse: dict[str, Any]  # every setting (SETTING_NAMES): what "use these settings again" puts back in the form


@dataclass
class Group:
    """Consecutive generations (newest first) made with one adapter, or with none (the base model)."""

    style_id: str | None
    descriptor: str | None
    adapter_id: str | None
    version: int | None  # 1 = the style's first trained adapter
    adapter_deleted: bool
    shots: list[Shot] = field(default_factory=list)

    @property
    def title(self) -> str:
        if self.adapter_id is None:
            return "Base model (no style)"
        return f"{self.descriptor or 'deleted style'} · adapter v{self.version}"


@dataclass(frozen=True)
class GalleryPage:
    groups: list[Group]
    page: int
    has_next: bool

    @property
    def has_prev(self) -> bool:
        return self.page > 1


def _shot(gen: Generation, style_id: str | None, descriptor: str | None) -> Shot:
    public = GenerationPublic.model_validate(gen)
    name = slug(descriptor, "base-model")
    files = [(url, f"{name}-{gen.seed}-{n}.png") for n, url in enumerate(public.image_urls)]
    reuse = {name: getattr(public, name) for name in SETTING_NAMES}
    return Shot(gen=public, style_id=style_id, files=files, reuse=reuse)


def gallery_page(*, session: Session, owner: User, page: int, per_page: int = PER_PAGE,
                 adapter_ids: list[str] | None = None) -> GalleryPage:
    """Page `page` (1-based) of the owner's generations, newest first, in runs of one adapter each.
    `adapter_ids` narrows it to those adapters (the style page)."""
    query = (
        select(Generation, Adapter.style_id, Adapter.deleted_at, Adapter.version, Style.descriptor)
        .outerjoin(Adapter, Adapter.id == Generation.adapter_id)
        .outerjoin(Style, (Style.id == Adapter.style_id) & Style.deleted_at.is_(None))
        .where(Generation.owner_id == owner.id)
    )
    if adapter_ids is not None:
        query = query.where(Generation.adapter_id.in_(adapter_ids))
    rows = session.execute(
        query.order_by(Generation.queued_at.desc(), Generation.id.desc())
        .limit(per_page + 1).offset((page - 1) * per_page)
    ).all()
    has_next = len(rows) > per_page
    rows = rows[:per_page]
    groups: list[Group] = []
    for gen, style_id, adapter_deleted_at, version, descriptor in rows:
        if not groups or groups[-1].adapter_id != gen.adapter_id:
            groups.append(Group(
                style_id=style_id if descriptor is not None else None, descriptor=descriptor,
                adapter_id=gen.adapter_id, version=version,
                adapter_deleted=adapter_deleted_at is not None,
            ))
        groups[-1].shots.append(_shot(gen, style_id, descriptor))
    return GalleryPage(groups=groups, page=page, has_next=has_next)


def adapter_choices(*, session: Session, owner: User, kind: str | None = None) -> list[tuple[str, str]]:
    """(adapter id, label) for the gallery's generate form: the owner's live adapters, newest first; `kind`
    narrows them to those of styles or of subjects."""
    query = (select(Adapter.id, Adapter.version, Style.descriptor)
             .join(Style, Style.id == Adapter.style_id)
             .where(Adapter.owner_id == owner.id, Adapter.deleted_at.is_(None), Style.deleted_at.is_(None)))
    if kind is not None:
        query = query.where(Style.kind == kind)
    rows = session.execute(query.order_by(Adapter.created_at.desc(), Adapter.id.desc()).limit(200)).all()
    return [(a_id, f"{descriptor} · v{version}") for a_id, version, descriptor in rows]


def style_adapter_ids(*, session: Session, style_id: str) -> list[str]:
    return list(session.scalars(select(Adapter.id).where(Adapter.style_id == style_id)))
