"""As vllm/v1/engine/async_llm.py: ``AsyncLLM.from_engine_args`` and the ``generate`` async generator.

Scheduling as vLLM's: every request advances one token per engine step and new requests join
between steps (continuous batching). The "model" is ``next_token``; tests compute it too.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
from dataclasses import asdict
from types import SimpleNamespace

from vllm.exceptions import VLLMValidationError
from vllm.outputs import CompletionOutput, RequestOutput
from vllm.v1.engine.exceptions import EngineDeadError

STEP_S = 0.01
READABLE = [*"abcdefghijklmnopqrstuvwxyz", "Ġ"]


def next_token(ids: list[int], letters: list[int], rng: random.Random | None) -> int:
    """Greedy: a letter picked by the sum of the ids so far; sampled: the row's own random choice."""
    return rng.choice(letters) if rng is not None else letters[sum(ids) % len(letters)]


def _log(event: str, **fields) -> None:
    path = os.environ.get("FAKE_VLLM_LOG")
    if path:
        with open(path, "a") as log:
            log.write(json.dumps({"event": event, **fields}, default=str) + "\n")


class AsyncLLM:
    def __init__(self, engine_args):
        from transformers import AutoConfig, AutoTokenizer

        config = AutoConfig.from_pretrained(engine_args.model)
        self.tokenizer = AutoTokenizer.from_pretrained(engine_args.tokenizer or engine_args.model)
        self.letters = self.tokenizer.convert_tokens_to_ids(READABLE)
        self.model_config = SimpleNamespace(
            max_model_len=engine_args.max_model_len or config.max_position_embeddings, model=engine_args.model
        )
        self.running: set[str] = set()
        _log("from_engine_args", args=asdict(engine_args))

    @classmethod
    def from_engine_args(cls, engine_args, start_engine_loop=True, usage_context=None, stat_loggers=None):
        return cls(engine_args)

    async def generate(
        self,
        prompt,
        sampling_params,
        request_id: str,
        *,
        prompt_text=None,
        lora_request=None,
        tokenization_kwargs=None,
        trace_headers=None,
        priority: int = 0,
        data_parallel_rank=None,
        session_id=None,
        reasoning_ended=None,
        reasoning_parser_kwargs=None,
    ):
        params = {**asdict(sampling_params), "output_kind": sampling_params.output_kind.name}
        ids = list(prompt["prompt_token_ids"])
        _log("generate", request_id=request_id, prompt=dict(prompt), params=params, running=sorted(self.running))
        text = self.tokenizer.decode(ids)
        if "VLLM_REJECTS" in text:
            raise VLLMValidationError("the fake engine rejects this prompt", parameter="prompt")
        if "ENGINE_DEAD" in text:
            raise EngineDeadError("EngineCore encountered an issue")
        self.running.add(request_id)
        rng = random.Random(sampling_params.seed) if sampling_params.temperature > 0 else None
        generated: list[int] = []
        outcome = "finished"
        try:
            while True:
                await asyncio.sleep(STEP_S)  # one engine step; other requests' steps interleave
                token = next_token(ids + generated, self.letters, rng)
                generated.append(token)
                finished = len(generated) >= sampling_params.max_tokens
                completion = CompletionOutput(0, "", [token], None, None, "length" if finished else None)
                yield RequestOutput(request_id, None, ids, None, [completion], finished)
                if finished:
                    break
        except (asyncio.CancelledError, GeneratorExit):
            outcome = "aborted"  # vLLM: ``await self.abort(q.request_id, internal=True)``
            raise
        finally:
            self.running.discard(request_id)
            _log(outcome, request_id=request_id, tokens=len(generated))

    async def abort(self, request_id, internal: bool = False) -> None:
        _log("abort", request_id=request_id)

    def shutdown(self, timeout=None) -> None:
        pass
