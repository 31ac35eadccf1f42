"""Text-to-image: Stable Diffusion (and other diffusers text-to-image pipelines).

Wire format (KServe v2 / Open Inference Protocol):
  inputs   ``prompt`` BYTES [N], optional ``negative_prompt`` BYTES [N]
  params   ``num_inference_steps``, ``guidance_scale``, ``height``, ``width``, ``seed``
  outputs  ``image`` BYTES [N], each a base64-encoded PNG
v1: ``{"instances": [{"prompt": ..., "negative_prompt": ..., "seed": ..., ...}]}`` ->
``{"predictions": [{"image": "<base64 png>"}]}``.

The device-specific part is a backend with one method, ``generate``: diffusers on CUDA/CPU
(``predictor.backends.diffusers``) or optimum-neuron on Neuron (``predictor.backends.neuron``).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Protocol

import numpy as np
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferOutput, InferRequest
from pydantic import Field

from predictor.tasks import tensors
from predictor.tasks.base import Task
from predictor.tasks.encoding import encode_png
from predictor.tasks.params import (
    MAX_SEED,
    Between,
    Integer,
    MultipleOf,
    Number,
    RequestParameters,
    Seed,
    ServerDefault,
    seed_context,
    v1_parameters,
    v2_parameters,
)

logger = logging.getLogger(__name__)

INLINE_ENCODE_PIXELS = 128 * 128  # results up to this many pixels are encoded on the event loop
MAX_GUIDANCE_SCALE = 50.0
MAX_PROMPT_CHARS = 4096


class ImageParameters(RequestParameters):
    """Request parameters of text-to-image (v2 parameters, v1 ``parameters`` or per instance)."""

    num_inference_steps: Annotated[Integer, Between(1, "max_steps")] = Field(
        ServerDefault("default_steps"), description="denoising steps (default --default_steps, at most --max_steps)"
    )
    guidance_scale: Annotated[Number, Between(0.0, MAX_GUIDANCE_SCALE)] = Field(
        7.5, description="classifier-free guidance scale; above 1 the negative prompt steers away"
    )
    height: Annotated[Integer, Between(8, "max_height"), MultipleOf(8)] = Field(
        ServerDefault("default_height"), description="image height in pixels (default --default_height or the model's)"
    )
    width: Annotated[Integer, Between(8, "max_width"), MultipleOf(8)] = Field(
        ServerDefault("default_width"), description="image width in pixels (default --default_width or the model's)"
    )
    seed: Seed | None = Field(None, description="seed of the first image; image i uses seed + i (default: random)")


PARAMETER_NAMES = ImageParameters.names()


@dataclass(frozen=True)
class ImageParams:
    """The parameters a whole pipeline call shares; equal params may be batched together."""

    num_inference_steps: int
    guidance_scale: float
    height: int
    width: int


@dataclass(frozen=True)
class ImageItem:
    prompt: str
    negative_prompt: str
    params: ImageParams
    seed: int


class ImageBackend(Protocol):
    """What a device backend offers the task."""

    #: (height, width) the backend was compiled for, or None when any multiple of 8 works.
    fixed_size: tuple[int, int] | None
    default_size: tuple[int, int]
    #: True when shapes compile on first use (torch.compile): only the warmed-up shapes are accepted.
    compiled: bool
    #: True when the pipeline uses zero embeddings for "no negative prompt" but encodes "" when any
    #: row of the call has one (SDXL's ``force_zeros_for_empty_prompt``): rows with and without a
    #: negative prompt must then run in separate calls.
    empty_negative_is_zeros: bool

    def generate(self, prompts: list[str], negative_prompts: list[str], params: ImageParams, seeds: list[int]) -> list:
        """Return one PIL image per prompt."""


def _text_list(request: InferRequest, name: str, required: bool) -> list[str] | None:
    values = tensors.bytes_elements(request, name, required)
    if values is None:
        return None
    return [tensors.as_text(value, f"input '{name}'") for value in values]


class TextToImageTask(Task):
    name = "text-to-image"

    backend: ImageBackend | None

    # ---------------------------------------------------------------- lifecycle

    def loaded(self) -> None:
        logger.info(
            "text-to-image backend %s ready: default size %s, fixed size %s",
            type(self.backend).__name__,
            self.default_size,
            self.backend.fixed_size,
        )

    @property
    def default_size(self) -> tuple[int, int]:
        if self.backend is not None and self.backend.fixed_size:
            return self.backend.fixed_size
        base = self.backend.default_size if self.backend is not None else (512, 512)
        return (self.limits.default_height or base[0], self.limits.default_width or base[1])

    @property
    def accepted_size(self) -> tuple[int, int] | None:
        """The one (height, width) accepted, for compiled models; None when any size within limits is."""
        if self.backend is None:
            return None
        if self.backend.fixed_size:
            return self.backend.fixed_size
        if getattr(self.backend, "compiled", False):
            return self.default_size
        return None

    def warmup_items(self) -> list[ImageItem]:
        return self._warmup_batch(1, 7.5)

    def warmup_batches(self) -> list[list[ImageItem]]:
        """One batch, or with torch.compile every shape a request can reach, so none compiles once ready.

        The accepted size is one (``accepted_size``); what varies is the batch (1 ..
        ``--max_batch_size`` rows) and classifier-free guidance, which diffusers turns on for
        ``guidance_scale > 1`` and which doubles the rows the denoiser sees.
        """
        if not getattr(self.backend, "compiled", False):
            return [self.warmup_items()]
        return [
            self._warmup_batch(size, guidance)
            for guidance in (7.5, 1.0)
            for size in range(1, self.limits.max_batch_size + 1)
        ]

    def _warmup_batch(self, size: int, guidance: float) -> list[ImageItem]:
        height, width = self.default_size
        params = ImageParams(min(2, self.limits.max_steps), min(guidance, MAX_GUIDANCE_SCALE), height, width)
        return [ImageItem(prompt="warm-up", negative_prompt="", params=params, seed=seed) for seed in range(size)]

    # ---------------------------------------------------------------- metadata

    def input_types(self) -> list[dict]:
        return [
            {"name": "prompt", "datatype": "BYTES", "shape": [-1]},
            {"name": "negative_prompt", "datatype": "BYTES", "shape": [-1]},  # optional
        ]

    def output_types(self) -> list[dict]:
        return [{"name": "image", "datatype": "BYTES", "shape": [-1]}]

    # ---------------------------------------------------------------- decoding

    def parse_v2(self, request: InferRequest) -> list[ImageItem]:
        known = {"prompt", "negative_prompt"}
        unknown = [tensor.name for tensor in request.inputs if tensor.name not in known]
        if unknown:
            raise InvalidInput(f"unknown input(s) {unknown}; expected 'prompt' and optional 'negative_prompt'")
        prompts = _text_list(request, "prompt", required=True)
        negatives = _text_list(request, "negative_prompt", required=False)
        if negatives is not None and len(negatives) != len(prompts):
            raise InvalidInput(
                f"input 'negative_prompt' has {len(negatives)} elements; it must match 'prompt' ({len(prompts)})"
            )
        return self._items(prompts, negatives, v2_parameters(request, ImageParameters))

    def parse_v1(self, body: dict) -> list[ImageItem]:
        instances = body.get("instances")
        if not isinstance(instances, list) or not instances:
            raise InvalidInput('v1 body must be {"instances": [{"prompt": ...}, ...]} with at least one instance')
        if len(instances) > self.limits.max_batch_size:
            raise InvalidInput(f"{len(instances)} instances exceed the batch limit of {self.limits.max_batch_size}")
        defaults = v1_parameters(body, ImageParameters)
        items: list[ImageItem] = []
        for index, instance in enumerate(instances):
            if isinstance(instance, str):
                instance = {"prompt": instance}
            if not isinstance(instance, dict):
                raise InvalidInput(f"instances[{index}] must be an object with a 'prompt' or a string")
            fields = {"prompt", "negative_prompt", *PARAMETER_NAMES}
            unknown = set(instance) - fields
            if unknown:
                raise InvalidInput(
                    f"instances[{index}]: unknown field(s) {sorted(unknown)}; supported: {sorted(fields)}"
                )
            prompt = instance.get("prompt")
            negative = instance.get("negative_prompt")
            for field, value in (("prompt", prompt), ("negative_prompt", negative)):
                if value is not None and not isinstance(value, str):
                    raise InvalidInput(f"instances[{index}].{field} must be a string")
            if prompt is None:
                raise InvalidInput(f"instances[{index}].prompt is required")
            params = {**defaults, **{k: v for k, v in instance.items() if k in PARAMETER_NAMES}}
            items += self._items(
                [prompt], None if negative is None else [negative], params, where=f"instances[{index}]"
            )
        return items

    def _items(self, prompts, negatives, raw: Mapping[str, Any], where: str = "request") -> list[ImageItem]:
        if not prompts:
            raise InvalidInput("input 'prompt' is empty: give at least one prompt")
        if len(prompts) > self.limits.max_batch_size:
            raise InvalidInput(f"{len(prompts)} prompts exceed the batch limit of {self.limits.max_batch_size}")
        for index, prompt in enumerate(prompts):
            if not prompt.strip():
                raise InvalidInput(f"{where}: prompt[{index}] is empty")
            if len(prompt) > MAX_PROMPT_CHARS:
                raise InvalidInput(f"{where}: prompt[{index}] is longer than {MAX_PROMPT_CHARS} characters")
        params, seed = self._params(raw, where, len(prompts))
        base_seed = random.randint(0, MAX_SEED - (len(prompts) - 1)) if seed is None else seed
        negatives = negatives or [""] * len(prompts)
        return [
            ImageItem(prompt=prompt, negative_prompt=negative, params=params, seed=base_seed + index)
            for index, (prompt, negative) in enumerate(zip(prompts, negatives, strict=True))
        ]

    def _params(self, raw: Mapping[str, Any], where: str, count: int) -> tuple[ImageParams, int | None]:
        """The call's parameters and the first seed (None: random), checked against the server's limits."""
        default_height, default_width = self.default_size
        limits = self.limits
        parsed = ImageParameters.parse(
            raw,
            where,
            default_steps=limits.default_steps,
            max_steps=limits.max_steps,
            default_height=default_height,
            max_height=limits.max_height,
            default_width=default_width,
            max_width=limits.max_width,
            **seed_context(count),
        )
        height, width = parsed.height, parsed.width
        fixed = self.accepted_size
        if fixed and (height, width) != fixed:
            raise InvalidInput(
                f"{where}: this model was compiled for {fixed[0]}x{fixed[1]} images; got height={height}, width={width}"
            )
        params = ImageParams(parsed.num_inference_steps, parsed.guidance_scale, height, width)
        return params, parsed.seed

    # ---------------------------------------------------------------- running

    def batch_key(self, item: ImageItem) -> Hashable:
        if getattr(self.backend, "empty_negative_is_zeros", False):
            return (item.params, bool(item.negative_prompt))
        return item.params

    def batch_cost(self, items: Sequence[ImageItem]) -> float:
        """Denoising work: images x steps x latent pixels (the watchdog deadline scales with it)."""
        return float(sum(item.params.num_inference_steps * item.params.height * item.params.width for item in items))

    def run_batch(self, items: Sequence[ImageItem]) -> list[Any]:
        params = items[0].params
        if any(item.params != params for item in items):
            raise ValueError("a batch must share its parameters")
        return self.backend.generate(
            [item.prompt for item in items],
            [item.negative_prompt for item in items],
            params,
            [item.seed for item in items],
        )

    # ---------------------------------------------------------------- encoding

    def encodes_inline(self, results) -> bool:
        # PNG + base64 of a 64x64 image: ~0.5 ms (docs/benchmarks.md); larger ones go to the encoder pool.
        return sum(image.width * image.height for image in results) <= INLINE_ENCODE_PIXELS

    def v2_outputs(self, results, binary: bool) -> list[InferOutput]:
        encoded = [encode_png(image) for image in results]
        data = np.array([value.encode("ascii") for value in encoded], dtype=np.object_)
        output = InferOutput(name="image", shape=[len(encoded)], datatype="BYTES")
        output.set_data_from_numpy(data, binary_data=binary)
        return [output]

    def v1_predictions(self, results) -> list[dict]:
        return [{"image": encode_png(image)} for image in results]
