from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, Response, status
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from api.http.deps import (
    BlobsDep,
    CurrentUser,
    GenerationId,
    ImageIndex,
    PagingDep,
    RateLimitedUser,
    SessionDep,
    SessionFactoryDep,
    SettingsDep,
    WaitDep,
)
from api.http.errors import Invalid, UnsupportedMedia
from api.http.forms import StrictFormRoute
from api.http.openapi import binary_response
from api.http.polling import RETRY_AFTER_HEADER, set_retry_after
from api.http.problems import problem_responses
from api.http.waiters import GenerationWaiters
from api.schemas import GenerationCreate, GenerationPage, GenerationPublic
from api.services import generation_ops, generations, lookup, uploads
from storage import urls
from storage.blobs import BlobStore
from storage.error_codes import ErrorCode
from storage.models import Generation, User
from storage.settings import Settings
from storage.states import GENERATION_FINAL

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/generations", tags=["generations"], route_class=StrictFormRoute,
                   responses=problem_responses(400, 401, 403, 404, 409, 410, 413, 415, 429))


_create_schema = GenerationCreate.model_json_schema()
_multipart_schema: dict[str, Any] = {
    "type": "object",
    "required": ["prompt"],
    "properties": {
        **{name: {**prop, "type": prop.get("type", "string")} for name, prop in _create_schema["properties"].items()},
        "init_image": {"type": "string", "format": "binary", "description": "Image-to-image / inpainting source."},
        "mask": {"type": "string", "format": "binary", "description": "Inpainting mask (white = repaint)."},
    },
    "examples": [{"prompt": "a cat in watercolor painting style", "style_id": _create_schema["examples"][0]["style_id"],
                  "init_image": "photo.png", "strength": 0.6}],
}
_OPENAPI_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": _create_schema},
            "multipart/form-data": {"schema": _multipart_schema},
        },
    }
}


def _validate(fields: dict[str, Any]) -> GenerationCreate:
    try:
        return GenerationCreate.model_validate(fields)
    except ValidationError as exc:  # located under "body", as FastAPI locates the errors of a body it validates
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])}
                                      for e in exc.errors(include_url=False)], body=fields) from exc


async def _read_file(upload: Any, *, what: str, max_bytes: int) -> bytes | None:
    if upload is None or upload == "":
        return None
    if not isinstance(upload, UploadFile):
        raise Invalid(f"{what} must be a file part", code=ErrorCode.BAD_FIELD)
    return await run_in_threadpool(uploads.read_bounded, upload.file, max_bytes=max_bytes, what=what)


async def _parse(request: Request, settings: Settings) -> tuple[GenerationCreate, bytes | None, bytes | None]:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json":
        try:
            body = await request.json()
        except (ValueError, RecursionError) as exc:
            raise Invalid("the body is not valid JSON", code=ErrorCode.BAD_JSON) from exc
        if not isinstance(body, dict):
            raise Invalid("the body must be a JSON object", code=ErrorCode.BAD_JSON)
        return _validate(body), None, None
    if content_type == "multipart/form-data":
        form = await request.form(max_files=2, max_fields=20)
        fields: dict[str, Any] = {}
        for name, value in form.multi_items():
            if name in ("init_image", "mask"):
                continue
            if isinstance(value, UploadFile):
                raise Invalid(f"{name} must be a plain field", code=ErrorCode.BAD_FIELD)
            if value != "" or name in ("prompt",):
                fields[name] = value
        parsed = _validate(fields)
        init = await _read_file(form.get("init_image"), what="init_image", max_bytes=settings.max_upload_bytes)
        mask = await _read_file(form.get("mask"), what="mask", max_bytes=settings.max_upload_bytes)
        return parsed, init, mask
    raise UnsupportedMedia("send application/json, or multipart/form-data with init_image",
                           code=ErrorCode.BAD_CONTENT_TYPE)


def _create(
    factory: sessionmaker[Session], blobs: BlobStore, settings: Settings, owner: User, request: GenerationCreate,
    init: bytes | None, mask: bytes | None, idempotency_key: str | None,
) -> tuple[GenerationPublic, bool]:
    with factory() as session:
        created = generations.create_generation(
            session=session, blobs=blobs, settings=settings, owner=owner, request=request, init_image=init, mask=mask,
            idempotency_key=idempotency_key,
        )
        return generations.generation_view(session, created.generation), created.created


def _load(factory: sessionmaker[Session], generation_id: str) -> GenerationPublic | None:
    with factory() as session:
        gen = session.get(Generation, generation_id)
        return generations.generation_view(session, gen) if gen is not None else None


_PENDING_HEADERS: dict[int | str, dict[str, Any]] = {202: {"description": "Queued or running: poll `Location`.",
                                                           "headers": {
    "Location": {"description": "The generation's absolute URL.", "schema": {"type": "string"}},
    **RETRY_AFTER_HEADER,
}}}


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=GenerationPublic, openapi_extra=_OPENAPI_BODY,
             responses=_PENDING_HEADERS)
async def create_generation(
    request: Request,
    response: Response,
    user: RateLimitedUser,
    settings: SettingsDep,
    blobs: BlobsDep,
    factory: SessionFactoryDep,
    wait: WaitDep,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> GenerationPublic:
    """Queue a generation: JSON `GenerationCreate`, or multipart with the same fields plus `init_image` (and
    `strength`) for image-to-image, or `init_image` + `mask` for inpainting. `?wait=SECONDS` or `Prefer:
    wait=SECONDS` (at most STYLEDROP_MAX_WAIT_SECONDS; larger values are clamped) answers 200 with the finished
    generation when it ends in time, else 202 with `Location` (poll it) and `Retry-After` (from the estimate), and
    the generation's `queue_position`, `progress` and `eta_seconds`. A repeated `Idempotency-Key` with the same
    request answers the same generation (200); with another request, 409."""
    parsed, init, mask = await _parse(request, settings)
    gen, created = await run_in_threadpool(_create, factory, blobs, settings, user, parsed, init, mask, idempotency_key)
    if not created:
        response.status_code = status.HTTP_200_OK
    waited: bool | None = True  # None: the caller's waiting places were all taken, so no wait was honoured
    if wait.seconds > 0 and gen.state not in GENERATION_FINAL:  # the process's one poller watches it (api/waiters.py)
        waiters: GenerationWaiters = request.app.state.waiters
        waited = await waiters.wait(user.id, gen.id, wait.seconds, request.is_disconnected)
        if waited:
            current = await run_in_threadpool(_load, factory, gen.id)
            if current is not None:
                gen = current
        if gen.state in GENERATION_FINAL:
            response.status_code = status.HTTP_200_OK
    if waited is not None:
        wait.applied(response)
    response.headers["Location"] = urls.absolute(f"/v1/generations/{gen.id}")
    set_retry_after(response, gen.eta_seconds, final=gen.state in GENERATION_FINAL)
    return gen


@router.get("", response_model=GenerationPage)
def list_generations(user: CurrentUser, session: SessionDep, paging: PagingDep) -> GenerationPage:
    """Your generations, newest first, a page at a time (follow `next`)."""
    gens = generations.list_generations(session=session, owner=user, limit=paging.fetch, offset=paging.offset)
    return paging.page(GenerationPage, generations.generation_views(session, gens))


@router.get("/{generation_id}", response_model=GenerationPublic,
            responses={200: {"description": "The generation.", "headers": RETRY_AFTER_HEADER}})
def get_generation(generation_id: GenerationId, user: CurrentUser, session: SessionDep,
                   response: Response) -> GenerationPublic:
    """One of your generations; while it is unfinished the answer has `Retry-After` (from `eta_seconds`)."""
    gen = generations.generation_view(
        session, generations.get_generation(session=session, owner=user, generation_id=generation_id))
    set_retry_after(response, gen.eta_seconds, final=gen.state in GENERATION_FINAL)
    return gen


@router.get("/{generation_id}/images/{n}", response_class=Response,
            responses=binary_response("image/png", "A generated PNG."))
def get_generation_image(
    generation_id: GenerationId, n: ImageIndex, user: CurrentUser, session: SessionDep, blobs: BlobsDep
) -> Response:
    """The n-th (0-based) image of a generation."""
    gen = generations.get_generation(session=session, owner=user, generation_id=generation_id)
    key = generations.generation_image_key(gen, n)
    return Response(lookup.read_blob(blobs, key, what="image"), media_type="image/png")


@router.post("/{generation_id}/cancel", status_code=status.HTTP_202_ACCEPTED, response_model=GenerationPublic)
def cancel_generation(generation_id: GenerationId, user: CurrentUser, session: SessionDep) -> GenerationPublic:
    """Cancel a queued or running generation: it ends `failed` with `error_code` `cancelled_on_request` at once (a
    running one's worker drops its images and stops sampling at its next step when nothing of its batch is left); 409
    `generation_final` when it has already finished."""
    gen = generations.cancel_generation(session=session, owner=user, generation_id=generation_id)
    return generations.generation_view(session, gen)


@router.delete("/{generation_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_generation(generation_id: GenerationId, user: CurrentUser, session: SessionDep, blobs: BlobsDep) -> None:
    """Delete a finished generation and its images (409 while it is queued or running; 404 for others' ids)."""
    generation_ops.delete_generation(session=session, blobs=blobs, owner=user, generation_id=generation_id)
