"""The diffusers pipeline called directly in the benchmark process: the baseline of (a)."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

from bench.clients import PROMPT

PNG_COMPRESS_LEVEL = 1


class DirectPipeline:
    """The diffusers pipeline loaded and called as the server's DiffusersBackend does."""

    def __init__(self, model_dir: str, device: str, dtype: str):
        import torch
        from diffusers import AutoPipelineForText2Image

        self._torch = torch
        kwargs: dict[str, Any] = {"torch_dtype": torch_dtype(dtype, device)}
        index = Path(model_dir) / "model_index.json"
        if index.is_file() and "safety_checker" in json.loads(index.read_text()):
            kwargs.update(safety_checker=None, requires_safety_checker=False)
        pipeline = AutoPipelineForText2Image.from_pretrained(model_dir, **kwargs)
        pipeline = pipeline.to(device)
        pipeline.set_progress_bar_config(disable=True)
        self.pipeline = pipeline
        self.last_image = None

    def infer(self, steps: int, height: int, width: int, seed: int) -> None:
        torch = self._torch
        generators = [torch.Generator(device="cpu").manual_seed(seed)]
        with torch.inference_mode():
            output = self.pipeline(
                prompt=[PROMPT],
                negative_prompt=None,
                num_inference_steps=steps,
                guidance_scale=7.5,
                height=height,
                width=width,
                generator=generators,
            )
        self.last_image = output.images[0]

    def encode_last(self) -> str:
        """PNG + base64 as the server encodes each image (timed apart from the pipeline call).

        The level mirrors ``predictor.pipelines.text_to_image.PNG_COMPRESS_LEVEL`` (not imported:
        that module imports kserve).
        """
        buffer = io.BytesIO()
        self.last_image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
        return base64.b64encode(buffer.getvalue()).decode("ascii")


def torch_dtype(name: str, device: str):
    """Same rule as the server: 'auto' is float16 on CUDA and float32 elsewhere."""
    import torch

    if name == "auto":
        name = "float16" if device == "cuda" else "float32"
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]
