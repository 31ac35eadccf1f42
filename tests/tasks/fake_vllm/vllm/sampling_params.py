"""As vllm/sampling_params.py: keyword-only fields with vLLM's names and defaults, and its checks."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from vllm.exceptions import VLLMValidationError


class RequestOutputKind(enum.Enum):
    CUMULATIVE = 0
    DELTA = 1
    FINAL_ONLY = 2


@dataclass(kw_only=True)
class SamplingParams:
    n: int = 1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    max_tokens: int | None = 16
    min_tokens: int = 0
    logprobs: int | None = None
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    output_kind: RequestOutputKind = RequestOutputKind.CUMULATIVE

    def __post_init__(self):  # SamplingParams._verify_args
        if self.temperature < 0.0:
            raise VLLMValidationError("temperature must be non-negative", parameter="temperature")
        if not 0.0 < self.top_p <= 1.0:
            raise VLLMValidationError("top_p must be in (0, 1]", parameter="top_p")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise VLLMValidationError("max_tokens must be at least 1", parameter="max_tokens")
