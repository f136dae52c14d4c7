"""The FastAPI application factory: `uvicorn api.main:create_app --factory`."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from api.http.docs import install_docs
from api.http.errors import install_handlers
from api.http.headers import SecurityHeadersMiddleware
from api.http.metrics import make_registry
from api.http.openapi import install_openapi_names, operation_id
from api.http.problems import install_problem_schema
from api.http.ratelimit import make_rate_limiter
from api.http.request_guard import RequestGuard
from api.http.security import load_secret
from api.http.streams import StreamHub
from api.http.upload_gate import UploadGate
from api.http.urls import BaseUrlMiddleware
from api.http.waiters import GenerationWaiters
from api.routes import adapters, admin, generations, health, jobs, keys, pages, styles, webhooks
from storage.blobs import blob_store_from_settings
from storage.db import make_engine, make_sessionmaker, schema_problem
from storage.settings import Settings, get_settings

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"


def _pool_args(settings: Settings) -> dict[str, float]:
    # A bounded wait for a pooled connection: past it the request is a 503 with Retry-After (api/http/errors.py).
    if settings.resolved_database_url.startswith("sqlite:///:memory:"):
        return {}
    return {"pool_size": settings.db_pool_size, "max_overflow": settings.db_max_overflow,
            "pool_timeout": settings.db_pool_timeout}


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app for `settings` (default: the process settings). One engine per app.

    The API never migrates (`styledrop migrate` does): it refuses to start against a reachable database whose
    schema is not at the newest migration. A database that is down at start-up does not stop it; `/readyz`
    answers 503 until the database answers and is at head.
    """
    settings = settings or get_settings()
    url = settings.resolved_database_url

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            problem = await run_in_threadpool(schema_problem, app.state.engine)
        except Exception as exc:  # stay up so /healthz and /readyz can say why
            logger.error("database unreachable at start-up: %s", exc)
        else:
            if problem is not None:
                raise RuntimeError(problem)
        yield
        app.state.engine.dispose()

    app = FastAPI(
        title="Styledrop",
        summary="Train a StyleDrop adapter for aMUSEd from one style image, and generate images in that style.",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,  # /docs and /redoc are served with local assets by install_docs (no CDN)
        redoc_url=None,
        generate_unique_id_function=operation_id,
    )
    engine = make_engine(url, **_pool_args(settings))
    app.state.settings = settings
    app.state.engine = engine
    app.state.sessionmaker = make_sessionmaker(engine)
    app.state.blobs = blob_store_from_settings(settings)
    app.state.secret = load_secret(settings)
    app.state.streams = StreamHub(app.state.sessionmaker, per_user=settings.max_streams_per_user,
                                  total=settings.max_streams_total)
    app.state.waiters = GenerationWaiters(app.state.sessionmaker, per_user=settings.max_waiters_per_user)
    app.state.rate_limiter = make_rate_limiter(settings)
    app.state.metrics_registry = make_registry(app.state.sessionmaker, settings)
    install_handlers(app)
    pages.install_not_found_page(app)  # after install_handlers: HTML 404s for browsers, problems for the rest
    # RequestGuard bounds the whole request body (style images, or init image + mask, plus fields) with a 413
    # problem; each file is then read in chunks against max_upload_bytes.
    app.add_middleware(RequestGuard, max_json_bytes=settings.max_json_bytes, max_body_bytes=settings.max_body_bytes)
    # ... and, before that, an upload's caller, caps and place are checked without reading its body
    app.add_middleware(UploadGate)
    for module in (styles, jobs, adapters, generations, webhooks, keys, admin, health, pages):
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    install_docs(app)
    install_problem_schema(app)
    install_openapi_names(app)
    app.add_middleware(SecurityHeadersMiddleware)
    app.add_middleware(BaseUrlMiddleware)  # absolute URLs in answers
    return app
