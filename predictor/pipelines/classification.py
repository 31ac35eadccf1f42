"""Text and image classification: transformers pipelines (optimum-neuron models on Neuron).

Wire format (KServe v2 / Open Inference Protocol), K = ``top_k`` (default 1, at most the label count):
  text-classification   input ``text`` BYTES [N] (UTF-8)
  image-classification  input ``image`` BYTES [N], each an encoded image (PNG, JPEG, ...): raw bytes
                        (binary tensor data, gRPC) or base64 text (JSON)
  params   ``top_k`` (1..number of labels)
  outputs  ``labels`` BYTES [N, K] and ``scores`` FP32 [N, K], best first
v1: ``{"instances": ["text", ...]}`` or ``[{"text": ...}]`` / ``[{"image": {"b64": ...}}]`` ->
``{"predictions": [{"labels": [...], "scores": [...]}]}``. See docs/tasks.md.

All items of all requests share one pipeline call (the pipeline scores every label; each item
keeps its own top K), so the batcher fills batches across requests with different ``top_k``.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
from abc import abstractmethod
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferOutput, InferRequest

from predictor.pipelines import tensors
from predictor.pipelines.base import Task

logger = logging.getLogger(__name__)

MAX_TEXT_CHARS = 16384
MAX_IMAGE_BYTES = 32 * 1024 * 1024
MAX_IMAGE_PIXELS = 40_000_000


class PipelineBackend(Protocol):
    """What a device backend offers a pipeline task."""

    labels: list[str]

    def __call__(self, inputs: list, **kwargs) -> list:
        """Run the transformers pipeline on a list of inputs; one result per input."""

    def detect(self, images: list, threshold: float) -> list[list[dict]]:
        """Object detection on PIL images: per image a list of {label, score, box}."""


class TransformersBackend:
    """A transformers pipeline on CUDA or CPU."""

    def __init__(self, task: str, model_dir: str, device_kind: str, dtype: str = "auto"):
        from transformers import pipeline

        from predictor.pipelines.text_to_image import torch_dtype
        from predictor.storage import local_weights_variant, weights_variant

        variant = local_weights_variant(model_dir, weights_variant(device_kind, dtype))
        self.pipeline = pipeline(
            task,
            model=model_dir,
            device=device_kind,
            dtype=torch_dtype(dtype, device_kind),
            model_kwargs={"variant": variant} if variant else None,
        )
        id2label = self.pipeline.model.config.id2label
        self.labels = [id2label[index] for index in sorted(id2label)]

    def __call__(self, inputs: list, **kwargs) -> list:
        import torch

        with torch.inference_mode():
            if len(inputs) == 1:  # a lone input skips the pipeline's DataLoader (transformers Pipeline.run_single)
                return [self.pipeline(inputs[0], **kwargs)]
            return self.pipeline(inputs, batch_size=len(inputs), **kwargs)

    def detect(self, images: list, threshold: float) -> list[list[dict]]:
        """Object detection as one padded batch (the pipeline itself cannot stack different sizes)."""
        return detect_batch(self.pipeline.image_processor, self.pipeline.model, images, threshold)


def detect_batch(image_processor, model, images: list, threshold: float) -> list[list[dict]]:
    """Preprocess (resize, pad), run and post-process DETR-style detectors on a batch of PIL images.

    DETR-class models predict boxes relative to each unpadded image, so scaling by the original
    sizes is right for padded batches too (as in the detection pipeline, which runs one image).
    """
    import torch

    inputs = image_processor(images=images, return_tensors="pt")
    device = getattr(model, "device", None)
    dtype = getattr(model, "dtype", None)
    inputs = {
        key: value.to(device=device, dtype=dtype if value.is_floating_point() else None)
        if isinstance(value, torch.Tensor) and device is not None
        else value
        for key, value in inputs.items()
    }
    with torch.inference_mode():
        outputs = model(**inputs)
    sizes = torch.tensor([[image.height, image.width] for image in images])
    processed = image_processor.post_process_object_detection(outputs, threshold=threshold, target_sizes=sizes)
    id2label = model.config.id2label
    results = []
    for found in processed:
        results.append(
            [
                {
                    "label": id2label.get(int(label), str(int(label))),
                    "score": float(score),
                    "box": dict(zip(("xmin", "ymin", "xmax", "ymax"), (float(v) for v in box.tolist()), strict=True)),
                }
                for score, label, box in zip(found["scores"], found["labels"], found["boxes"], strict=True)
            ]
        )
    return results


def load_pipeline_backend(task: str, model_dir: str, device_kind: str, options: Mapping[str, Any]) -> PipelineBackend:
    if device_kind == "neuron":
        from predictor.pipelines.neuron_transformers import NeuronPipelineBackend

        return NeuronPipelineBackend(task, model_dir)
    return TransformersBackend(task, model_dir, device_kind, dtype=options.get("dtype", "auto"))


# ----------------------------------------------------------------------------- images


@dataclass(frozen=True)
class EncodedImage:
    """An image as sent, checked far enough to reject bad data on the event loop (header only)."""

    data: bytes
    format: str
    size: tuple[int, int]

    def decode(self):
        from PIL import Image

        with Image.open(io.BytesIO(self.data)) as image:
            return image.convert("RGB")


class ImageError(Exception):
    """An image that passed the header check but failed to decode (answered 400 for its request)."""


def read_image(value: bytes | str, where: str) -> EncodedImage:
    """Accept raw image bytes or base64 text (also as a data URL); check the header, not the pixels."""
    from PIL import Image, UnidentifiedImageError

    data = value.encode("ascii", "replace") if isinstance(value, str) else bytes(value)
    candidates = [data]
    text = data.strip()
    if text.startswith(b"data:") and b"," in text:
        text = text.split(b",", 1)[1]
    try:
        candidates.insert(0, base64.b64decode(text, validate=True))
    except (binascii.Error, ValueError):
        pass
    for candidate in candidates:
        if len(candidate) > MAX_IMAGE_BYTES:
            raise InvalidInput(f"{where} is larger than {MAX_IMAGE_BYTES} bytes")
        try:
            with Image.open(io.BytesIO(candidate)) as image:
                size, image_format = image.size, image.format or "unknown"
        except (UnidentifiedImageError, OSError, ValueError):
            continue
        if size[0] < 1 or size[1] < 1 or size[0] * size[1] > MAX_IMAGE_PIXELS:
            raise InvalidInput(f"{where}: image size {size[0]}x{size[1]} is outside 1..{MAX_IMAGE_PIXELS} pixels")
        return EncodedImage(candidate, image_format, size)
    raise InvalidInput(f"{where} is not a readable image (send PNG/JPEG bytes, or base64 of them in JSON)")


def v1_image(instance: Any, where: str) -> EncodedImage:
    """A v1 instance: base64 string, ``{"b64": ...}``, ``{"image": ...}`` or ``{"image": {"b64": ...}}``."""
    if isinstance(instance, dict) and set(instance) <= {"image", "b64"} and len(instance) == 1:
        instance = instance.get("image", instance.get("b64"))
    if isinstance(instance, dict) and set(instance) == {"b64"}:
        instance = instance["b64"]
    if not isinstance(instance, str):
        raise InvalidInput(f"{where} must be a base64 image string, {{'b64': ...}} or {{'image': ...}}")
    return read_image(instance, where)


def decode_images(images: Sequence[EncodedImage]) -> tuple[list, list[int], dict[int, ImageError]]:
    """Decode on the inference thread; a bad image only fails its own request."""
    decoded, positions, errors = [], [], {}
    for index, image in enumerate(images):
        try:
            decoded.append(image.decode())
            positions.append(index)
        except Exception as error:  # PIL raises many types for truncated or corrupt data
            errors[index] = ImageError(f"image could not be decoded ({image.format}): {error}")
    return decoded, positions, errors


def raise_image_errors(results: Sequence[Any]) -> None:
    for index, result in enumerate(results):
        if isinstance(result, ImageError):
            raise InvalidInput(f"image[{index}]: {result}")


# ----------------------------------------------------------------------------- tasks


@dataclass(frozen=True)
class ClassifyItem:
    value: Any  # str (text) or EncodedImage
    top_k: int


@dataclass(frozen=True)
class Classification:
    labels: tuple[str, ...]
    scores: tuple[float, ...]


class _ClassifierTask(Task):
    pipeline_task = ""
    input_name = ""
    input_help = ""
    PARAMETERS = ("top_k",)

    def __init__(self, *args, backend: PipelineBackend | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.backend = backend

    def load(self) -> None:
        if self.backend is None:
            self.backend = load_pipeline_backend(self.pipeline_task, self.model_dir, self.device.kind, self.options)
        logger.info("%s backend %s ready: labels %s", self.name, type(self.backend).__name__, self.backend.labels)

    @property
    def label_count(self) -> int:
        return len(self.backend.labels) if self.backend is not None else 1

    def input_types(self) -> list[dict]:
        return [{"name": self.input_name, "datatype": "BYTES", "shape": [-1]}]

    def output_types(self) -> list[dict]:
        return [
            {"name": "labels", "datatype": "BYTES", "shape": [-1, -1]},
            {"name": "scores", "datatype": "FP32", "shape": [-1, -1]},
        ]

    def _top_k(self, raw: Mapping[str, Any]) -> int:
        return tensors.integer(raw.get("top_k", 1), "top_k", 1, self.label_count)

    def parse_v2(self, request: InferRequest) -> list[ClassifyItem]:
        tensors.check_input_names(request, [self.input_name])
        raw = tensors.request_parameters(request, self.PARAMETERS)
        values = self._v2_values(request)
        tensors.check_batch(len(values), self.limits.max_batch_size, f"{self.input_name}s")
        top_k = self._top_k(raw)
        return [ClassifyItem(value, top_k) for value in values]

    def parse_v1(self, body: dict) -> list[ClassifyItem]:
        instances, parameters = tensors.v1_instances(
            body, self.limits.max_batch_size, self.input_help, self.PARAMETERS
        )
        top_k = self._top_k(parameters)
        return [
            ClassifyItem(self._v1_value(instance, f"instances[{i}]"), top_k) for i, instance in enumerate(instances)
        ]

    def batch_key(self, item: ClassifyItem) -> Hashable:
        return self.name

    def run_batch(self, items: Sequence[ClassifyItem]) -> list[Any]:
        inputs, positions, errors = self._inputs([item.value for item in items])
        outputs = self.backend(inputs, **self._call_kwargs()) if inputs else []
        if len(outputs) != len(inputs):
            raise RuntimeError(f"pipeline returned {len(outputs)} results for {len(inputs)} inputs")
        results: list[Any] = [errors.get(index) for index in range(len(items))]
        for position, scored in zip(positions, outputs, strict=True):
            scored = sorted(_as_list(scored), key=lambda entry: entry["score"], reverse=True)[: items[position].top_k]
            results[position] = Classification(
                tuple(str(entry["label"]) for entry in scored), tuple(float(entry["score"]) for entry in scored)
            )
        return results

    def encodes_inline(self, results: Sequence[Any]) -> bool:
        return True  # a few labels and scores

    def v2_outputs(self, results: Sequence[Any], binary: bool) -> list[InferOutput]:
        raise_image_errors(results)
        count, k = len(results), len(results[0].labels)
        return [
            tensors.bytes_output("labels", [label for r in results for label in r.labels], [count, k], binary),
            tensors.numeric_output("scores", [s for r in results for s in r.scores], [count, k], "FP32", binary),
        ]

    def v1_predictions(self, results: Sequence[Any]) -> list[dict]:
        raise_image_errors(results)
        return [{"labels": list(r.labels), "scores": list(r.scores)} for r in results]

    # hooks
    @abstractmethod
    def _v2_values(self, request: InferRequest) -> list[Any]:
        """The per-item input values of a v2 request (texts or encoded images)."""

    @abstractmethod
    def _v1_value(self, instance: Any, where: str) -> Any:
        """The input value of one v1 instance."""

    def _inputs(self, values: list[Any]) -> tuple[list, list[int], dict[int, ImageError]]:
        return values, list(range(len(values))), {}

    def _call_kwargs(self) -> dict[str, Any]:
        return {}


def _as_list(scored: Any) -> list[dict]:
    # A pipeline returns a dict instead of a one-element list for some argument combinations.
    return [scored] if isinstance(scored, dict) else list(scored)


class TextClassificationTask(_ClassifierTask):
    name = "text-classification"
    pipeline_task = "text-classification"
    input_name = "text"
    input_help = '"some text" or {"text": ...}'

    def _v2_values(self, request: InferRequest) -> list[str]:
        return tensors.text_elements(request, "text", MAX_TEXT_CHARS)

    def _v1_value(self, instance: Any, where: str) -> str:
        if isinstance(instance, dict):
            if set(instance) != {"text"}:
                raise InvalidInput(f"{where} must be a string or {{'text': ...}}, got keys {sorted(instance)}")
            instance = instance["text"]
        if not isinstance(instance, str):
            raise InvalidInput(f"{where} must be a string or {{'text': ...}}")
        tensors.check_texts([instance], where, MAX_TEXT_CHARS)
        return instance

    def _call_kwargs(self) -> dict[str, Any]:
        return {"top_k": None, "truncation": True}

    def warmup_items(self) -> list[ClassifyItem]:
        return [ClassifyItem("warm-up", 1)]


class ImageClassificationTask(_ClassifierTask):
    name = "image-classification"
    pipeline_task = "image-classification"
    input_name = "image"
    input_help = '"<base64 image>" or {"image": {"b64": ...}}'

    def _v2_values(self, request: InferRequest) -> list[EncodedImage]:
        values = tensors.bytes_elements(request, "image")
        return [read_image(value, f"input 'image'[{index}]") for index, value in enumerate(values)]

    def _v1_value(self, instance: Any, where: str) -> EncodedImage:
        return v1_image(instance, where)

    def _inputs(self, values):
        return decode_images(values)

    def _call_kwargs(self) -> dict[str, Any]:
        return {"top_k": self.label_count}

    def warmup_items(self) -> list[ClassifyItem]:
        return [ClassifyItem(warmup_image(), 1)]


def warmup_image() -> EncodedImage:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (127, 127, 127)).save(buffer, format="PNG")
    return EncodedImage(buffer.getvalue(), "PNG", (64, 48))
