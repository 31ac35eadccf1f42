"""A fake KServe v2 REST server (aiohttp) on a loopback port, run in a background thread.

It serves ``/v2/models/{name}/ready`` and ``/infer`` with a fixed service time and a fixed number
of requests in service at once (a saturating server), answers 503 when its queue is full, and
records the Host header of every request, so the client side can be tested without the model.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import threading
from dataclasses import dataclass, field

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 16).decode()


@dataclass
class FakeV2Server:
    service_s: float = 0.05
    slots: int = 1
    max_queue: int = 1000
    model: str = "sd"
    hosts: list[str] = field(default_factory=list)
    infer_count: int = 0
    rejected: int = 0
    port: int = 0

    def __post_init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _serve(self) -> None:
        from aiohttp import web

        semaphore = asyncio.Semaphore(self.slots)
        waiting = 0

        async def ready(request: web.Request) -> web.Response:
            if request.match_info["name"] != self.model:
                return web.json_response({"error": "not found"}, status=404)
            return web.json_response({"name": self.model, "ready": True})

        async def infer(request: web.Request) -> web.Response:
            nonlocal waiting
            self.hosts.append(request.headers.get("Host", ""))
            if request.match_info["name"] != self.model:
                return web.json_response({"error": "not found"}, status=404)
            body = await request.json()
            if not body.get("inputs"):
                return web.json_response({"error": "no inputs"}, status=400)
            if waiting >= self.max_queue:
                self.rejected += 1
                return web.json_response({"error": "queue full"}, status=503)
            waiting += 1
            try:
                async with semaphore:
                    await asyncio.sleep(self.service_s)
            finally:
                waiting -= 1
            self.infer_count += 1
            output = {"name": "image", "datatype": "BYTES", "shape": [1], "data": [PNG]}
            return web.Response(
                text=json.dumps({"model_name": self.model, "outputs": [output]}), content_type="application/json"
            )

        app = web.Application()
        app.router.add_get("/v2/models/{name}/ready", ready)
        app.router.add_post("/v2/models/{name}/infer", infer)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        site = web.SockSite(runner, sock)
        await site.start()
        self._stop = asyncio.Event()
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()

    def start(self) -> FakeV2Server:
        def main() -> None:
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(self._serve())
            self._loop.close()

        self._thread = threading.Thread(target=main, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fake server did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)
