"""OpenAI-compatible completions and chat completions (with streaming) for the text-generation task.

KServe 0.21's own OpenAI support (``kserve.protocol.rest.openai``) builds its request and
response types on vLLM's, so its routes only exist where vLLM is installed: its types module
imports ``vllm``, which pins its own torch and cannot be installed beside this runtime's. This
module serves the same endpoints under the same prefix (``KSERVE_OPENAI_ROUTE_PREFIX``, default
``/openai``) on KServe's FastAPI app, without vLLM:

  POST {prefix}/v1/completions        ``prompt`` (a string or a list of strings), streaming or not
  POST {prefix}/v1/chat/completions   ``messages`` through the tokenizer's chat template
  GET  {prefix}/v1/models             the served model

Requests become the task's ordinary work items and go through the same dynamic batcher as v1
and v2 requests; streamed text arrives from the inference thread as the tokens are generated.
Errors use OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``: 400 for bad
input, 404 for an unknown model, 503 while loading or when the queue is full.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from http import HTTPStatus
from typing import Annotated, Any, Self

from fastapi import Request  # at module level: the route signatures below are resolved from these globals
from kserve.errors import InvalidInput, ModelNotReady
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, ValidationInfo

from predictor.batching import QueueFullError
from predictor.model import PredictorModel
from predictor.tasks.generation import GenerateItem, Generation
from predictor.tasks.params import Check, fail
from predictor.tasks.text_generation import GenerationParameters, TextGenerationTask

ROUTE_PREFIX = os.environ.get("KSERVE_OPENAI_ROUTE_PREFIX", "/openai")
if ROUTE_PREFIX and not ROUTE_PREFIX.startswith("/"):
    ROUTE_PREFIX = "/" + ROUTE_PREFIX

CHAT_ROLES = ("system", "user", "assistant", "developer")


class OnlyDefault(Check):
    """A field that changes what a response means and that this server does not implement:
    accepted only at its OpenAI default (or left out)."""

    def __init__(self, *defaults: Any):
        self.defaults = defaults

    def __call__(self, value: Any, info: ValidationInfo) -> Any:
        if value is not None and not _is_default(value, self.defaults):
            fail(f"{info.field_name}={value!r} is not supported")
        return value


def _boolean(value: Any, info: ValidationInfo) -> bool:
    if not isinstance(value, bool):
        fail(f"{info.field_name} must be a boolean")
    return value


def _object_or_none(value: Any, info: ValidationInfo) -> dict | None:
    if value is not None and not isinstance(value, dict):
        fail(f"{info.field_name} must be an object")
    return value


class OpenAIOptions(BaseModel):
    """The fields of an OpenAI completions body this server reads or refuses, besides the prompt and
    ``GenerationParameters``. Anything else OpenAI defines (user, metadata, ...) is accepted and ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    n: Annotated[Any, OnlyDefault(1)] = Field(None, description="choices per prompt: only 1")
    best_of: Annotated[Any, OnlyDefault(1)] = Field(None, description="server-side candidates: only 1")
    echo: Annotated[Any, OnlyDefault(False)] = Field(None, description="prompt echoed in the text: no")
    logprobs: Annotated[Any, OnlyDefault(False, 0)] = Field(None, description="completions: an int; chat: a bool")
    top_logprobs: Annotated[Any, OnlyDefault(0)] = Field(None, description="not returned")
    suffix: Annotated[Any, OnlyDefault("")] = Field(None, description="insertion: not supported")
    tools: Annotated[Any, OnlyDefault([])] = Field(None, description="tool calls: not supported")
    functions: Annotated[Any, OnlyDefault([])] = Field(None, description="function calls: not supported")
    logit_bias: Annotated[Any, OnlyDefault({})] = Field(None, description="not supported")
    frequency_penalty: Annotated[Any, OnlyDefault(0)] = Field(None, description="not supported")
    presence_penalty: Annotated[Any, OnlyDefault(0)] = Field(None, description="not supported")
    stream: Annotated[bool, BeforeValidator(_boolean)] = Field(False, description="server-sent events as generated")
    stream_options: Annotated[dict | None, BeforeValidator(_object_or_none)] = Field(
        None, description='{"include_usage": true} adds a usage chunk at the end of a stream'
    )

    @classmethod
    def parse(cls, body: dict) -> Self:
        """The options of ``body``; the first problem is a 400 naming its field (OpenAI's ``param``)."""
        try:
            return cls.model_validate(body)
        except ValidationError as error:
            problem = error.errors(include_url=False)[0]
            param = str(problem["loc"][0]) if problem["loc"] else None
            raise OpenAIError(HTTPStatus.BAD_REQUEST, problem["msg"], param) from None


class ChatOptions(OpenAIOptions):
    """Chat completions add tool choice and response formats: only none and plain text."""

    tool_choice: Annotated[Any, OnlyDefault("none")] = Field(None, description="tool calls: not supported")
    response_format: Annotated[Any, OnlyDefault({"type": "text"})] = Field(None, description="only plain text")


class OpenAIError(Exception):
    def __init__(self, status: HTTPStatus, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param

    def body(self) -> dict:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        if self.status == HTTPStatus.NOT_FOUND:
            kind = "not_found_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": str(int(self.status))}}


class OpenAITextGenerationModel(PredictorModel):
    """The predictor model plus OpenAI completions and chat completions for a text-generation task."""

    task: TextGenerationTask

    # ---------------------------------------------------------------- entry points

    async def create_completion(self, body: Any) -> dict | AsyncIterator[str]:
        request = self._check_request(body)
        options = OpenAIOptions.parse(request)
        prompt = request.get("prompt")
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise OpenAIError(
                HTTPStatus.BAD_REQUEST, "prompt must be a string or a non-empty list of strings", "prompt"
            )
        if any(not p for p in prompts):
            raise OpenAIError(HTTPStatus.BAD_REQUEST, "prompt must not be empty", "prompt")
        return await self._run(request, options, prompts, templated=False, chat=False)

    async def create_chat_completion(self, body: Any) -> dict | AsyncIterator[str]:
        request = self._check_request(body)
        options = ChatOptions.parse(request)
        messages = _chat_messages(request.get("messages"))
        if request.get("max_completion_tokens") is not None:
            request = {**request, "max_tokens": request["max_completion_tokens"]}
        prompt = await self._invalid_as_400(self.task.off_loop(self.task.chat_prompt, messages), "messages")
        return await self._run(request, options, [prompt], templated=True, chat=True)

    # ---------------------------------------------------------------- common

    def _check_request(self, body: Any) -> dict:
        if not isinstance(body, dict):
            raise OpenAIError(HTTPStatus.BAD_REQUEST, "the request body must be a JSON object")
        model = body.get("model")
        if model != self.name:
            raise OpenAIError(
                HTTPStatus.NOT_FOUND, f"model {model!r} not found; this server serves {self.name!r}", "model"
            )
        if not self.ready:
            raise OpenAIError(HTTPStatus.SERVICE_UNAVAILABLE, f"model {self.name!r} is still loading")
        return body

    async def _invalid_as_400(self, parsing, param: str | None = None):
        """Await request parsing (run off the event loop by the task); its InvalidInput is a 400."""
        try:
            return await parsing
        except InvalidInput as error:
            raise OpenAIError(HTTPStatus.BAD_REQUEST, str(error), param) from None

    async def _run(
        self, request: Mapping[str, Any], options: OpenAIOptions, prompts: list[str], templated: bool, chat: bool
    ):
        raw = {key: request.get(key) for key in GenerationParameters.names()}
        stream = options.stream
        include_usage = bool((options.stream_options or {}).get("include_usage"))
        response = _Response(self.name, chat, len(prompts))
        if not stream:
            items = await self._invalid_as_400(self.task.off_loop(self.task.items, prompts, raw, templated=templated))
            results = await self._submit(items)
            return response.complete(results)

        queue: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()

        def sink_for(index: int):
            return lambda text: loop.call_soon_threadsafe(queue.put_nowait, (index, text))

        items = await self._invalid_as_400(
            self.task.off_loop(self.task.items, prompts, raw, templated=templated, sink_for=sink_for)
        )
        submitted = asyncio.ensure_future(self.batcher.submit(items))
        await asyncio.sleep(0)  # the batcher checks its queue at once: a full queue is a 503, not a broken stream
        if submitted.done() and submitted.exception() is not None:
            await self._submit_error(submitted.exception())
        return self._stream(response, items, queue, submitted, include_usage)

    async def _submit(self, items: list[GenerateItem]) -> list[Generation]:
        try:
            return await self.batcher.submit(items)
        except Exception as error:
            await self._submit_error(error)
            raise

    async def _submit_error(self, error: BaseException) -> None:
        if isinstance(error, QueueFullError):
            raise OpenAIError(HTTPStatus.SERVICE_UNAVAILABLE, str(error)) from error
        if isinstance(error, InvalidInput):
            raise OpenAIError(HTTPStatus.BAD_REQUEST, str(error)) from error
        raise error

    async def _stream(self, response, items, queue: asyncio.Queue, submitted: asyncio.Future, include_usage: bool):
        try:
            for index in range(len(items)):
                first = response.chunk(index, "", None, role=True)
                if first is not None:
                    yield _sse(first)
            while True:
                getter = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait({getter, submitted}, return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    index, text = getter.result()
                    yield _sse(response.chunk(index, text, None))
                    continue
                getter.cancel()
                while not queue.empty():  # deltas queued before the batch finished
                    index, text = queue.get_nowait()
                    yield _sse(response.chunk(index, text, None))
                break
            try:
                results = submitted.result()
            except Exception as error:  # the response has started: report in the stream
                yield _sse(OpenAIError(HTTPStatus.INTERNAL_SERVER_ERROR, f"generation failed: {error}").body())
                yield "data: [DONE]\n\n"
                return
            for index, result in enumerate(results):
                yield _sse(response.chunk(index, "", result.finish_reason))
            if include_usage:
                yield _sse(response.usage_chunk(results))
            yield "data: [DONE]\n\n"
        finally:
            for item in items:  # a client that went away stops its rows at the next token
                item.cancelled = True
            if not submitted.done():
                submitted.cancel()


def _is_default(value: Any, defaults: tuple) -> bool:
    """Equal to a default and of its kind (True is not 1, but 0.0 is 0)."""
    for default in defaults:
        same_kind = isinstance(value, bool) == isinstance(default, bool)
        if same_kind and value == default:
            return True
    return False


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def _chat_messages(messages: Any) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise OpenAIError(HTTPStatus.BAD_REQUEST, "messages must be a non-empty list", "messages")
    result = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise OpenAIError(HTTPStatus.BAD_REQUEST, f"{where} must be an object", "messages")
        role = message.get("role")
        if role not in CHAT_ROLES:
            raise OpenAIError(
                HTTPStatus.BAD_REQUEST, f"{where}.role must be one of {list(CHAT_ROLES)}, got {role!r}", "messages"
            )
        content = message.get("content")
        if isinstance(content, list):  # content parts: only text is supported
            texts = []
            for part in content:
                if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise OpenAIError(HTTPStatus.BAD_REQUEST, f"{where}.content: only text parts are supported")
                texts.append(part["text"])
            content = "".join(texts)
        if not isinstance(content, str):
            raise OpenAIError(HTTPStatus.BAD_REQUEST, f"{where}.content must be a string", "messages")
        result.append({"role": "system" if role == "developer" else role, "content": content})
    return result


class _Response:
    """Builds OpenAI completion / chat completion bodies and stream chunks for one request."""

    def __init__(self, model: str, chat: bool, count: int):
        self.model, self.chat, self.count = model, chat, count
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())

    def _envelope(self, kind: str) -> dict:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    @staticmethod
    def _usage(results: list[Generation]) -> dict:
        prompt = sum(r.prompt_tokens for r in results)
        completion = sum(r.completion_tokens for r in results)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def complete(self, results: list[Generation]) -> dict:
        if self.chat:
            body = self._envelope("chat.completion")
            body["choices"] = [
                {
                    "index": index,
                    "message": {"role": "assistant", "content": r.text},
                    "finish_reason": r.finish_reason,
                    "logprobs": None,
                }
                for index, r in enumerate(results)
            ]
        else:
            body = self._envelope("text_completion")
            body["choices"] = [
                {"index": index, "text": r.text, "finish_reason": r.finish_reason, "logprobs": None}
                for index, r in enumerate(results)
            ]
        body["usage"] = self._usage(results)
        return body

    def chunk(self, index: int, text: str, finish_reason: str | None, role: bool = False) -> dict | None:
        if self.chat:
            body = self._envelope("chat.completion.chunk")
            if role:
                delta = {"role": "assistant", "content": ""}
            else:
                delta = {"content": text} if text else {}
            body["choices"] = [{"index": index, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]
            return body
        if role:
            return None  # completions have no role chunk
        body = self._envelope("text_completion")
        body["choices"] = [{"index": index, "text": text, "finish_reason": finish_reason, "logprobs": None}]
        return body

    def usage_chunk(self, results: list[Generation]) -> dict:
        body = self._envelope("chat.completion.chunk" if self.chat else "text_completion")
        body["choices"] = []
        body["usage"] = self._usage(results)
        return body


def install_openai_routes(model: OpenAITextGenerationModel, app=None, prefix: str = ROUTE_PREFIX) -> None:
    """Add the OpenAI routes for ``model`` to KServe's FastAPI app (before the server starts)."""
    from fastapi.responses import JSONResponse, StreamingResponse

    if app is None:
        from kserve.model_server import app

    async def _body(request: Request) -> Any:
        try:
            return await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as error:
            raise OpenAIError(HTTPStatus.BAD_REQUEST, f"request body is not valid JSON: {error}") from None

    async def _respond(create, request: Request):
        try:
            result = await create(await _body(request))
        except OpenAIError as error:
            return JSONResponse(status_code=error.status, content=error.body())
        except ModelNotReady as error:
            failure = OpenAIError(HTTPStatus.SERVICE_UNAVAILABLE, str(error))
            return JSONResponse(status_code=failure.status, content=failure.body())
        if isinstance(result, dict):
            return JSONResponse(content=result)
        return StreamingResponse(result, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    async def completions(request: Request):
        return await _respond(model.create_completion, request)

    async def chat_completions(request: Request):
        return await _respond(model.create_chat_completion, request)

    async def models():
        created = int(time.time())
        return {"object": "list", "data": [{"id": model.name, "object": "model", "created": created, "owned_by": ""}]}

    app.add_api_route(f"{prefix}/v1/completions", completions, methods=["POST"], tags=["OpenAI"])
    app.add_api_route(f"{prefix}/v1/chat/completions", chat_completions, methods=["POST"], tags=["OpenAI"])
    app.add_api_route(f"{prefix}/v1/models", models, methods=["GET"], tags=["OpenAI"])
