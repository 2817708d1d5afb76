"""Exception handlers: every error becomes JSON `{"error": ...}`; client mistakes are 4xx, never 5xx."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from covid_cxr.errors import ConfigError, DataError

log = logging.getLogger(__name__)


def install_error_handlers(app: FastAPI) -> None:
    """Register the JSON error handlers on `app`."""
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(DataError, _bad_input)
    app.add_exception_handler(ConfigError, _bad_input)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.add_exception_handler(Exception, _unexpected)


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The JSON body every error shares."""
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    """HTTPException (ours and the router's 404/405) -> its status with the detail as `error`."""
    assert isinstance(exc, StarletteHTTPException)
    return error_response(exc.status_code, str(exc.detail), getattr(exc, "headers", None))


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    """A bad path, query or header parameter -> 422 naming each field (never echoing the input)."""
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    problems = [f"{'.'.join(map(str, err.get('loc', ())))}: {err.get('msg', 'invalid')}" for err in errors]
    return error_response(422, "invalid request: " + "; ".join(problems[:5]))


async def _bad_input(request: Request, exc: Exception) -> JSONResponse:
    """An undecodable image or an unknown option (ImageError, DataError, ConfigError) -> 400."""
    return error_response(400, str(exc))


async def _client_gone(request: Request, exc: Exception) -> JSONResponse:
    """The client hung up while sending its body: nobody reads the answer, and it is not a server error."""
    return error_response(400, "client disconnected before the request body was complete")


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    """Anything else -> 500 JSON; logged with the route only (no request data, no DICOM tags)."""
    log.error("unexpected %s on %s %s", type(exc).__name__, request.method, request.url.path, exc_info=exc)
    return error_response(500, f"internal server error ({type(exc).__name__})")
