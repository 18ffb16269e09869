"""Errors as RFC 9457 problem details (``application/problem+json``), never a stack trace.

Every failure the API answers is a JSON object with ``type``, ``title``, ``status``, ``detail`` and
``instance`` (the request path), plus extension members where they help (``problems`` for an invalid
bundle, ``operation`` for an operation this version does not have). Library errors map to statuses
by type in :data:`STATUS_OF`; anything unexpected is a 500 whose detail names only the error type.
"""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from rule_engine.errors import (
    ActivationTimeNotReachedError,
    BundleTrustError,
    BundleValidationError,
    ConflictError,
    DeploymentError,
    InvalidStrategyError,
    InvalidTransitionError,
    NoPreviousVersionError,
    RolloutInProgressError,
    RuleEngineError,
    StoreError,
    VersionNotFoundError,
)

__all__ = ["MEDIA_TYPE", "STATUS_OF", "ApiProblem", "install", "problem_response"]

MEDIA_TYPE = "application/problem+json"
_TYPE_BASE = "urn:rule-engine:problem:"
_log = structlog.get_logger("rule_engine")

# Most specific first: the first matching type decides the status.
STATUS_OF: tuple[tuple[type[Exception], int, str], ...] = (
    (BundleTrustError, 403, "untrusted-bundle"),
    (BundleValidationError, 422, "invalid-bundle"),
    (InvalidStrategyError, 422, "invalid-strategy"),
    (VersionNotFoundError, 404, "version-not-found"),
    (ConflictError, 409, "conflict"),
    (StoreError, 503, "store-unavailable"),
    (RolloutInProgressError, 409, "rollout-in-progress"),
    (NoPreviousVersionError, 409, "no-previous-version"),
    (ActivationTimeNotReachedError, 409, "activation-time-not-reached"),
    (InvalidTransitionError, 409, "invalid-transition"),
    (DeploymentError, 409, "deployment-error"),
    (RuleEngineError, 400, "rule-engine-error"),
)
_TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Request body too large",
    422: "Unprocessable content",
    429: "Too many requests",
    500: "Internal server error",
    501: "Not implemented",
    503: "Service unavailable",
}


class ApiProblem(Exception):
    """Raised by an endpoint to answer with a problem document."""

    def __init__(self, status: int, slug: str, detail: str, **extensions: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.slug = slug
        self.detail = detail
        self.extensions = extensions
        self.headers: dict[str, str] = {}


def problem_response(
    status: int,
    slug: str,
    detail: str,
    instance: str,
    headers: dict[str, str] | None = None,
    **extensions: Any,
) -> JSONResponse:
    """A problem+json response."""
    body = {
        "type": _TYPE_BASE + slug,
        "title": _TITLES.get(status, "Error"),
        "status": status,
        "detail": " ".join(detail.split()),
        "instance": instance,
        **extensions,
    }
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


def _library_problem(exc: RuleEngineError, instance: str) -> JSONResponse:
    status, slug = next(((st, sl) for kind, st, sl in STATUS_OF if isinstance(exc, kind)), (400, "rule-engine-error"))
    extensions: dict[str, Any] = {}
    if isinstance(exc, BundleValidationError) and exc.problems:
        extensions["problems"] = [{"path": p.path, "message": p.message} for p in exc.problems[:100]]
    return problem_response(status, slug, str(exc) or type(exc).__name__, instance, **extensions)


def install(app: FastAPI) -> None:
    """Answer every error of ``app`` as problem+json."""

    async def on_api_problem(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiProblem)
        return problem_response(exc.status, exc.slug, exc.detail, request.url.path, exc.headers, **exc.extensions)

    async def on_library_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RuleEngineError)
        return _library_problem(exc, request.url.path)

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        slug = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http-error")
        detail = exc.detail if isinstance(exc.detail, str) else _TITLES.get(exc.status_code, "error")
        return problem_response(exc.status_code, slug, detail, request.url.path, dict(exc.headers or {}))

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = [
            {"path": ".".join(str(p) for p in e.get("loc", ())), "message": str(e.get("msg", ""))}
            for e in list(exc.errors())[:100]
        ]
        first = f"{errors[0]['path']}: {errors[0]['message']}" if errors else "invalid request"
        return problem_response(422, "invalid-request", first, request.url.path, problems=errors)

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        _log.error("server.unexpected_error", path=request.url.path, error=f"{type(exc).__name__}: {exc}")
        return problem_response(500, "internal", f"unexpected {type(exc).__name__}", request.url.path)

    app.add_exception_handler(ApiProblem, on_api_problem)
    app.add_exception_handler(RuleEngineError, on_library_error)
    app.add_exception_handler(HTTPException, on_http)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(Exception, on_unexpected)
