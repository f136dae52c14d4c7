from __future__ import annotations

from fastapi import APIRouter

from api.http.deps import CurrentUser, SessionDep
from api.http.problems import problem_responses
from api.schemas import WebhookSecretPublic
from api.services import webhooks

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"], responses=problem_responses(401, 403))

VERIFY = (
    "Verify a delivery: `v1,` + base64(HMAC-SHA256(base64decode(secret without `whsec_`), "
    '"{webhook-id}.{webhook-timestamp}.{raw body}")) must equal one of the space-separated signatures in '
    "`webhook-signature` (Standard Webhooks; its libraries do this), and the timestamp be recent."
)


@router.get("/secret", response_model=WebhookSecretPublic, description="Your webhook signing secret. " + VERIFY)
def get_webhook_secret(user: CurrentUser, session: SessionDep) -> WebhookSecretPublic:
    return WebhookSecretPublic(secret=webhooks.signing_secret(session=session, owner=user))


@router.post("/secret/rotate", response_model=WebhookSecretPublic,
             description="Replace your signing secret; deliveries from now on (retries included) use the new one.")
def rotate_webhook_secret(user: CurrentUser, session: SessionDep) -> WebhookSecretPublic:
    return WebhookSecretPublic(secret=webhooks.signing_secret(session=session, owner=user, rotate=True))
