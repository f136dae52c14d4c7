"""A style's adapter versions (v1, v2, ...: round 1, then one per feedback round) and its default version.

The default is the version a generation naming only the style uses: the one the user chose
(`styles.default_adapter_id`), or the newest live version when none was chosen or the chosen one was deleted —
so a style always generates as long as it has any adapter, and a new round never silently changes what an
existing integration gets once the user has pinned a version.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.http.errors import Invalid, NotFound
from api.schemas import VersionPublic
from api.services.adapters import get_adapter
from api.services.lookup import get_owned
from storage.error_codes import ErrorCode
from storage.models import Adapter, Style, User
from storage.visibility import visible_adapter

logger = logging.getLogger(__name__)


def live_versions(session: Session, style_ids: Sequence[str]) -> dict[str, list[Adapter]]:
    """Each style's live adapters, oldest version first (one query for any number of styles)."""
    out: dict[str, list[Adapter]] = {sid: [] for sid in style_ids}
    if style_ids:
        for a in session.scalars(select(Adapter).where(Adapter.style_id.in_(list(style_ids)), visible_adapter())
                                 .order_by(Adapter.version)):
            out[a.style_id].append(a)
    return out


def default_of(style: Style, versions: Sequence[Adapter]) -> Adapter | None:
    chosen = [a for a in versions if a.id == style.default_adapter_id]
    return chosen[0] if chosen else (versions[-1] if versions else None)


def list_versions(*, session: Session, owner: User, style_id: str) -> list[VersionPublic]:
    style = get_owned(session, Style, style_id, owner, "style")
    versions = live_versions(session, [style.id])[style.id]
    default = default_of(style, versions)
    return [VersionPublic.model_validate(a).model_copy(update={"is_default": a is default}) for a in versions]


def version_of(session: Session, style: Style, version: int) -> Adapter:
    adapter = session.scalar(select(Adapter).where(Adapter.style_id == style.id, Adapter.version == version,
                                                   visible_adapter()))
    if adapter is None:
        raise NotFound(f"style {style.id} has no version {version}", code=ErrorCode.VERSION_NOT_FOUND)
    return adapter


def set_default(*, session: Session, owner: User, style_id: str, version: int) -> Style:
    style = get_owned(session, Style, style_id, owner, "style")
    style.default_adapter_id = version_of(session, style, version).id
    session.commit()
    logger.info("user %s: style %s default is now v%d", owner.id, style.id, version)
    return style


def styled(style: Style, field: str | None = None) -> Style:
    """`style` if it is a StyleDrop style: a subject's adapter is mixed in as `subject_adapter_id`, and feedback
    rounds (judged by a style score) are for styles."""
    if style.kind != "style":
        raise Invalid(f"{style.id} is a subject, not a style: name its adapter as subject_adapter_id",
                      code=ErrorCode.NOT_A_STYLE, field=field)
    return style


def generation_adapter(*, session: Session, owner: User, adapter_id: str | None, style_id: str | None,
                       version: int | None) -> str | None:
    """The adapter a generation request names: by id, or by style (+ version, else the style's default)."""
    if style_id is None:
        if version is not None:
            raise Invalid("version needs a style_id", code=ErrorCode.VERSION_WITHOUT_STYLE, field="body.version")
        if adapter_id is not None:
            get_adapter(session=session, owner=owner, adapter_id=adapter_id)
        return adapter_id
    if adapter_id is not None:
        raise Invalid("name either adapter_id or style_id (+ version), not both", code=ErrorCode.ADAPTER_AND_STYLE,
                      field="body.adapter_id")
    style = styled(get_owned(session, Style, style_id, owner, "style"), "body.style_id")
    if version is not None:
        return version_of(session, style, version).id
    default = default_of(style, live_versions(session, [style.id])[style.id])
    if default is None:
        raise Invalid(f"style {style.id} has no trained version yet", code=ErrorCode.STYLE_NOT_TRAINED,
                      field="body.style_id")
    return default.id
