"""KServe endpoints as the playground sees them: parse ``NAME=URL``, build a request, read the answer.

Three URL forms, told apart by their path (docs/playground.md):

* ``http://host:port/v2/models/MODEL`` (``/infer`` optional): Open Inference Protocol v2, REST.
* ``http://host:port/v1/models/MODEL`` (``:predict`` optional): KServe v1.
* ``http://host:port`` with no path (or any other path): an InferenceGraph router. KServe's router
  POSTs the body unchanged to the chosen unit's predictor endpoint, which is the v1 path for
  runtimes that list v1 first, as ours do (kserve ``GetPredictorEndpoint`` in
  pkg/controller/v1beta1/inferenceservice/utils/utils.go), so the playground sends a v1 body.

Nothing here does I/O: :func:`call` in ``playground.client`` sends what :func:`request_body` builds
and hands the answer to :func:`read_answer`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

V1, V2 = "v1", "v2"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_V2_PATH = re.compile(r"^(?P<base>.*)/v2/models/(?P<model>[^/]+)(?:/infer)?/?$")
_V1_PATH = re.compile(r"^(?P<base>.*)/v1/models/(?P<model>[^/:]+)(?::predict)?/?$")


class EndpointSpecError(ValueError):
    """A ``--endpoint`` value the playground cannot use."""


@dataclass(frozen=True)
class Endpoint:
    name: str
    url: str  # as given, for display
    protocol: str  # V1 or V2
    infer_url: str  # where requests go
    model: str | None  # None for a router: the unit picks itself

    def public(self) -> dict[str, Any]:
        return {"name": self.name, "url": self.url, "protocol": self.protocol, "model": self.model}


@dataclass(frozen=True)
class Generation:
    """One text-to-image request, already validated by the web API."""

    prompt: str
    negative_prompt: str | None
    steps: int
    width: int
    height: int
    guidance: float
    seed: int

    def parameters(self) -> dict[str, Any]:
        return {
            "num_inference_steps": self.steps,
            "guidance_scale": self.guidance,
            "height": self.height,
            "width": self.width,
            "seed": self.seed,
        }


@dataclass(frozen=True)
class Answer:
    """What an endpoint's successful answer says: the image and who made it."""

    image_b64: str
    unit: str | None
    device: str | None
    device_name: str | None


class AnswerError(ValueError):
    """A 2xx answer that does not hold an image the playground can show."""


def parse_endpoint(spec: str) -> Endpoint:
    """``NAME=URL`` -> Endpoint; raises EndpointSpecError saying what is wrong."""
    name, sep, url = spec.partition("=")
    name, url = name.strip(), url.strip()
    if not sep or not name or not url:
        raise EndpointSpecError(f"{spec!r}: expected NAME=URL, e.g. local=http://127.0.0.1:8080/v2/models/sd")
    if not _NAME.match(name):
        raise EndpointSpecError(f"{spec!r}: the name may hold letters, digits, '.', '_' and '-' (at most 63)")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise EndpointSpecError(f"{spec!r}: the URL must start with http:// or https:// and name a host")
    if parts.query or parts.fragment:
        raise EndpointSpecError(f"{spec!r}: the URL must not have a query or fragment")
    path = parts.path
    if match := _V2_PATH.match(path):
        infer_path, protocol, model = f"{match['base']}/v2/models/{match['model']}/infer", V2, match["model"]
    elif match := _V1_PATH.match(path):
        infer_path, protocol, model = f"{match['base']}/v1/models/{match['model']}:predict", V1, match["model"]
    else:
        infer_path, protocol, model = path or "/", V1, None
    infer_url = urlunsplit((parts.scheme, parts.netloc, infer_path, "", ""))
    return Endpoint(name=name, url=url, protocol=protocol, infer_url=infer_url, model=model)


def parse_endpoints(specs: list[str]) -> list[Endpoint]:
    endpoints = [parse_endpoint(spec) for spec in specs]
    names = [endpoint.name for endpoint in endpoints]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise EndpointSpecError(f"endpoint names must be unique: {', '.join(duplicates)} given more than once")
    return endpoints


def request_body(endpoint: Endpoint, generation: Generation) -> dict[str, Any]:
    """The predictor's text-to-image request (README, "Protocol") in the endpoint's protocol."""
    if endpoint.protocol == V2:
        inputs = [{"name": "prompt", "datatype": "BYTES", "shape": [1], "data": [generation.prompt]}]
        if generation.negative_prompt:
            inputs.append(
                {"name": "negative_prompt", "datatype": "BYTES", "shape": [1], "data": [generation.negative_prompt]}
            )
        return {"inputs": inputs, "parameters": generation.parameters()}
    instance: dict[str, Any] = {"prompt": generation.prompt, **generation.parameters()}
    if generation.negative_prompt:
        instance["negative_prompt"] = generation.negative_prompt
    return {"instances": [instance]}


def read_answer(endpoint: Endpoint, body: Any) -> Answer:
    """The image and the unit/device from a 2xx JSON answer; AnswerError when it has no image."""
    if not isinstance(body, dict):
        raise AnswerError("the answer is not a JSON object")
    if endpoint.protocol == V2:
        image = _v2_image(body)
    else:
        predictions = body.get("predictions")
        first = predictions[0] if isinstance(predictions, list) and predictions else None
        image = first.get("image") if isinstance(first, dict) else None
        if not isinstance(image, str):
            raise AnswerError('the answer has no "predictions"[0]["image"]: is this a text-to-image model?')
    served = body.get("parameters") if isinstance(body.get("parameters"), dict) else {}
    unit = served.get("unit") or body.get("model_name")
    return Answer(
        image_b64=image,
        unit=_text(unit),
        device=_text(served.get("device")),
        device_name=_text(served.get("device_name")),
    )


def _v2_image(body: dict[str, Any]) -> str:
    outputs = body.get("outputs")
    if not isinstance(outputs, list):
        raise AnswerError('the answer has no "outputs" list')
    for output in outputs:
        if isinstance(output, dict) and output.get("name") == "image":
            data = output.get("data")
            if isinstance(data, list) and data and isinstance(data[0], str):
                return data[0]
            raise AnswerError('output "image" holds no base64 string')
    names = ", ".join(str(o.get("name")) for o in outputs if isinstance(o, dict)) or "none"
    raise AnswerError(f'the answer has no output named "image" (outputs: {names}): is this a text-to-image model?')


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
