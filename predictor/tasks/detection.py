"""Object detection: transformers ``object-detection`` pipelines (YOLOS, DETR-class models).

Wire format (KServe v2 / Open Inference Protocol); M = detections of all N images together:
  input    ``image`` BYTES [N], each an encoded image (raw bytes, or base64 text in JSON)
  params   ``threshold`` (score cut-off, 0..1, default 0.5), ``top_k`` (most detections per image)
  outputs  ``boxes`` FP32 [M, 4] (xmin, ymin, xmax, ymax in input-image pixels), ``labels`` BYTES [M],
           ``scores`` FP32 [M], ``image_index`` INT32 [M] (which input image each detection is in)
v1: ``{"instances": [{"image": {"b64": ...}}]}`` -> ``{"predictions": [[{"label", "score",
"box": {"xmin", "ymin", "xmax", "ymax"}}, ...]]}``: one list per image, best first. See docs/tasks.md.

The pipeline runs with threshold 0 and each item keeps its own detections, so requests with
different thresholds share one pipeline call.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from kserve.protocol.infer_type import InferOutput, InferRequest
from pydantic import Field

from predictor.tasks import tensors
from predictor.tasks.base import Task
from predictor.tasks.classification import PipelineBackend
from predictor.tasks.images import (
    EncodedImage,
    ImageError,
    decode_images,
    raise_image_errors,
    read_image,
    v1_image,
    warmup_image,
)
from predictor.tasks.params import Between, Integer, Number, RequestParameters, v2_parameters

DEFAULT_THRESHOLD = 0.5
MAX_DETECTIONS = 1000


class DetectParameters(RequestParameters):
    threshold: Annotated[Number, Between(0.0, 1.0)] = Field(DEFAULT_THRESHOLD, description="score cut-off")
    top_k: Annotated[Integer, Between(1, MAX_DETECTIONS)] = Field(
        MAX_DETECTIONS, description="most detections per image, best first"
    )


@dataclass(frozen=True)
class DetectItem:
    image: EncodedImage
    threshold: float
    top_k: int


@dataclass(frozen=True)
class Detection:
    label: str
    score: float
    box: tuple[float, float, float, float]  # xmin, ymin, xmax, ymax


class ObjectDetectionTask(Task):
    name = "object-detection"

    backend: PipelineBackend | None

    def warmup_items(self) -> list[DetectItem]:
        return [DetectItem(warmup_image(), DEFAULT_THRESHOLD, MAX_DETECTIONS)]

    def input_types(self) -> list[dict]:
        return [{"name": "image", "datatype": "BYTES", "shape": [-1]}]

    def output_types(self) -> list[dict]:
        return [
            {"name": "boxes", "datatype": "FP32", "shape": [-1, 4]},
            {"name": "labels", "datatype": "BYTES", "shape": [-1]},
            {"name": "scores", "datatype": "FP32", "shape": [-1]},
            {"name": "image_index", "datatype": "INT32", "shape": [-1]},
        ]

    def _params(self, raw: Mapping[str, Any]) -> tuple[float, int]:
        parameters = DetectParameters.parse(raw)
        return parameters.threshold, parameters.top_k

    def parse_v2(self, request: InferRequest) -> list[DetectItem]:
        tensors.check_input_names(request, ["image"])
        raw = v2_parameters(request, DetectParameters)
        values = tensors.bytes_elements(request, "image")
        tensors.check_batch(len(values), self.limits.max_batch_size, "images")
        threshold, top_k = self._params(raw)
        return [
            DetectItem(read_image(value, f"input 'image'[{index}]"), threshold, top_k)
            for index, value in enumerate(values)
        ]

    def parse_v1(self, body: dict) -> list[DetectItem]:
        instances, parameters = tensors.v1_instances(
            body, self.limits.max_batch_size, '"<base64 image>" or {"image": {"b64": ...}}', DetectParameters
        )
        threshold, top_k = self._params(parameters)
        return [
            DetectItem(v1_image(instance, f"instances[{i}]"), threshold, top_k) for i, instance in enumerate(instances)
        ]

    def batch_key(self, item: DetectItem) -> Hashable:
        return self.name

    def run_batch(self, items: Sequence[DetectItem]) -> list[Any]:
        images, positions, errors = decode_images([item.image for item in items])
        outputs = self.backend.detect(images, threshold=0.0) if images else []
        if len(outputs) != len(images):
            raise RuntimeError(f"pipeline returned {len(outputs)} results for {len(images)} images")
        results: list[Any] = [errors.get(index) for index in range(len(items))]
        for position, found in zip(positions, outputs, strict=True):
            item = items[position]
            found = [entry for entry in found if float(entry["score"]) >= item.threshold]
            found.sort(key=lambda entry: float(entry["score"]), reverse=True)
            width, height = item.image.size
            results[position] = [
                Detection(
                    label=str(entry["label"]), score=float(entry["score"]), box=_clip(entry["box"], width, height)
                )
                for entry in found[: item.top_k]
            ]
        return results

    def encodes_inline(self, results: Sequence[Any]) -> bool:
        return True  # boxes, labels and scores

    def v2_outputs(self, results: Sequence[Any], binary: bool) -> list[InferOutput]:
        raise_image_errors(results)
        flat = [(index, detection) for index, found in enumerate(results) for detection in found]
        count = len(flat)
        return [
            tensors.numeric_output("boxes", [d.box for _, d in flat], [count, 4], "FP32", binary),
            tensors.bytes_output("labels", [d.label for _, d in flat], [count], binary),
            tensors.numeric_output("scores", [d.score for _, d in flat], [count], "FP32", binary),
            tensors.numeric_output("image_index", [i for i, _ in flat], [count], "INT32", binary),
        ]

    def v1_predictions(self, results: Sequence[Any]) -> list[list[dict]]:
        raise_image_errors(results)
        return [
            [
                {
                    "label": d.label,
                    "score": d.score,
                    "box": dict(zip(("xmin", "ymin", "xmax", "ymax"), d.box, strict=True)),
                }
                for d in found
            ]
            for found in results
        ]


def _clip(box: Mapping[str, Any], width: int, height: int) -> tuple[float, float, float, float]:
    """Box corners inside the image (models may predict slightly outside it)."""

    def clamp(value: Any, high: int) -> float:
        return min(max(float(value), 0.0), float(high))

    return (
        clamp(box["xmin"], width),
        clamp(box["ymin"], height),
        clamp(box["xmax"], width),
        clamp(box["ymax"], height),
    )


__all__ = ["Detection", "DetectItem", "ImageError", "ObjectDetectionTask"]
