"""diffusers text-to-image pipelines on CUDA or CPU (optionally torch.compile'd).

Imports neither kserve nor the task protocol at module level, and torch/diffusers only when a
backend is built: tools (the benchmark) load a pipeline with ``DiffusersBackend`` and encode with
``predictor.tasks.encoding.encode_png`` exactly as the server does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from predictor.backends.dtypes import torch_dtype
from predictor.storage import local_weights_variant, weights_variant


class DiffusersBackend:
    """diffusers on CUDA or CPU, optionally compiled with torch.compile (inductor)."""

    def __init__(
        self,
        model_dir: str,
        device_kind: str,
        dtype: str = "auto",
        compile_model: bool = False,
        compile_backend: Any = "inductor",
    ):
        import importlib.util

        import torch
        from diffusers import AutoPipelineForText2Image
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.disable_progress_bar()  # "Loading pipeline components" redraws are log noise
        self.device = device_kind
        self.dtype = torch_dtype(dtype, device_kind)
        # The variant the download chose for this device and dtype, or whatever is on disk instead.
        self.variant = local_weights_variant(model_dir, weights_variant(device_kind, dtype))
        # diffusers 0.42 deprecates ``torch_dtype`` for ``dtype``; low_cpu_mem_usage needs accelerate
        # (without it diffusers falls back to False, with a warning: say so up front).
        kwargs: dict[str, Any] = {
            "dtype": self.dtype,
            "variant": self.variant,
            "low_cpu_mem_usage": importlib.util.find_spec("accelerate") is not None,
        }
        if _has_component(model_dir, "safety_checker"):
            kwargs.update(safety_checker=None, requires_safety_checker=False)
        pipeline = AutoPipelineForText2Image.from_pretrained(model_dir, **kwargs)
        pipeline = pipeline.to(device_kind)
        pipeline.set_progress_bar_config(disable=True)
        if compile_model:
            # inductor tunes for the shapes it sees; other backends (tests count compiled graphs) as they are
            tuned = {"mode": "max-autotune-no-cudagraphs"} if compile_backend == "inductor" else {}
            denoiser_name = "unet" if getattr(pipeline, "unet", None) is not None else "transformer"
            denoiser = getattr(pipeline, denoiser_name)
            denoiser.to(memory_format=torch.channels_last)
            setattr(pipeline, denoiser_name, torch.compile(denoiser, backend=compile_backend, **tuned))
            pipeline.vae.to(memory_format=torch.channels_last)
            pipeline.vae.decode = torch.compile(pipeline.vae.decode, backend=compile_backend)
        self.compiled = compile_model
        self.pipeline = pipeline
        scale = getattr(pipeline, "vae_scale_factor", 8)
        sample = getattr(getattr(pipeline, "unet", None), "config", None)
        sample_size = getattr(sample, "sample_size", None) or 64
        if isinstance(sample_size, (list, tuple)):
            sample_size = sample_size[0]
        self.default_size = (int(sample_size) * scale, int(sample_size) * scale)
        self.fixed_size = None
        self.empty_negative_is_zeros = empty_negative_is_zeros(pipeline)

    def generate(self, prompts, negative_prompts, params, seeds):
        import torch

        generators = [torch.Generator(device="cpu").manual_seed(seed) for seed in seeds]
        with torch.inference_mode():
            output = self.pipeline(
                prompt=prompts,
                negative_prompt=negative_prompts if any(negative_prompts) else None,
                num_inference_steps=params.num_inference_steps,
                guidance_scale=params.guidance_scale,
                height=params.height,
                width=params.width,
                generator=generators,
            )
        return output.images


def empty_negative_is_zeros(pipeline) -> bool:
    """diffusers' SDXL ``encode_prompt`` gives zero negative embeddings only when ``negative_prompt``
    is None and ``force_zeros_for_empty_prompt`` is set; a list holding "" encodes "" instead."""
    config = getattr(pipeline, "config", None)
    if hasattr(config, "get"):
        return bool(config.get("force_zeros_for_empty_prompt", False))
    return bool(getattr(config, "force_zeros_for_empty_prompt", False))


def _has_component(model_dir: str, name: str) -> bool:
    index = Path(model_dir) / "model_index.json"
    return index.is_file() and name in json.loads(index.read_text())
