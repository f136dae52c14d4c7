"""The web pages: server-rendered Jinja2 templates over the same data as the JSON API.

Page routes only read (for the first paint) and render; every change (upload, cancel, generate, delete, admin
actions) is made by the page's JavaScript through the JSON API with the session cookie and the CSRF token.
Sign-in and sign-out are the only page forms that change state here.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Coroutine
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlsplit

from fastapi import APIRouter, Depends, FastAPI, Form, Query, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.http.deps import SessionDep, current_user_from_cookie
from api.http.errors import NotFound
from api.http.security import CSRF_FIELD, SESSION_COOKIE, check_csrf, csrf_token
from api.schemas import RoundCreate, SamplesCreate
from api.services import gallery, history, styles
from storage.generation_settings import MAX_SEED, SETTING_NAMES
from storage.models import User
from storage.sessions import close_session, open_session
from storage.users import find_key
from trainer.contracts import limits
from trainer.contracts.prompts import FEEDBACK_CONTENTS, training_prompt

logger = logging.getLogger(__name__)



class SignInRequired(Exception):
    """Raised by the `SignedInUser` dependency; a page route answers it with a redirect to the sign-in page."""


class PageRoute(APIRoute):
    """A page route: a request without a live session is sent to /signin (and back here afterwards)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def page(request: Request) -> Response:
            try:
                return await handler(request)
            except SignInRequired:
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                return RedirectResponse(f"/signin?next={quote(target, safe='/')}",
                                        status_code=status.HTTP_303_SEE_OTHER)

        return page


def _signed_in(request: Request, session: SessionDep) -> User:
    user = current_user_from_cookie(request, session)
    if user is None:
        raise SignInRequired
    return user


SignedInUser = Annotated[User, Depends(_signed_in)]

router = APIRouter(include_in_schema=False, route_class=PageRoute)
templates = Jinja2Templates(directory=Path(__file__).resolve().parent.parent / "templates")
# The generate form's bounds and defaults, and the settings "use these settings again" restores
templates.env.globals.update(limits=limits, setting_names=list(SETTING_NAMES), max_seed=MAX_SEED,
                             training_prompt=training_prompt)  # what an uncaptioned reference trains on
templates.env.filters["g"] = lambda number: f"{number:g}"  # 1.0 → 1, as the API's docs write the numbers
# One time format on every page, the same as styledrop.js's fmtTime: "2026-05-01 14:03 UTC"
templates.env.filters["when"] = lambda t: t.strftime("%Y-%m-%d %H:%M UTC") if t else "—"

STYLES_PAGE_LIMIT = 200
# The round settings' bounds and defaults, as the API's schemas define them
ROUND_LIMITS = {
    "prompts": SamplesCreate.model_fields["prompts"].default,
    "max_prompts": len(FEEDBACK_CONTENTS),
    "images_per_prompt": SamplesCreate.model_fields["images_per_prompt"].default,
    "per_prompt": RoundCreate.model_fields["per_prompt"].default,
    "max_per_prompt": max(m.le for m in RoundCreate.model_fields["per_prompt"].metadata if hasattr(m, "le")),
}
GALLERY_LIMIT = 12  # the style page shows the newest; the gallery pages through the rest


def _safe_next(target: str | None, default: str = "/styles") -> str:
    """Only same-site paths: never an absolute or scheme-relative URL (open redirect)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return default
    return target


def _render(request: Request, name: str, user: User | None, status_code: int = 200, **context: Any) -> HTMLResponse:
    cookie = request.cookies.get(SESSION_COOKIE)
    token = csrf_token(request.app.state.secret, cookie) if user is not None and cookie else ""
    response = templates.TemplateResponse(
        request, name, {"user": user, "csrf_token": token, "settings": request.app.state.settings, **context},
        status_code=status_code,
    )
    response.headers["Cache-Control"] = "no-store"
    # CSP, nosniff, framing and Referrer-Policy: api/http/headers.py, on every HTML response
    return response


def _same_origin(request: Request) -> bool:
    """A form POST whose Origin (when the browser sends one) is this site."""
    origin = request.headers.get("origin")
    if not origin or origin == "null":
        return origin is None
    return urlsplit(origin).netloc == request.headers.get("host", "")


@router.get("/")
def home(request: Request, session: SessionDep) -> Response:
    user = current_user_from_cookie(request, session)
    return RedirectResponse("/styles" if user else "/signin", status_code=status.HTTP_303_SEE_OTHER)


@router.get("/signin")
def signin_page(request: Request, session: SessionDep, next: str | None = None) -> Response:
    if current_user_from_cookie(request, session) is not None:
        return RedirectResponse(_safe_next(next), status_code=status.HTTP_303_SEE_OTHER)
    return _render(request, "signin.html", None, next=_safe_next(next))


@router.post("/signin")
def signin(
    request: Request,
    session: SessionDep,
    api_key: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "/styles",
) -> Response:
    """Exchange an API key for a session cookie (HttpOnly, SameSite=Lax; Secure over HTTPS)."""
    if not _same_origin(request):
        return _render(request, "signin.html", None, status_code=403, next=_safe_next(next),
                       error="This sign-in form was sent from another site.")
    found = find_key(session, api_key.strip())  # the API's own check: constant-time, revoked and disabled refused
    if found is None:
        return _render(request, "signin.html", None, status_code=401, next=_safe_next(next),
                       error="That API key is not valid, or it was revoked. Check it and try again.")
    row, user = found
    settings = request.app.state.settings
    max_age = settings.session_max_age_seconds
    token = open_session(session, user_id=user.id, api_key_id=row.id, max_age=timedelta(seconds=max_age))
    session.commit()
    logger.info("user %s signed in with key %s", user.id, row.id)
    response = RedirectResponse(_safe_next(next), status_code=status.HTTP_303_SEE_OTHER)
    response.set_cookie(
        SESSION_COOKIE, token, max_age=max_age, path="/", httponly=True, samesite="lax",
        secure=settings.cookie_secure or request.url.scheme == "https",
    )
    return response


@router.post("/signout")
def signout(request: Request, session: SessionDep, csrf: Annotated[str, Form(alias=CSRF_FIELD)] = "") -> Response:
    """End the session server-side (a copy of the cookie stops working too), then drop the cookie."""
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie and not check_csrf(request.app.state.secret, cookie, csrf):
        return Response("Missing or invalid CSRF token; go back, reload the page and sign out again.",
                        status_code=403, media_type="text/plain")
    if cookie and close_session(session, cookie):
        session.commit()
    response = RedirectResponse("/signin", status_code=status.HTTP_303_SEE_OTHER)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="lax")
    return response


@router.get("/styles")
def styles_page(request: Request, session: SessionDep, user: SignedInUser) -> Response:
    listed = styles.list_styles(session=session, owner=user, limit=STYLES_PAGE_LIMIT, offset=0)
    items = styles.styles_with_jobs(session, listed)
    titles = history.job_titles(session, [job for _, job in items if job is not None])
    return _render(request, "styles.html", user, items=items, titles=titles)


@router.get("/styles/new")
def new_style_page(request: Request, user: SignedInUser) -> Response:
    return _render(request, "new_style.html", user)


@router.get("/styles/{style_id}")
def style_page(style_id: str, request: Request, session: SessionDep, user: SignedInUser) -> Response:
    try:
        style = styles.get_style(session=session, owner=user, style_id=style_id)
    except NotFound:
        return _render(request, "error.html", user, status_code=404, title="Style not found",
                       message="This style does not exist, was deleted, or belongs to someone else.")
    ((style_view, job),) = styles.styles_with_jobs(session, [styles.style_public(session, style)])
    past = history.style_history(session, style)
    shots = gallery.gallery_page(session=session, owner=user, page=1, per_page=GALLERY_LIMIT,
                                 adapter_ids=gallery.style_adapter_ids(session=session, style_id=style.id))
    versions = [(e.adapter_id, f"v{e.version} (default)" if e.is_default else f"v{e.version}") for e in past.live]
    subjects = gallery.choices(session=session, owner=user, kind="subject") if style.kind == "style" else []
    return _render(request, "style.html", user, style=style_view, job=job, gallery=shots, history=past,
                   current=next((e for e in past.entries if job and e.job.id == job.id), None),
                   version_choices=versions, round_limits=ROUND_LIMITS,
                   subjects=subjects)


@router.get("/gallery")
def gallery_page(request: Request, session: SessionDep, user: SignedInUser,
                 page: Annotated[str, Query()] = "1") -> Response:
    number = int(page) if page.isdecimal() and len(page) <= 6 else 0
    if not 1 <= number <= gallery.MAX_PAGE:
        return _render(request, "error.html", user, status_code=404, title="No such gallery page",
                       message=f"Gallery pages are numbered from 1; there is no page {page[:20]!r}.")
    result = gallery.gallery_page(session=session, owner=user, page=number)
    return _render(request, "gallery.html", user, gallery=result,
                   styles=gallery.choices(session=session, owner=user, kind="style"),
                   subjects=gallery.choices(session=session, owner=user, kind="subject"))


@router.get("/keys")
def keys_page(request: Request, user: SignedInUser) -> Response:
    return _render(request, "keys.html", user)


@router.get("/admin")
def admin_page(request: Request, user: SignedInUser) -> Response:
    if not user.is_admin:
        return _render(request, "error.html", user, status_code=403, title="Admins only",
                       message="The admin pages need an admin account. Sign in with an admin API key to see them.")
    return _render(request, "admin.html", user)


def _wants_html(request: Request) -> bool:
    """A browser asking for a page: not an API path, and an Accept that names HTML but not JSON."""
    if request.url.path.startswith("/v1/"):
        return False
    accept = request.headers.get("accept", "")
    return "text/html" in accept and "json" not in accept


def install_not_found_page(app: FastAPI) -> None:
    """A mistyped page path gets an HTML page with the site's header and a way back; API paths and clients that
    accept JSON keep the problem document (api/http/errors.py). Call after install_handlers."""
    problem_handler = app.exception_handlers[StarletteHTTPException]

    async def not_found(request: Request, exc: Exception) -> Response:
        if isinstance(exc, StarletteHTTPException) and exc.status_code == 404 and _wants_html(request):
            with request.app.state.sessionmaker() as session:
                user = current_user_from_cookie(request, session)
                return _render(request, "error.html", user, status_code=404, title="Page not found",
                               message=f"There is no page at {request.url.path[:200]}. Check the address, or go on "
                                       "from one of the links above.")
        response = problem_handler(request, exc)
        return await response if inspect.isawaitable(response) else response

    app.add_exception_handler(StarletteHTTPException, not_found)
