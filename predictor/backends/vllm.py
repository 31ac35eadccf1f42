"""vLLM backend for text generation on accelerators (CUDA; Neuron through vLLM's Neuron support).

Behind a lazy boundary like the Neuron path: nothing here imports ``vllm`` until the backend is
chosen (``--backend vllm``, or auto on CUDA where ``vllm`` is importable), so a missing vLLM never
breaks CPU serving. vLLM pins its own torch and does not install beside this runtime's CPU torch;
the GPU image installs it.

Continuous batching. vLLM schedules every running sequence at every step and admits new ones
between steps, so requests do not go through the runtime's dynamic batcher (which would hold a
request until the running batch ends). ``EngineSubmitter`` takes the batcher's place for this
backend: each prompt becomes one ``AsyncLLM.generate`` request at once, on the server's event
loop; the queue limit (503) and the batch metrics stay the runtime's.

Contract with vLLM (v1 engine, ``vllm/v1/engine/async_llm.py``):
  * ``AsyncLLM.from_engine_args(AsyncEngineArgs(model=..., max_num_seqs=..., max_model_len=...))``,
    built on the loading thread; its output handler starts with the first request, on the loop
    that makes it (``AsyncLLM._run_output_handler``).
  * ``generate(TokensPrompt(prompt_token_ids=ids), SamplingParams(...), request_id)``: an async
    generator of ``RequestOutput`` (``outputs[0]`` a ``CompletionOutput`` with ``token_ids``,
    ``finish_reason``) until ``finished``; with ``output_kind=RequestOutputKind.DELTA`` each
    output carries only the new tokens. Closing the generator aborts the request
    (``except (asyncio.CancelledError, GeneratorExit): await self.abort(...)``).
  * Bad parameters raise ``VLLMValidationError`` (``vllm/exceptions.py``): 400 here. A dead engine
    raises ``EngineDeadError``: 500, and the model stops reporting ready.

The text itself is built by the same ``RowState`` as on the transformers path, from vLLM's token
ids (stop sequences held back while streaming, ``finish_reason``, usage counts); vLLM also gets the
stop strings and ``max_tokens``, so it stops computing where the row ends.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import itertools
import logging
import time
from collections.abc import Mapping
from typing import Any

from kserve.errors import InvalidInput

from predictor.backends.tokenizers import eos_token_ids, generation_defaults
from predictor.batching import BatchStats, QueueFullError
from predictor.device_health import UNRECOVERABLE
from predictor.tasks.generation import RowState

logger = logging.getLogger(__name__)


class VLLMMissingError(RuntimeError):
    pass


def vllm_available() -> bool:
    """vLLM is importable (checked without importing it: its import initialises the accelerator)."""
    return importlib.util.find_spec("vllm") is not None


def import_vllm() -> dict[str, Any]:
    """The vLLM names this backend uses, or a clear error."""
    try:
        vllm = importlib.import_module("vllm")
        sampling = importlib.import_module("vllm.sampling_params")
        async_llm = importlib.import_module("vllm.v1.engine.async_llm")
        arg_utils = importlib.import_module("vllm.engine.arg_utils")
        inputs = importlib.import_module("vllm.inputs")
    except ImportError as error:
        raise VLLMMissingError(f"--backend vllm needs vLLM installed (the GPU image has it): {error}") from None
    return {
        "SamplingParams": vllm.SamplingParams,
        "RequestOutputKind": sampling.RequestOutputKind,
        "AsyncLLM": async_llm.AsyncLLM,
        "AsyncEngineArgs": arg_utils.AsyncEngineArgs,
        "TokensPrompt": inputs.TokensPrompt,
    }


def _is_client_error(error: BaseException) -> bool:
    """vLLM's request errors: ``VLLMValidationError`` derives from ``ValueError`` in older releases and
    from ``VLLMClientError`` (``vllm/exceptions.py``) in newer ones; matched by name, never imported."""
    names = {cls.__name__ for cls in type(error).__mro__}
    return isinstance(error, ValueError) or bool(names & {"VLLMClientError", "VLLMValidationError"})


class VLLMBackend:
    """vLLM's AsyncLLM engine; requests reach it through ``EngineSubmitter``, not the batcher."""

    per_row_seeds = True
    #: vLLM warms up (profiling, CUDA graphs) while it loads: no warm-up batch through the task.
    self_warming = True
    continuous = True

    def __init__(self, model_dir: str, device_kind: str, options: Mapping[str, Any], api: dict | None = None):
        from transformers import AutoTokenizer, GenerationConfig

        self.api = api or import_vllm()
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.decoder = AutoTokenizer.from_pretrained(model_dir)  # used on the event loop only
        dtype = options.get("dtype", "auto")
        args = self.api["AsyncEngineArgs"](
            model=model_dir,
            dtype=dtype,
            max_num_seqs=int(options.get("max_num_seqs") or 256),
            max_model_len=options.get("context_length"),  # None: the model's own
            disable_log_stats=False,  # vLLM's own Prometheus metrics (vllm:*) join /metrics
        )
        self.engine = self.api["AsyncLLM"].from_engine_args(args)
        self.context_length = int(self.engine.model_config.max_model_len)
        try:
            generation_config = GenerationConfig.from_pretrained(model_dir)
        except OSError:
            generation_config = GenerationConfig()
        self.generation_defaults = generation_defaults(generation_config)
        self.eos_token_ids = eos_token_ids(generation_config.eos_token_id, self.tokenizer.eos_token_id)
        self.dead = False
        self._ids = itertools.count()
        logger.info("vLLM engine ready on %s: context %d tokens", device_kind, self.context_length)

    def sampling_params(self, item) -> Any:
        """Our item as vLLM ``SamplingParams`` (field names of ``vllm/sampling_params.py``)."""
        sampling = item.sampling
        return self.api["SamplingParams"](
            n=1,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            seed=item.seed,
            max_tokens=item.max_tokens,
            stop=list(item.stop) or None,
            skip_special_tokens=True,
            output_kind=self.api["RequestOutputKind"].DELTA,
        )

    async def generate_item(self, item) -> Any:
        """Run one item on the engine (on the server's event loop); its Generation."""
        state = RowState(item, self.decoder, self.eos_token_ids)
        request_id = f"predictor-{next(self._ids)}"
        prompt = self.api["TokensPrompt"](prompt_token_ids=list(item.input_ids))
        stream = self.engine.generate(prompt, self.sampling_params(item), request_id)
        try:
            async for output in stream:
                completion = output.outputs[0]
                for token in completion.token_ids:
                    state.add(int(token))
                    if state.done:
                        break
                if output.finished:  # the engine is done with it: let its generator end by itself
                    state.end("stop" if completion.finish_reason == "stop" else "length")
                elif state.done:
                    break  # our stop sequence (or a client gone): closing the generator aborts it in vLLM
        except Exception as error:
            if _is_client_error(error):  # what vLLM refuses is the client's error
                raise InvalidInput(f"vLLM rejected the request: {error}") from None
            if type(error).__name__ == "EngineDeadError":
                self.dead = True
            raise
        finally:
            await stream.aclose()
        state.close()
        return state.result()

    def generate(self, rows, max_new_tokens, sampling, row_states, seeds):  # the batch interface: not used
        raise RuntimeError("the vLLM backend batches continuously: submit items through EngineSubmitter")


class EngineSubmitter:
    """Takes ``DynamicBatcher``'s place for an engine that batches by itself (``submit``, ``depth``).

    Every item goes to the engine at once; ``max_queue_size`` bounds the items in flight (beyond
    it: QueueFullError, a 503) and each request is reported to the batch metrics as one "batch"
    with no queue wait: vLLM queues inside its scheduler, and its own ``vllm:*`` metrics (time to
    first token, running and waiting sequences) show it.
    """

    def __init__(self, task: Any, max_queue_size: int, on_batch=None, on_depth=None, on_device_failure=None):
        """``on_device_failure(kind, reason)``: told when the engine dies (the model then reports
        not ready and not live, so Kubernetes restarts the pod, as for an unrecoverable device error)."""
        self.task = task
        self.max_queue_size = max_queue_size
        self.on_batch, self.on_depth, self.on_device_failure = on_batch, on_depth, on_device_failure
        self.in_flight = 0

    def depth(self) -> int:
        return self.in_flight

    async def submit(self, items) -> list[Any]:
        backend = self.task.backend
        if getattr(backend, "dead", False):
            raise RuntimeError("the vLLM engine is dead; the pod must restart")
        if self.in_flight + len(items) > self.max_queue_size:
            raise QueueFullError(
                f"{self.in_flight} prompts in flight; the limit is {self.max_queue_size} (max_queue_size)"
            )
        self.in_flight += len(items)
        self._report_depth()
        started = time.monotonic()
        try:
            results = await asyncio.gather(*(backend.generate_item(item) for item in items))
        except Exception:
            if getattr(backend, "dead", False) and self.on_device_failure is not None:
                self.on_device_failure(UNRECOVERABLE, "the vLLM engine is dead (EngineDeadError); the pod must restart")
            raise
        finally:
            self.in_flight -= len(items)
            self._report_depth()
        if self.on_batch is not None:
            self.on_batch(BatchStats(len(items), (0.0,) * len(items), time.monotonic() - started))
        return list(results)

    def _report_depth(self) -> None:
        if self.on_depth is not None:
            self.on_depth(self.in_flight)
