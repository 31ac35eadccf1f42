"""Fake vLLM (see ../README.md): the top-level names the real package exports."""

from vllm.inputs import TokensPrompt
from vllm.sampling_params import RequestOutputKind, SamplingParams

__all__ = ["RequestOutputKind", "SamplingParams", "TokensPrompt"]
