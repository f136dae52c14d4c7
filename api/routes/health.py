from __future__ import annotations

import logging

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from api.http.deps import MetricsAccess, SettingsDep
from api.http.problems import problem, problem_responses
from storage import broker
from storage.db import schema_problem
from storage.error_codes import ErrorCode

logger = logging.getLogger(__name__)

router = APIRouter(tags=["ops"], responses=problem_responses())
READY_RETRY_AFTER = "5"


@router.get("/healthz", responses={200: {"description": "Up.",
                                         "content": {"application/json": {"example": {"status": "ok"}}}}})
def get_health() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


def _check_db(request: Request) -> str:
    """"ok", or why the database is not ready (it answers, but its schema is behind); raises when unreachable."""
    return schema_problem(request.app.state.engine) or "ok"


@router.get("/readyz", responses={
    200: {"description": "Ready.", "content": {"application/json": {
        "schema": {"type": "object"}, "example": {"status": "ready", "checks": {"database": "ok", "broker": "ok"}}}}},
    **problem_responses(s503="Not ready (`not_ready`, with Retry-After): `checks` has the reason.")})
async def get_readiness(request: Request, settings: SettingsDep) -> JSONResponse:
    """The database answers and its schema is at the newest migration (never migrated here), and the broker is
    reachable."""
    checks: dict[str, str] = {}
    try:
        checks["database"] = await run_in_threadpool(_check_db, request)
    except Exception as exc:
        logger.warning("readyz: database: %s", exc)
        checks["database"] = f"unreachable: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    try:
        await run_in_threadpool(broker.ping, settings)
        checks["broker"] = "ok"
    except Exception as exc:
        logger.warning("readyz: broker: %s", exc)
        checks["broker"] = f"unreachable: {type(exc).__name__}: {str(exc)[:200]}"
    failed = {name: value for name, value in checks.items() if value != "ok"}
    if failed:
        return problem(503, ErrorCode.NOT_READY, "not ready: " + "; ".join(f"{k}: {v}" for k, v in failed.items()),
                       path=request.url.path, headers={"Retry-After": READY_RETRY_AFTER}, checks=checks)
    return JSONResponse({"status": "ready", "checks": checks})


_METRICS_EXAMPLE = ("# HELP styledrop_jobs Training jobs by state\n# TYPE styledrop_jobs gauge\n"
                    'styledrop_jobs{state="queued"} 2.0\n')


@router.get("/metrics", response_class=Response, responses={
    200: {"description": "Prometheus text format.",
          "content": {"text/plain": {"schema": {"type": "string"}, "example": _METRICS_EXAMPLE}}},
    **problem_responses(401, 403)})
async def get_metrics(request: Request, _: MetricsAccess) -> Response:
    """Prometheus metrics (computed from the database at scrape time). Needs an admin key unless
    `STYLEDROP_METRICS_PUBLIC=true`."""
    body = await run_in_threadpool(generate_latest, request.app.state.metrics_registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
