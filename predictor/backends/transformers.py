"""transformers models (text and image classification, object detection) on CUDA or CPU.

Loaded as a transformers pipeline (device, dtype and weights variant handled one way), but called
directly: the processor on the whole batch, one forward, the pipelines' scoring rule. The pipeline's
own ``__call__`` adds a DataLoader, a collate step and per-item pre/post-processing: about 0.3 ms on
a lone short text and 40 % of a 16-text batch of a tiny BERT on CPU (docs/benchmarks.md, issue 18).
"""

from __future__ import annotations

from typing import Any

from predictor.backends.dtypes import torch_dtype
from predictor.storage import local_weights_variant, weights_variant


def scoring(config: Any) -> str:
    """How logits become scores, as transformers' classification pipelines decide it by default
    (``TextClassificationPipeline.postprocess``, ``ImageClassificationPipeline.postprocess``):
    none for regression, a sigmoid per label for multi-label models and single-logit models, else
    a softmax over the labels."""
    problem_type = getattr(config, "problem_type", None)
    if problem_type == "regression":
        return "none"
    if problem_type == "multi_label_classification" or config.num_labels == 1:
        return "sigmoid"
    return "softmax"


def class_scores(config: Any, labels: list[str], logits: Any) -> list[list[dict]]:
    """Every label's score per row of ``logits`` (a [rows, labels] tensor), in label order."""
    logits = logits.float()
    rule = scoring(config)
    scores = logits.softmax(dim=-1) if rule == "softmax" else logits.sigmoid() if rule == "sigmoid" else logits
    return [[{"label": label, "score": score} for label, score in zip(labels, row, strict=False)] for row in scores.tolist()]


class TransformersBackend:
    """A transformers classifier or detector on CUDA or CPU."""

    def __init__(self, task: str, model_dir: str, device_kind: str, dtype: str = "auto"):
        from transformers import pipeline

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

    def __call__(self, inputs: list) -> list[list[dict]]:
        """Every label's score per input (texts or PIL images), in label order: one forward for the batch."""
        import torch

        model = self.pipeline.model
        if self.pipeline.task != "text-classification":
            features = self.pipeline.image_processor(images=inputs, return_tensors="pt")
        elif len(inputs) > 1 and self.pipeline.tokenizer.pad_token is None:  # cannot pad: one text at a time
            return [row for text in inputs for row in self([text])]
        else:
            features = self.pipeline.tokenizer(inputs, padding=len(inputs) > 1, truncation=True, return_tensors="pt")
        features = {
            key: value.to(device=model.device, dtype=model.dtype if value.is_floating_point() else None)
            for key, value in features.items()
        }
        with torch.inference_mode():
            logits = model(**features).logits
        return class_scores(model.config, self.labels, logits)

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
