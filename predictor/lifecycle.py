"""The served model's lifecycle: loading, serving, draining, unhealthy; and the server around it.

One :class:`Lifecycle` per served model answers "may a request start now?" for every protocol:

  loading    -> 503 / UNAVAILABLE "model ... is loading"       (readiness false, liveness true)
  serving    -> admitted
  draining   -> 503 / UNAVAILABLE "... is shutting down"       (readiness false, liveness true)
  unhealthy  -> 503 / UNAVAILABLE "the device is unhealthy"    (readiness false, liveness false)

It also counts the requests in flight, so a drain knows when everything accepted has finished.

:class:`LifecycleModelServer` is kserve's ``ModelServer`` with three changes (kserve 0.21,
``kserve/model_server.py``):

* SIGTERM / SIGINT drain instead of stopping. uvicorn installs its own handlers when it starts
  serving (``uvicorn.Server.capture_signals``) and on a signal closes its listening socket at once,
  then ``ModelServer.stop`` unloads the models before the gRPC server's grace period, which fails
  the gRPC requests still in flight. Here the signal turns readiness false, new requests get 503 /
  UNAVAILABLE while both servers keep listening, and only when the accepted requests have finished
  (or ``drain_timeout_s`` has passed) do the servers stop and the models unload; the process exits 0.
* Server readiness (``/v2/health/ready``, gRPC ServerReady) is the served model's readiness, and
  liveness (``/v2/health/live``, gRPC ServerLive) fails once the device is unhealthy, so the
  kubelet restarts the container. kserve's ``DataPlane.ready`` is always true.
* The repository extension's load / unload (``/v2/repository/models/{name}/load|unload`` and the
  gRPC RepositoryModelLoad / Unload) answer 501 / UNIMPLEMENTED unless enabled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar

from kserve import ModelServer
from kserve.errors import ModelNotFound, ServerNotReady
from kserve.model_repository import ModelRepository
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.model_repository_extension import ModelRepositoryExtension

logger = logging.getLogger(__name__)

#: Once the drain is over, how long the HTTP and gRPC servers may take to send the last responses.
FLUSH_GRACE_S = 5.0


class Unavailable(ServerNotReady):
    """HTTP 503 (with Retry-After) / gRPC UNAVAILABLE: this replica cannot take the request now."""

    retry_after_s = 5

    def __init__(self, detail: str):
        super().__init__(detail)
        # kserve's gRPC interceptor reads ``reason``, which ServerNotReady itself lacks.
        self.reason = detail
        self.error_msg = detail

    def __str__(self) -> str:
        return self.reason


class ModelLoading(Unavailable):
    retry_after_s = 10


class ShuttingDown(Unavailable):
    retry_after_s = 1


class DeviceUnhealthy(Unavailable):
    retry_after_s = 30


class DeviceOutOfMemory(Unavailable):
    retry_after_s = 5


class RepositoryApiDisabled(NotImplementedError):
    """HTTP 501 / gRPC UNIMPLEMENTED (kserve's handlers for NotImplementedError)."""

    def __init__(self) -> None:
        self.reason = (
            "the model repository API (load / unload) is disabled on this server; "
            "start it with --enable_repository_api=true to allow it"
        )
        super().__init__(self.reason)


_TRACKED: ContextVar[bool] = ContextVar("predictor_request_tracked", default=False)


class Lifecycle:
    """Admission and in-flight accounting for one served model. Used on the event loop only,
    except ``mark_loaded`` (inference thread) which only flips a flag."""

    def __init__(
        self,
        model_name: str,
        on_serving: Callable[[bool], None] = lambda serving: None,
        on_inflight: Callable[[int], None] = lambda count: None,
    ):
        self.model_name = model_name
        self.loaded = False
        self.draining = False
        self.unhealthy_reason: str | None = None
        self.inflight = 0
        self._on_serving = on_serving
        self._on_inflight = on_inflight

    # ---------------------------------------------------------------- state

    @property
    def serving(self) -> bool:
        return self.rejection() is None

    @property
    def live(self) -> bool:
        return self.unhealthy_reason is None

    def rejection(self) -> Unavailable | None:
        """Why a new request cannot start now, or None when it can."""
        if self.unhealthy_reason is not None:
            return DeviceUnhealthy(
                f"the device is unhealthy ({self.unhealthy_reason}); this replica is restarting, retry on another"
            )
        if self.draining:
            return ShuttingDown("the server is shutting down; retry on another replica")
        if not self.loaded:
            return ModelLoading(f"model {self.model_name!r} is loading; retry later")
        return None

    def mark_loaded(self) -> None:
        self.loaded = True
        self._on_serving(self.serving)

    def mark_unhealthy(self, reason: str) -> None:
        if self.unhealthy_reason is None:
            self.unhealthy_reason = reason
            logger.error("model %s: the device is unhealthy (%s): not ready, not live", self.model_name, reason)
        self._on_serving(False)

    def begin_drain(self) -> None:
        self.draining = True
        self._on_serving(False)

    # ---------------------------------------------------------------- in flight

    @contextlib.contextmanager
    def track(self) -> Iterator[None]:
        """Count one request in flight until the block ends (nested blocks of the same request count once)."""
        if _TRACKED.get():
            yield
            return
        token = _TRACKED.set(True)
        self.inflight += 1
        self._on_inflight(self.inflight)
        try:
            yield
        finally:
            self.inflight -= 1
            self._on_inflight(self.inflight)
            _TRACKED.reset(token)

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no request is in flight; False if some still are after ``timeout_s``."""
        deadline = time.monotonic() + max(0.0, timeout_s)
        while self.inflight > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return self.inflight == 0


class LifecycleDataPlane(DataPlane):
    """kserve's data plane with server readiness and liveness that mean something."""

    def __init__(self, model_registry: ModelRepository, lifecycle: Lifecycle, served_model_names: list[str]):
        super().__init__(model_registry=model_registry)
        self.lifecycle = lifecycle
        self.served_model_names = served_model_names

    async def ready(self) -> bool:
        if not self.lifecycle.serving:
            return False
        for name in self.served_model_names:  # e.g. unloaded through the repository API
            if not await self._model_registry.is_model_ready(name):
                return False
        return await super().ready()

    async def live(self) -> dict[str, str]:  # kserve: {"status": "alive"}; anything else is 503 / live=false
        if not self.lifecycle.live:
            return {"status": f"unhealthy: {self.lifecycle.unhealthy_reason}"}
        return await DataPlane.live()

    async def get_model(self, name: str):
        """Like kserve's, but never calls ``model.load()`` on the event loop for a model that is not ready
        (kserve does for gRPC ModelInfer): the request gets why the model cannot serve now."""
        model = self._model_registry.get_model(name)
        if model is None:
            raise ModelNotFound(name)
        if not await self._model_registry.is_model_ready(name):
            raise self.lifecycle.rejection() or Unavailable(f"model {name!r} is not ready")
        return model


class GuardedRepositoryExtension(ModelRepositoryExtension):
    """The repository extension with load / unload refused unless the operator enabled them."""

    def __init__(self, model_registry: ModelRepository, enabled: bool):
        super().__init__(model_registry=model_registry)
        self.enabled = enabled

    async def load(self, model_name: str) -> None:
        if not self.enabled:
            raise RepositoryApiDisabled()
        await super().load(model_name)

    async def unload(self, model_name: str) -> None:
        if not self.enabled:
            raise RepositoryApiDisabled()
        await super().unload(model_name)


class LifecycleModelServer(ModelServer):
    """kserve's ModelServer that drains on SIGTERM and reports readiness and liveness of its model."""

    def __init__(
        self, *, lifecycle: Lifecycle, served_model_names: list[str], drain_timeout_s: float,
        enable_repository_api: bool = False, **kwargs,
    ):  # fmt: skip
        super().__init__(**kwargs)
        self.lifecycle = lifecycle
        self.drain_timeout_s = drain_timeout_s
        # start() hands these to the REST and gRPC servers.
        self.dataplane = LifecycleDataPlane(self.registered_models, lifecycle, served_model_names)
        self.model_repository_extension = GuardedRepositoryExtension(self.registered_models, enable_repository_api)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain: asyncio.Task | None = None
        self._stop_now = asyncio.Event()

    def start(self, models: list) -> None:
        """kserve's ``start``, on the loop ``--event_loop`` names (see ``install_event_loop``)."""
        install_event_loop(self.event_loop)
        super().start(models)

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self._rest_server is not None and not self.enable_latency_logging:
            _without_request_timing(self._rest_server)
        await asyncio.gather(*self.servers, self._take_over_shutdown_signals())
        # Both servers have stopped: nothing is in flight any more, the models may go.
        for name in list(self.registered_models.get_models()):
            self.registered_models.unload(name)

    async def _take_over_shutdown_signals(self) -> None:
        uvicorn_server = self._rest_server._server if self._rest_server else None
        while uvicorn_server is not None and not (uvicorn_server.started or uvicorn_server.should_exit):
            await asyncio.sleep(0.05)
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._loop.add_signal_handler(sig, self._on_shutdown_signal, sig)
        logger.info("SIGTERM / SIGINT drain the server (up to %.0fs for requests in flight)", self.drain_timeout_s)

    def stop(self, sig: int) -> None:
        """kserve's signal handlers (SIGQUIT, or a signal before uvicorn started) land here: drain too."""
        if self._loop is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._on_shutdown_signal, sig)
        else:
            super().stop(sig)

    def _on_shutdown_signal(self, sig: int) -> None:
        if self._drain is None:
            self.lifecycle.begin_drain()
            logger.info(
                "%s: draining: not ready, new requests get 503 / UNAVAILABLE; waiting up to %.0fs for %d request(s) "
                "in flight", signal.Signals(sig).name, self.drain_timeout_s, self.lifecycle.inflight,
            )  # fmt: skip
            self._drain = asyncio.ensure_future(self._drain_then_stop())
        else:
            logger.warning("%s during the drain: stopping without waiting for the requests in flight",
                           signal.Signals(sig).name)
            self._stop_now.set()

    async def _drain_then_stop(self) -> None:
        waiting = asyncio.ensure_future(self.lifecycle.wait_idle(self.drain_timeout_s))
        stop_now = asyncio.ensure_future(self._stop_now.wait())
        await asyncio.wait({waiting, stop_now}, return_when=asyncio.FIRST_COMPLETED)
        stop_now.cancel()
        if waiting.done() and waiting.result():
            logger.info("drained: every accepted request has finished; stopping")
        else:
            waiting.cancel()
            logger.error("stopping with %d request(s) still in flight", self.lifecycle.inflight)
        await self._stop_servers()

    async def _stop_servers(self) -> None:
        # kserve 0.21 keeps the uvicorn server in RESTServer._server and the grpc.aio server behind
        # GRPCServer.stop(); both wait for their last responses, bounded here by FLUSH_GRACE_S.
        if self._rest_server is not None:
            uvicorn_server = self._rest_server._server
            uvicorn_server.config.timeout_graceful_shutdown = FLUSH_GRACE_S
            uvicorn_server.should_exit = True
        if self._grpc_server is not None:
            self._grpc_server._grace_period = FLUSH_GRACE_S
            await self._grpc_server.stop()


def _without_request_timing(rest_server) -> None:
    """Leave out kserve's TimingMiddleware, whose only output is two ``kserve.trace`` log lines per
    request (wall and CPU time): kserve 0.21 adds it unconditionally in ``RESTServer._add_middlewares``,
    which ``RESTServer.start`` calls (through ``create_application``) when the server starts."""
    from timing_asgi import TimingMiddleware

    add_middlewares = rest_server._add_middlewares

    def add_middlewares_without_timing(app) -> None:
        add_middlewares(app)
        app.user_middleware[:] = [entry for entry in app.user_middleware if entry.cls is not TimingMiddleware]

    rest_server._add_middlewares = add_middlewares_without_timing


def install_event_loop(choice: str) -> str:
    """Make ``--event_loop`` choose the loop everything runs on; returns the one installed.

    kserve 0.21 documents ``auto`` as "use uvloop if available" but hands the choice only to
    uvicorn's ``Config(loop=...)``, while ``ModelServer.start`` runs ``uvicorn.Server.serve()``
    inside its own ``asyncio.run``, so uvicorn never creates a loop and the flag changes nothing
    (kserve/model_server.py ``start``, kserve/protocol/rest/server.py ``RESTServer``). Installing
    the policy here makes that ``asyncio.run`` create a uvloop loop: fewer microseconds per
    callback and per thread hop, which a lone request pays several times over (docs/benchmarks.md).
    uvloop ships with ``uvicorn[standard]``, which kserve requires.
    """
    if choice == "asyncio":
        return "asyncio"
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    # kserve's setup_event_loop() asks for the current loop before asyncio.run creates the serving one.
    asyncio.set_event_loop(asyncio.new_event_loop())
    logger.info("event loop: uvloop (--event_loop %s)", choice)
    return "uvloop"
