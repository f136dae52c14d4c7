"""The queries behind the gallery pages: a user's generations, newest first, a page at a time, grouped by style
and adapter version, with the file name each image downloads as.

Page-only reads (the JSON API lists generations flat); a fixed number of queries per page whatever its size.
A style's feedback samples (its generations over the feedback prompts, api/services/rounds.py) are not gallery
images: the style page shows them with the rounds (api/services/history.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import or_, select, tuple_
from sqlalchemy.orm import Session

from api.schemas import GenerationPublic
from api.services.versions import default_of
from storage.generation_settings import SETTING_NAMES
from storage.models import Adapter, Generation, Style, User
from trainer.contracts.prompts import feedback_prompts

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
    descriptors = session.scalars(select(Style.descriptor).distinct().where(
        Style.owner_id == owner.id, Style.kind == "style", Style.deleted_at.is_(None))).all()
    samples = [(d, p) for d in descriptors for p in feedback_prompts(d)]
    if samples:  # a style's samples: its own descriptor's feedback prompts (base-model images have no style)
        query = query.where(or_(Style.descriptor.is_(None), ~tuple_(Style.descriptor, Generation.prompt).in_(samples)))
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


@dataclass(frozen=True)
class Choice:
    """A style or subject in the generate form's menus, once, with its live versions (newest first)."""

    style_id: str
    label: str
    versions: list[tuple[str, str]]  # (adapter id, "v2 (default)")

    @property
    def default_adapter_id(self) -> str:
        return next(a_id for a_id, label in self.versions if label.endswith("(default)"))


def choices(*, session: Session, owner: User, kind: str) -> list[Choice]:
    """The owner's styles (`kind` "style") or subjects ("subject") that have a live version, newest first, each once
    with its versions; the default version (api/services/versions.py) is marked."""
    rows = session.execute(
        select(Adapter, Style)
        .join(Style, Style.id == Adapter.style_id)
        .where(Adapter.owner_id == owner.id, Adapter.deleted_at.is_(None), Style.deleted_at.is_(None),
               Style.kind == kind)
        .order_by(Style.created_at.desc(), Style.id.desc(), Adapter.version)
    ).all()
    grouped: dict[str, tuple[Style, list[Adapter]]] = {}
    for adapter, style in rows:
        grouped.setdefault(style.id, (style, []))[1].append(adapter)
    out = []
    for style, adapters in list(grouped.values())[:200]:
        default = default_of(style, adapters)
        word = style.class_word if kind == "subject" and style.class_word not in (None, style.descriptor) else None
        label = f"{style.descriptor} ({word})" if word else style.descriptor
        out.append(Choice(style_id=style.id, label=label, versions=[
            (a.id, f"v{a.version} (default)" if a is default else f"v{a.version}") for a in reversed(adapters)]))
    return out


def style_adapter_ids(*, session: Session, style_id: str) -> list[str]:
    return list(session.scalars(select(Adapter.id).where(Adapter.style_id == style_id)))
