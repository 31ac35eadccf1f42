"""The one ``--dtype`` -> torch dtype rule of every torch backend (diffusers, transformers, causal LMs)."""

from __future__ import annotations

DTYPES = ("float32", "float16", "bfloat16")


def torch_dtype(name: str, device_kind: str, cuda_prefers_bfloat16: bool = False):
    """``name`` as a torch dtype; ``auto`` is float32 off CUDA and float16 on it, or bfloat16 where
    the GPU supports it and ``cuda_prefers_bfloat16`` (causal LMs: bfloat16 keeps their range)."""
    import torch

    if name == "auto":
        if device_kind != "cuda":
            name = "float32"
        elif cuda_prefers_bfloat16 and torch.cuda.is_bf16_supported():
            name = "bfloat16"
        else:
            name = "float16"
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]
