"""ASGI middleware for the inference routes: admission by the model's lifecycle, and abandoned requests.

* A request that cannot start (model loading, server draining, device unhealthy) gets 503 with
  ``Retry-After`` and a message saying why, before its body is read: kserve's own check answers
  "Model with name ... is not ready." with no hint of when to come back.
* An admitted request is counted in flight until its response is sent (the drain waits for it).
* A client that disconnects before its response starts has its handler cancelled: Starlette does
  not do this for non-streaming responses (it only watches ``http.disconnect`` while streaming), so
  the request would wait in the batcher's queue, take a place under --max_queue_size and run on
  the device for nobody. Cancelling the handler cancels its batcher futures, which leaves the
  queue at once (``DynamicBatcher.submit``). uvicorn reports a disconnect to a pending
  ``receive()`` (``RequestResponseCycle.receive`` returns ``http.disconnect`` after
  ``connection_lost``); once the body is read, this middleware is the only reader of ``receive``
  and hands the disconnect on to the application if it asks (Starlette's StreamingResponse does).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
from typing import Any

from predictor.lifecycle import Lifecycle, Unavailable

logger = logging.getLogger(__name__)

Scope = dict[str, Any]


class LifecycleMiddleware:
    def __init__(self, app, lifecycle: Lifecycle, model_name: str, openai_prefix: str = "/openai"):
        self.app = app
        self.lifecycle = lifecycle
        name = re.escape(model_name)
        self._kserve_routes = re.compile(rf"^/v1/models/{name}:(predict|explain)$|^/v2/models/{name}(/versions/[^/]+)?/infer$")
        self._openai_routes = re.compile(rf"^{re.escape(openai_prefix.rstrip('/'))}/v1/(chat/)?completions$")

    async def __call__(self, scope: Scope, receive, send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        openai = bool(self._openai_routes.match(path))
        if not openai and not self._kserve_routes.match(path):
            await self.app(scope, receive, send)
            return
        rejection = self.lifecycle.rejection()
        if rejection is not None:
            await send_unavailable(send, rejection, openai)
            return
        with self.lifecycle.track():
            await run_until_client_leaves(self.app, scope, receive, send)


async def send_unavailable(send, error: Unavailable, openai: bool = False) -> None:
    message = str(error)
    if openai:
        content: dict = {"error": {"message": message, "type": "server_error", "param": None, "code": "503"}}
    else:
        content = {"error": message}
    body = json.dumps(content).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(error.retry_after_s).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def run_until_client_leaves(app, scope: Scope, receive, send) -> None:
    """Run the application; cancel it if the client disconnects before the response starts."""
    body_read = asyncio.Event()
    client_gone = asyncio.Event()
    response_started = False

    async def app_receive() -> dict:
        if body_read.is_set():
            await client_gone.wait()
            return {"type": "http.disconnect"}
        message = await receive()
        if message["type"] == "http.disconnect":
            client_gone.set()
            body_read.set()
        elif not message.get("more_body", False):
            body_read.set()
        return message

    async def app_send(message: dict) -> None:
        nonlocal response_started
        if message["type"] == "http.response.start":
            response_started = True
        await send(message)

    async def watch() -> None:
        await body_read.wait()
        while not client_gone.is_set():
            if (await receive())["type"] == "http.disconnect":
                client_gone.set()

    handler = asyncio.ensure_future(app(scope, app_receive, app_send))
    watcher = asyncio.ensure_future(watch())
    try:
        await asyncio.wait({handler, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if not handler.done() and client_gone.is_set() and not response_started:
            logger.info("%s %s: the client disconnected before its answer; dropping its work", scope.get("method"),
                        scope.get("path"))
            handler.cancel()
        try:
            await handler
        except asyncio.CancelledError:
            if not client_gone.is_set():
                raise  # cancelled from outside (server shutdown), not because the client left
    finally:
        watcher.cancel()
        if not handler.done():
            handler.cancel()


def install_lifecycle_middleware(lifecycle: Lifecycle, model_name: str, app=None) -> None:
    """Add the middleware to kserve's FastAPI app (before the server starts)."""
    if app is None:
        from kserve.model_server import app
    # The prefix predictor.openai_model serves under (not imported here: it loads the text-generation task).
    openai_prefix = "/" + os.environ.get("KSERVE_OPENAI_ROUTE_PREFIX", "/openai").lstrip("/")
    app.add_middleware(LifecycleMiddleware, lifecycle=lifecycle, model_name=model_name, openai_prefix=openai_prefix)
