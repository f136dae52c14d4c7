from __future__ import annotations

from fastapi import APIRouter, Response, status

from api.http.deps import AdapterId, BlobsDep, CurrentUser, PagingDep, SessionDep
from api.http.openapi import binary_response
from api.http.problems import problem_responses
from api.schemas import AdapterPage, AdapterPublic
from api.services import adapters

router = APIRouter(prefix="/v1/adapters", tags=["adapters"], responses=problem_responses(401, 403, 404, 409, 410))


@router.get("", response_model=AdapterPage)
def list_adapters(user: CurrentUser, session: SessionDep, paging: PagingDep) -> AdapterPage:
    """Your adapters (every version of every style), newest first, a page at a time (follow `next`)."""
    found = adapters.list_adapters(session=session, owner=user, limit=paging.fetch, offset=paging.offset)
    return paging.page(AdapterPage, [AdapterPublic.model_validate(a) for a in found])


@router.get("/{adapter_id}", response_model=AdapterPublic)
def get_adapter(adapter_id: AdapterId, user: CurrentUser, session: SessionDep) -> AdapterPublic:
    """One of your adapters: its style, version, training settings, CLIP scores and file checksum."""
    return AdapterPublic.model_validate(adapters.get_adapter(session=session, owner=user, adapter_id=adapter_id))


@router.get(
    "/{adapter_id}/file",
    response_class=Response,
    responses=binary_response("application/octet-stream", "The safetensors file."),
)
def download_adapter(adapter_id: AdapterId, user: CurrentUser, session: SessionDep, blobs: BlobsDep) -> Response:
    """The adapter's safetensors file, verified against its recorded sha256 before it is sent."""
    adapter = adapters.get_adapter(session=session, owner=user, adapter_id=adapter_id)
    data = adapters.adapter_bytes(blobs=blobs, adapter=adapter)
    return Response(
        data,
        media_type="application/octet-stream",
        headers={
            "Content-Disposition": f'attachment; filename="{adapters.adapter_filename(adapter)}"',
            "X-Content-SHA256": adapter.sha256,
        },
    )


@router.delete("/{adapter_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_adapter(adapter_id: AdapterId, user: CurrentUser, session: SessionDep) -> None:
    """Delete one of your adapters (a style's version): it can no longer be downloaded or generated with;
    generations made with it stay."""
    adapters.delete_adapter(session=session, owner=user, adapter_id=adapter_id)
