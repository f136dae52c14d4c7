"""Limits as a person meets them: a problem's `detail` names the value in force and the setting that changes it.

The values come from the settings object (storage/settings.py), never restated here; the environment variable is
derived from the field's declaration the way pydantic-settings reads it (`STYLEDROP_<FIELD>`, or the field's own
alias such as `DATABASE_URL`).
"""

from __future__ import annotations

from pydantic import AliasChoices

from storage.settings import Settings


def setting_env(field: str) -> str:
    """The environment variable that sets Settings field `field`; KeyError for a name that is not a field."""
    info = Settings.model_fields[field]
    alias = info.validation_alias
    if isinstance(alias, AliasChoices) and isinstance(alias.choices[0], str):
        return alias.choices[0]
    if isinstance(alias, str):
        return alias
    return f"{Settings.model_config.get('env_prefix', '')}{field}".upper()


def limit(settings: Settings, field: str) -> str:
    """'2 (STYLEDROP_MAX_CONCURRENT_JOBS_PER_USER)': the limit `field` in force and where to change it."""
    return f"{getattr(settings, field)} ({setting_env(field)})"


def too_many_jobs(settings: Settings, active: int, retry: int | str) -> str:
    """The detail of 429 `too_many_jobs`, from the upload gate (api/http/upload_gate.py) and the job services."""
    return (f"you already have {active} unfinished (queued or running) training jobs; a user may have at most "
            f"{limit(settings, 'max_concurrent_jobs_per_user')}: retry when one finishes (about {retry} s), "
            "or cancel one")
