"""Which adapters a user sees as versions of their styles: live (not deleted) ones whose training job succeeded.

The train worker writes the adapter row before it renders the previews (they sample with the stored copy), so
the row exists while its job is still running, and stays if the job then fails; neither may be listed or become a
style's default version. One condition, used by every listing and lookup of versions."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from storage.models import Adapter, TrainingJob
from storage.states import JobState


def visible_adapter() -> Any:
    """SQL condition on `Adapter`: not deleted, and its job succeeded."""
    return Adapter.deleted_at.is_(None) & Adapter.job_id.in_(
        select(TrainingJob.id).where(TrainingJob.id == Adapter.job_id, TrainingJob.state == JobState.SUCCEEDED))
