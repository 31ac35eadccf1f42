"""AWS Neuron (Inferentia2 / Trainium) backends, behind a lazy import boundary.

``optimum.neuron`` needs ``torch_neuronx`` (AWS Neuron SDK, not on PyPI) and pins an older
transformers, so it only exists in the Neuron image. Nothing here is imported unless the
server runs with ``--device neuron`` (or auto-detects Neuron devices); a missing SDK is a
clear start-up error and never affects CUDA or CPU serving.

Neuron models are compiled ahead of time for fixed shapes (``python -m modelbuild.neuron_compile``);
the pipeline is loaded from that precompiled directory and requests must use those shapes.
"""

from __future__ import annotations

import importlib
import json
import logging
from pathlib import Path
from typing import Any

from predictor.backends.diffusers import empty_negative_is_zeros

logger = logging.getLogger(__name__)

PIPELINE_CLASSES = {
    "StableDiffusionPipeline": "NeuronStableDiffusionPipeline",
    "NeuronStableDiffusionPipeline": "NeuronStableDiffusionPipeline",
    "StableDiffusionXLPipeline": "NeuronStableDiffusionXLPipeline",
    "NeuronStableDiffusionXLPipeline": "NeuronStableDiffusionXLPipeline",
}


class NeuronSDKMissingError(RuntimeError):
    """optimum-neuron / torch-neuronx are not installed in this image."""


def import_optimum_neuron():
    """Import ``optimum.neuron`` or explain what is missing."""
    try:
        return importlib.import_module("optimum.neuron")
    except ImportError as error:
        raise NeuronSDKMissingError(
            "--device neuron needs the AWS Neuron SDK: optimum-neuron and torch-neuronx are not importable "
            f"({error}). Use the Neuron image (docker/Dockerfile.neuron) or pick --device cuda/cpu."
        ) from error


def compiled_shapes(model_dir: str | Path) -> dict[str, int]:
    """Static shapes the UNet was compiled for: batch_size, height, width (image pixels)."""
    config_path = Path(model_dir) / "unet" / "config.json"
    if not config_path.is_file():
        return {}
    neuron = json.loads(config_path.read_text()).get("neuron") or {}
    shapes: dict[str, int] = {}
    if "static_batch_size" in neuron:
        shapes["batch_size"] = int(neuron["static_batch_size"])
    # The UNet sees latents; images are 8x larger (the VAE's scale factor).
    if "static_height" in neuron:
        shapes["height"] = int(neuron["static_height"]) * 8
    if "static_width" in neuron:
        shapes["width"] = int(neuron["static_width"]) * 8
    return shapes


class NeuronImageBackend:
    """A precompiled optimum-neuron Stable Diffusion pipeline."""

    def __init__(self, model_dir: str, sdk: Any = None):
        sdk = sdk or import_optimum_neuron()
        index = json.loads((Path(model_dir) / "model_index.json").read_text())
        class_name = PIPELINE_CLASSES.get(index.get("_class_name", ""), "NeuronStableDiffusionPipeline")
        pipeline_class = getattr(sdk, class_name)
        self.shapes = compiled_shapes(model_dir)
        self.pipeline = pipeline_class.from_pretrained(model_dir)
        height, width = self.shapes.get("height"), self.shapes.get("width")
        self.fixed_size = (height, width) if height and width else None
        self.default_size = self.fixed_size or (512, 512)
        self.compiled_batch = self.shapes.get("batch_size", 1)
        self.compiled = False  # compiled ahead of time: its one size is ``fixed_size``
        self.empty_negative_is_zeros = empty_negative_is_zeros(self.pipeline) or (
            "XL" in class_name and index.get("force_zeros_for_empty_prompt", True)
        )
        logger.info("loaded %s from %s, compiled shapes %s", class_name, model_dir, self.shapes)

    def generate(self, prompts, negative_prompts, params, seeds):
        import torch

        images = []
        size = self.compiled_batch
        # The graph has a static batch: run full chunks, padding the last with repeats.
        for start in range(0, len(prompts), size):
            chunk = slice(start, start + size)
            real = len(prompts[chunk])
            pad = size - real
            chunk_prompts = prompts[chunk] + [prompts[chunk][-1]] * pad
            chunk_negatives = negative_prompts[chunk] + [negative_prompts[chunk][-1]] * pad
            chunk_seeds = seeds[chunk] + [seeds[chunk][-1]] * pad
            output = self.pipeline(
                prompt=chunk_prompts,
                negative_prompt=chunk_negatives if any(chunk_negatives) else None,
                num_inference_steps=params.num_inference_steps,
                guidance_scale=params.guidance_scale,
                generator=[torch.Generator().manual_seed(seed) for seed in chunk_seeds],
            )
            images += output.images[:real]
        return images
