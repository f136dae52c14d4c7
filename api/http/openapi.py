"""The OpenAPI document as a client generator reads it: operation ids from the route functions' names (so a
generated client has `list_jobs`, `admin_list_jobs`, ... rather than ids built from path and verb), binary schemas
for the image and file downloads, and named schemas for multipart bodies (FastAPI calls them `Body_<operation>`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute

# FastAPI's `Body_<operation id>` schema of a multipart route -> the name the document gives it
FORM_SCHEMAS = {"Body_create_style": "StyleCreateForm"}


def operation_id(route: APIRoute) -> str:
    """A route's operation id: its function's name (unique across the API: admin routes are named `admin_*`)."""
    return route.name


def binary_response(media_type: str, description: str) -> dict[int | str, dict[str, Any]]:
    """A 200 whose body is a file (`format: binary`), as `responses=` of a route."""
    return {200: {"description": description,
                  "content": {media_type: {"schema": {"type": "string", "format": "binary"}}}}}


def _renamed(value: Any, names: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {k: (_ref(v, names) if k == "$ref" else _renamed(v, names)) for k, v in value.items()}
    if isinstance(value, list):
        return [_renamed(v, names) for v in value]
    return value


def _ref(ref: str, names: dict[str, str]) -> str:
    prefix, _, name = ref.rpartition("/")
    return f"{prefix}/{names.get(name, name)}"


def install_openapi_names(app: FastAPI) -> None:
    """Give multipart bodies their names (FORM_SCHEMAS) in the generated document, once."""
    build: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            components = schema.get("components", {}).get("schemas", {})
            for old, new in FORM_SCHEMAS.items():
                if old in components:
                    components[new] = {**components.pop(old), "title": new}
            app.openapi_schema = _renamed(schema, FORM_SCHEMAS)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
