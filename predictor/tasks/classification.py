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

import logging
from abc import abstractmethod
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Protocol

from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferOutput, InferRequest
from pydantic import Field

from predictor.tasks import tensors
from predictor.tasks.base import Task
from predictor.tasks.images import (
    EncodedImage,
    ImageError,
    decode_images,
    raise_image_errors,
    read_image,
    v1_image,
    warmup_image,
)
from predictor.tasks.params import Between, Integer, RequestParameters, v2_parameters

logger = logging.getLogger(__name__)

MAX_TEXT_CHARS = 16384


class PipelineBackend(Protocol):
    """What a device backend offers a pipeline task."""

    labels: list[str]

    def __call__(self, inputs: list) -> list[list[dict]]:
        """Every label's score ({label, score}) per input, in one device call for the list."""

    def detect(self, images: list, threshold: float) -> list[list[dict]]:
        """Object detection on PIL images: per image a list of {label, score, box}."""


class ClassifyParameters(RequestParameters):
    top_k: Annotated[Integer, Between(1, "label_count")] = Field(
        1, description="labels per input, best first (at most the model's label count)"
    )


@dataclass(frozen=True)
class ClassifyItem:
    value: Any  # str (text) or EncodedImage
    top_k: int


@dataclass(frozen=True)
class Classification:
    labels: tuple[str, ...]
    scores: tuple[float, ...]


class _ClassifierTask(Task):
    input_name = ""
    input_help = ""

    backend: PipelineBackend | None

    def loaded(self) -> None:
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
        return ClassifyParameters.parse(raw, label_count=self.label_count).top_k

    def parse_v2(self, request: InferRequest) -> list[ClassifyItem]:
        tensors.check_input_names(request, [self.input_name])
        raw = v2_parameters(request, ClassifyParameters)
        values = self._v2_values(request)
        tensors.check_batch(len(values), self.limits.max_batch_size, f"{self.input_name}s")
        top_k = self._top_k(raw)
        return [ClassifyItem(value, top_k) for value in values]

    def parse_v1(self, body: dict) -> list[ClassifyItem]:
        instances, parameters = tensors.v1_instances(
            body, self.limits.max_batch_size, self.input_help, ClassifyParameters
        )
        top_k = self._top_k(parameters)
        return [
            ClassifyItem(self._v1_value(instance, f"instances[{i}]"), top_k) for i, instance in enumerate(instances)
        ]

    def batch_key(self, item: ClassifyItem) -> Hashable:
        return self.name

    def run_batch(self, items: Sequence[ClassifyItem]) -> list[Any]:
        inputs, positions, errors = self._inputs([item.value for item in items])
        outputs = self.backend(inputs) if inputs else []
        if len(outputs) != len(inputs):
            raise RuntimeError(f"backend returned {len(outputs)} results for {len(inputs)} inputs")
        results: list[Any] = [errors.get(index) for index in range(len(items))]
        for position, scored in zip(positions, outputs, strict=True):
            scored = sorted(scored, key=lambda entry: entry["score"], reverse=True)[: items[position].top_k]
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


class TextClassificationTask(_ClassifierTask):
    name = "text-classification"
    default_max_batch_size = 32
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

    def warmup_items(self) -> list[ClassifyItem]:
        return [ClassifyItem("warm-up", 1)]


class ImageClassificationTask(_ClassifierTask):
    name = "image-classification"
    default_max_batch_size = 16
    input_name = "image"
    input_help = '"<base64 image>" or {"image": {"b64": ...}}'

    def _v2_values(self, request: InferRequest) -> list[EncodedImage]:
        values = tensors.bytes_elements(request, "image")
        return [read_image(value, f"input 'image'[{index}]") for index, value in enumerate(values)]

    def _v1_value(self, instance: Any, where: str) -> EncodedImage:
        return v1_image(instance, where)

    def _inputs(self, values):
        return decode_images(values)

    def warmup_items(self) -> list[ClassifyItem]:
        return [ClassifyItem(warmup_image(), 1)]
