"""A Python client for the Styledrop API: `from styledrop import Client` (styledrop/client.py).

It imports only httpx and the standard library, never the service's own packages (tests/test_architecture.py).
"""

from styledrop.client import Client
from styledrop.errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    FieldError,
    GoneError,
    IntegrityError,
    InternalServerError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitError,
    ServiceUnavailableError,
    StyledropError,
    UnprocessableEntityError,
    UnsupportedMediaTypeError,
    WaitTimeoutError,
)
from styledrop.models import Adapter, ErrorInfo, Generation, Job, JobEvent, Page, Style, StyleCreated, Version

__all__ = [
    "APIConnectionError", "APIError", "APITimeoutError", "Adapter", "AuthenticationError", "BadRequestError",
    "Client", "ConflictError", "ErrorInfo", "FieldError", "Generation", "GoneError", "IntegrityError",
    "InternalServerError", "Job", "JobEvent", "NotFoundError", "Page", "PayloadTooLargeError",
    "PermissionDeniedError", "RateLimitError", "ServiceUnavailableError", "Style", "StyleCreated",
    "StyledropError", "UnprocessableEntityError", "UnsupportedMediaTypeError", "Version", "WaitTimeoutError",
]
