"""Server-side calls to the endpoints (the browser never talks to them: no CORS, no exposed URLs).

Every failure becomes a one-line message a person can act on; nothing here raises to the caller.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Any

import httpx

from loadtest.analysis import latency_summary
from playground.endpoints import Answer, AnswerError, Endpoint, Generation, read_answer, request_body

MAX_MESSAGE_CHARS = 300


@dataclass
class CallResult:
    endpoint: str
    ok: bool
    latency_ms: float | None  # wall time of the HTTP exchange, measured here
    image: str | None = None  # data: URL
    unit: str | None = None
    device: str | None = None
    device_name: str | None = None
    status: int | None = None
    error: str | None = None

    def to_dict(self, with_image: bool = True) -> dict[str, Any]:
        data = asdict(self)
        if not with_image:
            data.pop("image")
        return data


async def call(client: httpx.AsyncClient, endpoint: Endpoint, generation: Generation) -> CallResult:
    """One request to one endpoint; failures come back as ``ok=False`` with a message."""
    started = time.perf_counter()
    try:
        response = await client.post(endpoint.infer_url, json=request_body(endpoint, generation))
    except httpx.ConnectTimeout:
        seconds = client.timeout.connect or 0.0
        return _failed(endpoint, started, f"cannot reach {endpoint.url}: no connection within {seconds:g} s")
    except httpx.TimeoutException:
        seconds = client.timeout.read or 0.0
        return _failed(endpoint, started, f"no answer from {endpoint.url} within {seconds:g} s (timed out)")
    except httpx.ConnectError as error:
        return _failed(endpoint, started, f"cannot reach {endpoint.url}: {_reason(error)}")
    except httpx.HTTPError as error:
        return _failed(endpoint, started, f"request to {endpoint.url} failed: {_reason(error)}")
    latency_ms = (time.perf_counter() - started) * 1000.0
    if response.status_code >= 400:
        message = f"HTTP {response.status_code} from {endpoint.name}: {_server_message(response)}"
        return CallResult(endpoint.name, False, latency_ms, status=response.status_code, error=message)
    try:
        answer: Answer = read_answer(endpoint, response.json())
    except (json.JSONDecodeError, UnicodeDecodeError):
        message = f"{endpoint.name} answered HTTP {response.status_code} with a body that is not JSON"
        return CallResult(endpoint.name, False, latency_ms, status=response.status_code, error=message)
    except AnswerError as error:
        message = f"{endpoint.name} answered, but {error}"
        return CallResult(endpoint.name, False, latency_ms, status=response.status_code, error=message)
    return CallResult(
        endpoint.name,
        True,
        latency_ms,
        image=f"data:image/png;base64,{answer.image_b64}",
        unit=answer.unit,
        device=answer.device,
        device_name=answer.device_name,
        status=response.status_code,
    )


async def compare(client: httpx.AsyncClient, endpoints: list[Endpoint], generation: Generation) -> list[CallResult]:
    """The same request to every endpoint at once, results in the endpoints' order."""
    return list(await asyncio.gather(*(call(client, endpoint, generation) for endpoint in endpoints)))


async def fan_out(
    client: httpx.AsyncClient, endpoint: Endpoint, generation: Generation, requests: int, concurrency: int
) -> list[CallResult]:
    """``requests`` identical requests to one endpoint, at most ``concurrency`` in flight."""
    gate = asyncio.Semaphore(concurrency)

    async def one() -> CallResult:
        async with gate:
            return await call(client, endpoint, generation)

    return list(await asyncio.gather(*(one() for _ in range(requests))))


def by_unit(results: list[CallResult]) -> dict[str, Any]:
    """Which unit served how many requests, and each unit's latency distribution (ms)."""
    groups: dict[tuple[str, str], list[float]] = defaultdict(list)
    for result in results:
        if result.ok:
            groups[(result.unit or "unknown", result.device or "unknown")].append(result.latency_ms or 0.0)
    succeeded = sum(len(latencies) for latencies in groups.values())
    units = [
        {
            "unit": unit,
            "device": device,
            "count": len(latencies),
            "share": len(latencies) / len(results) if results else 0.0,
            **latency_summary(latencies),
        }
        for (unit, device), latencies in sorted(groups.items(), key=lambda item: (-len(item[1]), item[0]))
    ]
    errors: dict[str, int] = defaultdict(int)
    for result in results:
        if not result.ok:
            errors[result.error or "unknown error"] += 1
    return {
        "requests": len(results),
        "succeeded": succeeded,
        "failed": len(results) - succeeded,
        "units": units,
        "errors": [{"error": error, "count": count} for error, count in errors.items()],
        "latency": latency_summary([r.latency_ms or 0.0 for r in results if r.ok]),
    }


def _failed(endpoint: Endpoint, started: float, message: str) -> CallResult:
    return CallResult(endpoint.name, False, (time.perf_counter() - started) * 1000.0, error=message)


def _reason(error: BaseException) -> str:
    """The root cause in words: httpx's own text is often "All connection attempts failed"."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused (is the server running and listening on that port?)"
        if isinstance(cause, socket.gaierror):
            return f"host name not found ({cause.strerror or cause})"
        cause = cause.__cause__ or cause.__context__
    return _clip(str(error).strip() or type(error).__name__)


def _server_message(response: httpx.Response) -> str:
    """KServe answers ``{"error": ...}``; FastAPI ``{"detail": ...}``; anything else: the text."""
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = None
    if isinstance(body, dict):
        for key in ("error", "detail", "message"):
            if body.get(key):
                value = body[key]
                return _clip(value if isinstance(value, str) else json.dumps(value))
    text = response.text.strip()
    return _clip(text) if text else response.reason_phrase or "no message"


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_MESSAGE_CHARS else text[: MAX_MESSAGE_CHARS - 1] + "…"
