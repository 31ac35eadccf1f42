"""As vllm/engine/arg_utils.py: a dataclass, so an unknown argument is a TypeError as in vLLM."""

from dataclasses import dataclass


@dataclass
class AsyncEngineArgs:
    model: str = "facebook/opt-125m"
    tokenizer: str | None = None
    dtype: str = "auto"
    seed: int | None = 0
    max_model_len: int | None = None
    max_num_seqs: int | None = None
    gpu_memory_utilization: float = 0.9
    tensor_parallel_size: int = 1
    disable_log_stats: bool = False
    enable_log_requests: bool = False
