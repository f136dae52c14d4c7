from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, Header, Query, Response, UploadFile, status

from api.http.deps import (
    BlobsDep,
    CurrentUser,
    ImageIndex,
    PagingDep,
    RateLimitedUser,
    SessionDep,
    SettingsDep,
    StyleId,
)
from api.http.forms import StrictFormRoute
from api.http.openapi import binary_response
from api.http.polling import RETRY_AFTER_HEADER, polled
from api.http.problems import problem_responses
from api.schemas import (
    WEBHOOK_DOC,
    WEBHOOK_EVENTS_DOC,
    JobPublic,
    RoundCreate,
    SamplesCreate,
    SamplesPublic,
    StyleCreatedPublic,
    StyleJobCreate,
    StylePage,
    StylePublic,
    StyleUpdate,
    VersionPage,
)
from api.services import jobs, lookup, rounds, styles, uploads, versions

router = APIRouter(prefix="/v1/styles", tags=["styles"], route_class=StrictFormRoute,
                   responses=problem_responses(400, 401, 403, 404, 409, 410, 413, 415, 429))

PNG = binary_response("image/png", "A PNG image.")
# the multipart body's example (its schema is StyleCreateForm; files appear as their names)
_FORM_EXAMPLE: dict[str, Any] = {"requestBody": {"content": {"multipart/form-data": {"example": {
    "image": ["house.png"], "descriptor": "watercolor painting", "content": "a house", "steps": 60}}}}}


_QUEUED: dict[int | str, dict[str, Any]] = {202: {"description": "Queued: poll it.", "headers": RETRY_AFTER_HEADER}}


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=StyleCreatedPublic, responses=_QUEUED,
             openapi_extra=_FORM_EXAMPLE)
def create_style(
    user: RateLimitedUser,
    session: SessionDep,
    blobs: BlobsDep,
    settings: SettingsDep,
    response: Response,
    image: Annotated[list[UploadFile], File(description=(
        "The style's reference image(s), or the subject's photos: PNG, JPEG, WebP or GIF. Repeat the field for "
        "several, up to STYLEDROP_MAX_STYLE_IMAGES (5 by default)."))],
    descriptor: Annotated[str | None, Form(description=(
        'The style in words, e.g. "watercolor painting" (1..200). Required for kind "style"; a subject '
        "defaults to its class word."))] = None,
    content: Annotated[str | None, Form(description="What the image shows (optional).")] = None,
    caption: Annotated[list[str] | None, Form(description=(
        "One caption per image, in the images' order (repeat the field); empty or missing = the StyleDrop "
        'prompt "<content> in <descriptor> style". Not for subjects.'))] = None,
    kind: Annotated[Literal["style", "subject"], Form(description=(
        '"style" (StyleDrop) or "subject": 1..STYLEDROP_MAX_STYLE_IMAGES photos of one subject, trained '
        'DreamBooth-style on "a photo of sks <class_word>"; mix it with a style at generation time '
        "(subject_adapter_id)."))] = "style",
    class_word: Annotated[str | None, Form(description=(
        'What the subject is, e.g. "dog" (1..64): required for kind "subject".'))] = None,
    steps: Annotated[int | None, Form(description=(
        "Training steps (1..STYLEDROP_MAX_TRAIN_STEPS, 4000 by default)."))] = None,
    seed: Annotated[int | None, Form()] = None,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
    webhook: Annotated[str | None, Form(description=WEBHOOK_DOC)] = None,
    webhook_events_filter: Annotated[list[str] | None, Form(
        description=WEBHOOK_EVENTS_DOC + " Repeat the field or separate with commas.")] = None,
) -> StyleCreatedPublic:
    """Upload a style's reference image(s), or a subject's photos, and queue its training job. A repeated
    `Idempotency-Key` with the same request returns the same style and job (200); with a different request it is
    refused (409)."""
    # left where the parser spooled them, read one at a time when needed (api/services/references.py)
    data = [uploads.FileSource(f.file, max_bytes=settings.max_upload_bytes, what="image")
            for f in image[: settings.max_style_images + 1]]  # one past the cap is enough to refuse it
    created = styles.create_style(
        session=session, blobs=blobs, settings=settings, owner=user, images=data, descriptor=descriptor,
        content=content, steps=steps, seed=seed, idempotency_key=idempotency_key, webhook=webhook,
        webhook_events=[e.strip() for v in webhook_events_filter or [] for e in v.split(",") if e.strip()] or None,
        captions=caption, kind=kind, class_word=class_word,
    )
    if not created.created:
        response.status_code = status.HTTP_200_OK
    return StyleCreatedPublic(style=styles.style_public(session, created.style),
                              job=polled(response, jobs.job_public(session, created.job)))


@router.get("", response_model=StylePage)
def list_styles(user: CurrentUser, session: SessionDep, paging: PagingDep) -> StylePage:
    """Your styles and subjects, newest first, a page at a time (follow `next`)."""
    return paging.page(StylePage, styles.list_styles(session=session, owner=user, limit=paging.fetch,
                                                     offset=paging.offset))


@router.get("/{style_id}", response_model=StylePublic)
def get_style(style_id: StyleId, user: CurrentUser, session: SessionDep) -> StylePublic:
    """One of your styles or subjects: its descriptor, images, captions and default version."""
    return styles.style_public(session, styles.get_style(session=session, owner=user, style_id=style_id))


@router.patch("/{style_id}", response_model=StylePublic)
def update_style(style_id: StyleId, body: StyleUpdate, user: CurrentUser, session: SessionDep) -> StylePublic:
    """Choose the style's default version: the adapter a generation naming only `style_id` uses. Until one is
    chosen the newest version is the default; once chosen, new rounds do not change it."""
    style = versions.set_default(session=session, owner=user, style_id=style_id, version=body.default_version)
    return styles.style_public(session, style)


@router.get("/{style_id}/versions", response_model=VersionPage)
def list_versions(style_id: StyleId, user: CurrentUser, session: SessionDep, paging: PagingDep) -> VersionPage:
    """The style's adapter versions, v1 first, each with its CLIP text and style scores and whether it is the
    default."""
    found = versions.list_versions(session=session, owner=user, style_id=style_id)
    return paging.page(VersionPage, found[paging.offset: paging.offset + paging.fetch])


@router.get("/{style_id}/image", response_class=Response, responses=PNG)
def get_style_image(style_id: StyleId, user: CurrentUser, session: SessionDep, blobs: BlobsDep) -> Response:
    """The style's first reference image (as stored: PNG)."""
    style = styles.get_style(session=session, owner=user, style_id=style_id)
    return Response(lookup.read_blob(blobs, style.image_key, what="style image"), media_type="image/png")


@router.get("/{style_id}/images/{n}", response_class=Response, responses=PNG)
def get_style_reference(style_id: StyleId, n: ImageIndex, user: CurrentUser, session: SessionDep,
                        blobs: BlobsDep) -> Response:
    """Reference image `n` (0-based, upload order) of a style or subject; `captions[n]` is its caption."""
    style = styles.get_style(session=session, owner=user, style_id=style_id)
    return Response(lookup.read_blob(blobs, styles.reference_key(style, n), what="style image"),
                    media_type="image/png")


@router.delete("/{style_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_style(style_id: StyleId, user: CurrentUser, session: SessionDep) -> None:
    """Soft-delete the style; its queued or running job is cancelled."""
    styles.delete_style(session=session, owner=user, style_id=style_id)


@router.post("/{style_id}/jobs", status_code=status.HTTP_202_ACCEPTED, response_model=JobPublic, responses=_QUEUED)
def create_style_job(
    style_id: StyleId, user: RateLimitedUser, session: SessionDep, settings: SettingsDep, response: Response,
    body: StyleJobCreate | None = None,
) -> JobPublic:
    """Train the style again from its stored image (after a cancelled or failed job, or a deleted adapter).
    409 while it still has an unfinished job."""
    body = body or StyleJobCreate()
    job = styles.create_style_job(session=session, settings=settings, owner=user, style_id=style_id,
                                  steps=body.steps, seed=body.seed)
    return polled(response, jobs.job_public(session, job))


@router.post("/{style_id}/samples", status_code=status.HTTP_202_ACCEPTED, response_model=SamplesPublic)
def create_samples(style_id: StyleId, user: RateLimitedUser, session: SessionDep, blobs: BlobsDep,
                   settings: SettingsDep, body: SamplesCreate | None = None) -> SamplesPublic:
    """Queue one generation per feedback prompt ("A chihuahua in <descriptor> style", ...) with the style's default
    version (or `version`): the images a human feedback round is picked from. Answers the set (`items`, in prompt
    order) with its progress; GET /v1/styles/{id}/samples shows it as it goes."""
    return rounds.create_samples(session=session, blobs=blobs, settings=settings, owner=user, style_id=style_id,
                                 body=body or SamplesCreate())


@router.get("/{style_id}/samples", response_model=SamplesPublic)
def get_samples(style_id: StyleId, user: CurrentUser, session: SessionDep,
                version: Annotated[int | None, Query(ge=1, description="Default: the newest set of any version.")]
                = None) -> SamplesPublic:
    """The newest samples set of the style (of `version` when given): its generations and how many are done
    (`done` of `total`, `progress`, `eta_seconds`); an empty set before the first."""
    return rounds.get_samples(session=session, owner=user, style_id=style_id, version=version)


@router.post("/{style_id}/rounds", status_code=status.HTTP_202_ACCEPTED, response_model=JobPublic, responses=_QUEUED)
def create_round(style_id: StyleId, body: RoundCreate, user: RateLimitedUser, session: SessionDep,
                 settings: SettingsDep, response: Response) -> JobPublic:
    """Start a feedback round: a training job whose adapter becomes the style's next version. `human` trains on the
    picked images (`selection`: generation id and image index, each captioned with its generation's prompt);
    `automatic` lets the worker render the default version over the feedback prompts and keep the best image per
    prompt by CLIP score. A bad selection (unknown or someone else's generation, an image index it does not
    have, a generation of another style, none at all) is refused and creates nothing. 409 while the style has an
    unfinished job."""
    job = rounds.create_round(session=session, settings=settings, owner=user, style_id=style_id, body=body)
    return polled(response, jobs.job_public(session, job))
