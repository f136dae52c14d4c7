"""What a training job is asked to do (`training_jobs.params`): one typed model, written by the API and read by the
train worker, so neither restates the other's keys or defaults.

The API writes it (api/services/styles.py: an upload and "train again"; api/services/rounds.py: a feedback round)
with `JobParams(...).to_json()`; the worker reads it with `JobParams.of(job)`. Rows written before this model
existed were rewritten once by the migration 0010_job_params. A new job parameter is a field here.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field


class Pick(BaseModel):
    """One image picked for a human round: image `index` of generation `generation_id`."""

    model_config = ConfigDict(extra="forbid")

    generation_id: str
    index: int = Field(ge=0)


class HumanRound(BaseModel):
    """Round 2 on images the user picked, each captioned with its generation's prompt."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["human"] = "human"
    selection: list[Pick]


class AutomaticRound(BaseModel):
    """Round 2 on the images CLIP picks: `per_prompt` candidates of version `version` over `prompts` prompts."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["automatic"] = "automatic"
    adapter_id: str
    version: int
    prompts: int
    per_prompt: int


Round = Annotated[HumanRound | AutomaticRound, Field(discriminator="mode")]


class _HasParams(Protocol):
    params: dict[str, Any]


class JobParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    steps: int  # as the job's total_steps when it was queued
    seed: int  # drives LoRA init, image choice and masking (and an automatic round's candidates)
    descriptor: str  # the style's, when the job was queued
    content: str | None = None
    round: Round | None = None  # a feedback round: what it trains on instead of the style's images

    def to_json(self) -> dict[str, Any]:
        """The column's JSON: a plain job has no `round` key."""
        data = self.model_dump(mode="json")
        if self.round is None:
            del data["round"]
        return data

    @classmethod
    def of(cls, job: _HasParams) -> JobParams:
        return cls.model_validate(job.params)
