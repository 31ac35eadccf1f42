"""Additions to kserve's FastAPI app that the runtime needs."""

from __future__ import annotations

from http import HTTPStatus

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse


async def _validation_error(_request, error: RequestValidationError) -> JSONResponse:
    """Malformed request bodies are the client's error: 400 with what was wrong (not FastAPI's 422)."""
    problems = []
    for issue in error.errors()[:5]:
        where = ".".join(str(part) for part in issue.get("loc", ()) if part != "body")
        problems.append(f"{where or 'body'}: {issue.get('msg', 'invalid')}")
    return JSONResponse(
        status_code=HTTPStatus.BAD_REQUEST, content={"error": "invalid request body: " + "; ".join(problems)}
    )


def install_error_handlers() -> None:
    from kserve.model_server import app

    app.add_exception_handler(RequestValidationError, _validation_error)
