"""KServe v2 clients for the load tester: REST (aiohttp) and gRPC (grpc.aio).

Both send the same prompt and parameters on every request and report one status string per
request: ``"ok"``, an HTTP status code (``"503"``), a gRPC status name (``"UNAVAILABLE"``) or a
client-side failure (``"timeout"``, ``"connect-error"``, ``"disconnected"``, ``"bad-response"``).
Neither imports kserve or tritonclient (see ``v2_grpc``).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

from loadtest import v2_grpc

OUTPUT_NAME = "image"


class EndpointError(RuntimeError):
    """The endpoint cannot be load-tested: not reachable, model not ready, or requests fail."""


@dataclass(frozen=True)
class Target:
    """Where and what to send."""

    url: str  # http(s)://host[:port] for REST, grpc(s)://host:port for gRPC
    model: str
    prompts: tuple[str, ...] = ("a photo of an astronaut riding a horse on mars",)
    parameters: dict[str, Any] = field(default_factory=dict)
    host: str | None = None  # Host header / gRPC authority (Knative routes on it)
    headers: dict[str, str] = field(default_factory=dict)
    timeout_s: float = 60.0
    verify_tls: bool = True

    @property
    def protocol(self) -> str:
        return protocol_of(self.url)


def protocol_of(url: str) -> str:
    scheme = urlsplit(url).scheme.lower()
    if scheme in ("http", "https"):
        return "rest"
    if scheme in ("grpc", "grpcs"):
        return "grpc"
    raise ValueError(f"unsupported URL {url!r}: use http(s)://host:port for REST or grpc(s)://host:port for gRPC")


def v2_json_body(model: str, prompt: str, parameters: dict[str, Any]) -> bytes:
    body: dict[str, Any] = {"inputs": [{"name": "prompt", "datatype": "BYTES", "shape": [1], "data": [prompt]}]}
    if parameters:
        body["parameters"] = parameters
    return json.dumps(body).encode("utf-8")


def check_png(encoded: bytes | str) -> None:
    """Raise EndpointError unless ``encoded`` is a base64 PNG (the predictor's image output)."""
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (ValueError, TypeError) as error:
        raise EndpointError(f"output '{OUTPUT_NAME}' is not base64: {error}") from None
    if not raw.startswith(b"\x89PNG\r\n\x1a\n"):
        raise EndpointError(f"output '{OUTPUT_NAME}' is not a PNG image")


class Client(Protocol):
    target: Target

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def ready(self) -> bool: ...

    async def infer(self, index: int) -> str:
        """Send request number ``index``; return its status (never raises for a failed request)."""

    async def probe(self) -> str:
        """One request whose response is fully decoded and checked; raises EndpointError with the details."""


def make_client(target: Target, max_connections: int) -> Client:
    if target.protocol == "rest":
        return RestClient(target, max_connections)
    return GrpcClient(target)


# --------------------------------------------------------------------------- REST


class RestClient:
    def __init__(self, target: Target, max_connections: int = 100):
        self.target = target
        self.max_connections = max_connections
        self.base = target.url.rstrip("/")
        self.infer_url = f"{self.base}/v2/models/{target.model}/infer"
        self.bodies = [v2_json_body(target.model, p, target.parameters) for p in target.prompts]
        self.session = None

    async def open(self) -> None:
        import aiohttp

        ssl_context: Any = None
        if self.base.startswith("https") and not self.target.verify_tls:
            ssl_context = False
        connector = aiohttp.TCPConnector(limit=self.max_connections, ssl=ssl_context)
        headers = {"Content-Type": "application/json", **self.target.headers}
        if self.target.host:
            headers["Host"] = self.target.host
        self.session = aiohttp.ClientSession(
            connector=connector,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=self.target.timeout_s),
        )

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None

    async def ready(self) -> bool:
        import aiohttp

        try:
            async with self.session.get(f"{self.base}/v2/models/{self.target.model}/ready") as response:
                if response.status != 200:
                    return False
                return bool((await response.json(content_type=None)).get("ready"))
        except (TimeoutError, aiohttp.ClientError, ValueError, AttributeError):
            return False

    async def infer(self, index: int) -> str:
        import aiohttp

        body = self.bodies[index % len(self.bodies)]
        try:
            async with self.session.post(self.infer_url, data=body) as response:
                payload = await response.read()
                if response.status != 200:
                    return str(response.status)
                # Cheap check on the hot path; probe() decodes the whole response.
                return "ok" if b'"outputs"' in payload else "bad-response"
        except TimeoutError:
            return "timeout"
        except aiohttp.ClientConnectorError:
            return "connect-error"
        except aiohttp.ServerDisconnectedError:
            return "disconnected"
        except aiohttp.ClientError:
            return "client-error"

    async def probe(self) -> str:
        import aiohttp

        try:
            async with self.session.post(self.infer_url, data=self.bodies[0]) as response:
                text = await response.text()
                status = response.status
        except TimeoutError:
            raise EndpointError(f"POST {self.infer_url}: no response within {self.target.timeout_s:g}s") from None
        except aiohttp.ClientError as error:
            raise EndpointError(f"POST {self.infer_url}: {error}") from None
        if status != 200:
            raise EndpointError(f"POST {self.infer_url} answered {status}: {text[:500]}")
        try:
            outputs = json.loads(text)["outputs"]
            image = next(o for o in outputs if o["name"] == OUTPUT_NAME)
            data = image["data"]
        except (ValueError, KeyError, TypeError, StopIteration):
            raise EndpointError(f"POST {self.infer_url}: no '{OUTPUT_NAME}' output in {text[:300]}") from None
        if len(data) != 1:
            raise EndpointError(f"output '{OUTPUT_NAME}' has {len(data)} elements, expected 1")
        check_png(data[0])
        return "ok"


# --------------------------------------------------------------------------- gRPC


class GrpcClient:
    def __init__(self, target: Target):
        self.target = target
        parts = urlsplit(target.url)
        if not parts.hostname:
            raise ValueError(f"no host in {target.url!r}")
        self.secure = parts.scheme.lower() == "grpcs"
        port = parts.port or (443 if self.secure else 80)
        self.address = f"{parts.hostname}:{port}"
        self.requests = [v2_grpc.infer_request(target.model, [p], target.parameters) for p in target.prompts]
        self.metadata = tuple((k.lower(), v) for k, v in target.headers.items())
        self.channel = None

    async def open(self) -> None:
        import grpc

        options = [
            ("grpc.max_receive_message_length", 256 * 1024 * 1024),
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
        ]
        if self.target.host:
            options.append(("grpc.default_authority", self.target.host))
            if self.secure:
                options.append(("grpc.ssl_target_name_override", self.target.host))
        if self.secure:
            if not self.target.verify_tls:
                raise EndpointError(
                    "--insecure is not supported for grpcs:// (give the CA with GRPC_DEFAULT_SSL_ROOTS_FILE_PATH)"
                )
            self.channel = grpc.aio.secure_channel(self.address, grpc.ssl_channel_credentials(), options=options)
        else:
            self.channel = grpc.aio.insecure_channel(self.address, options=options)
        # No serializers: requests are pre-serialized bytes and responses come back as bytes.
        self._infer = self.channel.unary_unary(v2_grpc.MODEL_INFER)
        self._ready = self.channel.unary_unary(v2_grpc.MODEL_READY)

    async def close(self) -> None:
        if self.channel is not None:
            await self.channel.close()
            self.channel = None

    async def ready(self) -> bool:
        import grpc

        try:
            raw = await self._ready(
                v2_grpc.ready_request(self.target.model),
                timeout=min(5.0, self.target.timeout_s),
                metadata=self.metadata or None,
            )
        except grpc.aio.AioRpcError:
            return False
        return v2_grpc.ready_response(raw)

    async def infer(self, index: int) -> str:
        import grpc

        try:
            raw = await self._infer(
                self.requests[index % len(self.requests)],
                timeout=self.target.timeout_s,
                metadata=self.metadata or None,
            )
        except grpc.aio.AioRpcError as error:
            code = error.code()
            return "timeout" if code == grpc.StatusCode.DEADLINE_EXCEEDED else code.name
        return "ok" if raw else "bad-response"

    async def probe(self) -> str:
        import grpc

        try:
            raw = await self._infer(self.requests[0], timeout=self.target.timeout_s, metadata=self.metadata or None)
        except grpc.aio.AioRpcError as error:
            raise EndpointError(f"ModelInfer on {self.address}: {error.code().name}: {error.details()}") from None
        try:
            values = v2_grpc.output_tensor(raw, OUTPUT_NAME)
        except Exception as error:  # noqa: BLE001 - any decode failure is a bad response
            raise EndpointError(f"ModelInfer on {self.address}: undecodable response: {error}") from None
        if values is None:
            raise EndpointError(f"ModelInfer on {self.address}: no '{OUTPUT_NAME}' output")
        if len(values) != 1:
            raise EndpointError(f"output '{OUTPUT_NAME}' has {len(values)} elements, expected 1")
        check_png(values[0])
        return "ok"
