"""The diffusers pipeline called directly in the benchmark process: the baseline of (a).

It is the server's own backend (``predictor.backends.diffusers.DiffusersBackend``: same loader,
same dtype rule, same call) and the server's PNG encoder (``predictor.tasks.encoding``), both
importable without kserve, which must stay out of this process (``bench.clients``).
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.clients import PROMPT
from predictor.backends.diffusers import DiffusersBackend
from predictor.backends.dtypes import torch_dtype
from predictor.tasks.encoding import encode_png

__all__ = ["DirectPipeline", "torch_dtype"]

GUIDANCE_SCALE = 7.5  # the server's default guidance_scale


@dataclass(frozen=True)
class ImageCall:
    """The parameters ``DiffusersBackend.generate`` reads (what the server resolves from a request)."""

    num_inference_steps: int
    height: int
    width: int
    guidance_scale: float = GUIDANCE_SCALE


class DirectPipeline:
    """The server's diffusers backend, called in this process with one prompt at a time."""

    def __init__(self, model_dir: str, device: str, dtype: str):
        self.backend = DiffusersBackend(model_dir, device, dtype=dtype)
        self.last_image = None

    def infer(self, steps: int, height: int, width: int, seed: int) -> None:
        call = ImageCall(num_inference_steps=steps, height=height, width=width)
        self.last_image = self.backend.generate([PROMPT], [""], call, [seed])[0]

    def encode_last(self) -> str:
        """PNG + base64 as the server encodes each image (timed apart from the pipeline call)."""
        return encode_png(self.last_image)
