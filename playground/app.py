"""The playground's web app: one static page and a small JSON API that calls the endpoints.

``GET /`` the page (static HTML/JS, no build step); ``GET /api/config`` the endpoints and form
defaults; ``POST /api/generate`` one prompt to several endpoints side by side; ``POST /api/router``
N requests to one endpoint, grouped by the unit that served each; ``GET /healthz`` for probes.
Errors are JSON ``{"error": "..."}`` with a 4xx/5xx status, never a stack trace.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path

import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from playground.client import by_unit, compare, fan_out
from playground.endpoints import Endpoint, Generation
from predictor.server import _validation_error as validation_error

logger = logging.getLogger("playground")
STATIC = Path(__file__).resolve().parent / "static"
MAX_PROMPT_CHARS = 2000
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class Settings:
    endpoints: list[Endpoint]
    timeout_s: float = 300.0
    max_requests: int = 100
    max_concurrency: int = 16
    default_steps: int = 25
    default_size: int = 512
    default_guidance: float = 7.5


class GenerateForm(BaseModel):
    """What the page sends; bounds are sanity limits, each endpoint applies its own."""

    prompt: str = Field(max_length=MAX_PROMPT_CHARS)
    negative_prompt: str = Field(default="", max_length=MAX_PROMPT_CHARS)
    steps: int = Field(ge=1, le=500)
    width: int = Field(ge=8, le=4096)
    height: int = Field(ge=8, le=4096)
    guidance: float = Field(ge=0, le=100)
    seed: int = Field(ge=0, le=MAX_SEED)
    endpoints: list[str] | None = None  # names; None = all

    def generation(self) -> Generation:
        return Generation(
            prompt=self.prompt.strip(),
            negative_prompt=self.negative_prompt.strip() or None,
            steps=self.steps,
            width=self.width,
            height=self.height,
            guidance=self.guidance,
            seed=self.seed,
        )


class RouterForm(GenerateForm):
    endpoint: str
    requests: int = Field(ge=1)
    concurrency: int = Field(default=4, ge=1)


class BadRequest(Exception):
    """A form the playground will not send on: answered 400 with this message."""


def create_app(settings: Settings) -> FastAPI:
    if not settings.endpoints:
        raise ValueError("at least one endpoint is needed")
    by_name = {endpoint.name: endpoint for endpoint in settings.endpoints}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        timeout = httpx.Timeout(settings.timeout_s, connect=min(10.0, settings.timeout_s))
        limits = httpx.Limits(max_connections=settings.max_concurrency * 2 + len(settings.endpoints))
        async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
            app.state.client = client
            yield

    app = FastAPI(title="KServe playground", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    _install_error_handlers(app)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Liveness and readiness: the playground itself, not its endpoints (a unit scaled to zero is normal)."""
        return {"status": "ok"}

    @app.get("/api/config")
    async def config() -> dict:
        return {
            "endpoints": [endpoint.public() for endpoint in settings.endpoints],
            "defaults": {
                "steps": settings.default_steps,
                "size": settings.default_size,
                "guidance": settings.default_guidance,
            },
            "limits": {"max_requests": settings.max_requests, "max_concurrency": settings.max_concurrency},
        }

    @app.post("/api/generate")
    async def generate(form: GenerateForm, request: Request) -> dict:
        generation = _checked(form)
        names = form.endpoints if form.endpoints is not None else list(by_name)
        if not names:
            raise BadRequest("Pick at least one endpoint.")
        targets = [_endpoint(by_name, name) for name in names]
        results = await compare(request.app.state.client, targets, generation)
        return {"results": [result.to_dict() for result in results]}

    @app.post("/api/router")
    async def router(form: RouterForm, request: Request) -> dict:
        generation = _checked(form)
        endpoint = _endpoint(by_name, form.endpoint)
        if form.requests > settings.max_requests:
            raise BadRequest(f"At most {settings.max_requests} requests per run (asked for {form.requests}).")
        concurrency = min(form.concurrency, settings.max_concurrency, form.requests)
        results = await fan_out(request.app.state.client, endpoint, generation, form.requests, concurrency)
        summary = by_unit(results)
        summary["endpoint"] = endpoint.name
        summary["concurrency"] = concurrency
        summary["results"] = [
            {"index": index, **result.to_dict(with_image=False)} for index, result in enumerate(results, 1)
        ]
        # One image per unit, so a person can see what each produced without N images in the page.
        samples: dict[str, str] = {}
        for result in results:
            if result.ok and result.image and (result.unit or "unknown") not in samples:
                samples[result.unit or "unknown"] = result.image
        summary["samples"] = samples
        return summary

    return app


def _checked(form: GenerateForm) -> Generation:
    if not form.prompt.strip():
        raise BadRequest("Enter a prompt: it is empty.")
    return form.generation()


def _endpoint(by_name: dict[str, Endpoint], name: str) -> Endpoint:
    if name not in by_name:
        raise BadRequest(f"Unknown endpoint {name!r}; configured: {', '.join(by_name)}.")
    return by_name[name]


def _install_error_handlers(app: FastAPI) -> None:
    async def bad_request(_request: Request, error: BadRequest) -> JSONResponse:
        return JSONResponse({"error": str(error)}, status_code=HTTPStatus.BAD_REQUEST)

    async def http_error(_request: Request, error: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(error.detail)}, status_code=error.status_code)

    async def unexpected(_request: Request, error: Exception) -> JSONResponse:
        logger.exception("unexpected error", exc_info=error)
        return JSONResponse(
            {"error": f"The playground hit an unexpected error ({type(error).__name__}); its log has the details."},
            status_code=HTTPStatus.INTERNAL_SERVER_ERROR,
        )

    app.add_exception_handler(BadRequest, bad_request)
    # The predictor's handler: 400 {"error": "invalid request body: steps: ..."} naming each field.
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)
