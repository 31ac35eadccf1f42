"""transformers pipelines (text and image classification, object detection) on CUDA or CPU."""

from __future__ import annotations

from predictor.backends.dtypes import torch_dtype
from predictor.storage import local_weights_variant, weights_variant


class TransformersBackend:
    """A transformers pipeline on CUDA or CPU."""

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
