"""Text generation: causal LMs (Llama, Mistral, ...) with transformers on CUDA/CPU, optimum-neuron on Neuron.

Wire format (KServe v2 / Open Inference Protocol):
  input    ``text_input`` BYTES [N] (UTF-8 prompts, sent as they are: no chat template)
  params   ``max_tokens`` (1..the context left after the prompt), ``temperature`` (0..2, 0 = greedy),
           ``top_p`` (0 < p <= 1), ``stop`` (a string, or up to 4 as a JSON array in a string), ``seed``
  outputs  ``text_output`` BYTES [N], ``finish_reason`` BYTES [N] ("stop" or "length")
v1: ``{"instances": ["prompt", {"prompt": ...}], "parameters": {...}}`` ->
``{"predictions": [{"text": ..., "finish_reason": ...}]}``.
The OpenAI-compatible completions and chat completions (with streaming) are in
``predictor.openai_model``; they build the same work items, so all three share one batcher.

Batching: items with the same sampling parameters (temperature, top_p) share one ``generate``
call with left-padded prompts; each row keeps its own ``max_tokens``, stop sequences and random
generator (seeded from its ``seed``), so a row's answer does not depend on its neighbours. A
stopping criterion tracks every row per step and streams text deltas; a row that is done stops
early (padding only) while the others go on. A batch whose longest prompt plus largest
``max_tokens`` would not fit the context (or Neuron's compiled sequence length) is split into
calls that do.

Omitted ``temperature``/``top_p`` take the model's ``generation_config`` values when it samples
by default, and greedy decoding when it does not.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Hashable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any

from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferOutput, InferRequest
from pydantic import BeforeValidator, Field

from predictor.tasks import tensors
from predictor.tasks.base import Task
from predictor.tasks.generation import (
    GREEDY,
    CausalLMBackend,
    GenerateItem,
    Generation,
    RowState,
    SamplingParams,
    fitting_groups,
)
from predictor.tasks.params import (
    Between,
    Integer,
    MaxChars,
    NotEmpty,
    Number,
    Positive,
    RequestParameters,
    Seed,
    Text,
    fail,
    seed_context,
    v2_parameters,
)

logger = logging.getLogger(__name__)

MAX_PROMPT_CHARS = 200_000
MAX_STOP_SEQUENCES = 4
MAX_STOP_CHARS = 256
DEFAULT_MAX_TOKENS = int(os.environ.get("PREDICTOR_DEFAULT_MAX_TOKENS", "256"))
MAX_TOKENS_LIMIT = int(os.environ.get("PREDICTOR_MAX_TOKENS", "4096"))


def stop_list(value: Any) -> Any:
    """``stop`` as sent: None, one string, or a list of at most ``MAX_STOP_SEQUENCES``."""
    if value is None:
        return ()
    values = [value] if isinstance(value, (str, bytes)) else value
    if not isinstance(values, (list, tuple)):
        fail(f"must be a string or a list of strings, got {type(value).__name__}")
    if len(values) > MAX_STOP_SEQUENCES:
        fail(f"has {len(values)} sequences; at most {MAX_STOP_SEQUENCES} are allowed")
    return tuple(values)


StopSequence = Annotated[Text, NotEmpty(), MaxChars(MAX_STOP_CHARS)]


class GenerationParameters(RequestParameters):
    """Request parameters of text generation (v2, v1 and the OpenAI endpoints); None = omitted."""

    max_tokens: Annotated[Integer, Between(1, MAX_TOKENS_LIMIT)] | None = Field(
        None, description="new tokens at most (default PREDICTOR_DEFAULT_MAX_TOKENS, within the context left)"
    )
    temperature: Annotated[Number, Between(0, 2)] | None = Field(
        None, description="0 = greedy (default: the model's generation_config, greedy when it does not sample)"
    )
    top_p: Annotated[Number, Between(0, 1), Positive()] | None = Field(
        None, description="nucleus sampling mass (default: the model's generation_config)"
    )
    stop: Annotated[tuple[StopSequence, ...], BeforeValidator(stop_list)] = Field(
        (), description="text that ends a row, not included in it (a string or a list)"
    )
    seed: Seed | None = Field(None, description="seed of the first prompt's sampler; prompt i uses seed + i")


PARAMETER_NAMES = GenerationParameters.names()


class TextGenerationTask(Task):
    name = "text-generation"

    backend: CausalLMBackend

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Tokenizing and chat templating a prompt of 200k characters takes a while: never on the
        # event loop. One thread, as the event-loop tokenizer is not shared with any other thread.
        self._tokenizer_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenize")

    async def off_loop(self, function, *args, **kwargs):
        import asyncio
        import functools

        call = functools.partial(function, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._tokenizer_thread, call)

    # ---------------------------------------------------------------- lifecycle

    def loaded(self) -> None:
        logger.info(
            "text-generation backend %s ready: context %d tokens, chat template %s",
            type(self.backend).__name__,
            self.backend.context_length,
            "yes" if self.has_chat_template else "no",
        )

    def warmup_batches(self) -> list[list[GenerateItem]]:
        if getattr(self.backend, "self_warming", False):
            return []  # the engine warmed itself up while loading (vLLM)
        return super().warmup_batches()

    def warmup_items(self) -> list[GenerateItem]:
        return self.items(["warm-up"], {"max_tokens": 2, "temperature": 0})

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.backend.tokenizer, "chat_template", None))

    # ---------------------------------------------------------------- metadata

    def input_types(self) -> list[dict]:
        return [{"name": "text_input", "datatype": "BYTES", "shape": [-1]}]

    def output_types(self) -> list[dict]:
        return [
            {"name": "text_output", "datatype": "BYTES", "shape": [-1]},
            {"name": "finish_reason", "datatype": "BYTES", "shape": [-1]},
        ]

    # ---------------------------------------------------------------- decoding

    def parse_v2(self, request: InferRequest) -> list[GenerateItem]:
        tensors.check_input_names(request, ["text_input"])
        raw = v2_parameters(request, GenerationParameters)
        if "stop" in raw:
            raw["stop"] = v2_stop(raw["stop"])
        prompts = tensors.text_elements(request, "text_input", MAX_PROMPT_CHARS)
        return self.items(prompts, raw)

    def parse_v1(self, body: dict) -> list[GenerateItem]:
        instances, parameters = tensors.v1_instances(
            body, self.limits.max_batch_size, '"prompt" or {"prompt": ...}', GenerationParameters
        )
        prompts = []
        for index, instance in enumerate(instances):
            if isinstance(instance, dict):
                if set(instance) != {"prompt"}:
                    raise InvalidInput(f"instances[{index}] must be a string or {{'prompt': ...}}")
                instance = instance["prompt"]
            if not isinstance(instance, str):
                raise InvalidInput(f"instances[{index}] must be a string or {{'prompt': ...}}")
            prompts.append(instance)
        tensors.check_texts(prompts, "instances", MAX_PROMPT_CHARS)
        return self.items(prompts, parameters)

    def items(
        self, prompts: Sequence[str], raw: Mapping[str, Any], *, templated: bool = False, sink_for=None
    ) -> list[GenerateItem]:
        """Work items for prompts and raw parameters (v2, v1 and OpenAI alike); raises InvalidInput.

        ``templated`` prompts come from a chat template, which adds its own special tokens.
        ``sink_for(index)`` gives each item its streaming sink.
        """
        if not prompts:
            raise InvalidInput("give at least one prompt")
        tensors.check_batch(len(prompts), self.limits.max_batch_size, "prompts")
        parameters = GenerationParameters.parse(raw, **seed_context(len(prompts)))
        sampling = self.sampling(parameters)
        if parameters.seed is None or sampling.greedy:
            seeds = [None] * len(prompts)
        else:  # one seed per prompt, as for images: prompt i samples with seed + i
            seeds = [parameters.seed + index for index in range(len(prompts))]
        items = []
        for index, prompt in enumerate(prompts):
            ids = tuple(self.backend.tokenizer.encode(prompt, add_special_tokens=not templated))
            max_tokens = self._max_tokens(parameters.max_tokens, len(ids), f"prompt[{index}]")
            sink = sink_for(index) if sink_for is not None else None
            items.append(GenerateItem(ids, max_tokens, parameters.stop, sampling, sink, seed=seeds[index]))
        return items

    def sampling(self, parameters: GenerationParameters) -> SamplingParams:
        """The call's sampling: the request's, else the model's defaults (greedy unless it samples)."""
        defaults = self.backend.generation_defaults
        temperature = parameters.temperature
        if temperature is None:
            temperature = defaults["temperature"] if defaults["do_sample"] else 0.0
        top_p = defaults["top_p"] if parameters.top_p is None else parameters.top_p
        if temperature == 0.0:
            return GREEDY  # every greedy item batches together
        return SamplingParams(temperature, top_p)

    def _max_tokens(self, max_tokens: int | None, prompt_tokens: int, where: str) -> int:
        context = self.backend.context_length
        room = context - prompt_tokens
        if room < 1:
            raise InvalidInput(f"{where} has {prompt_tokens} tokens; the model's context is {context} tokens")
        if max_tokens is None:
            return max(1, min(DEFAULT_MAX_TOKENS, room, MAX_TOKENS_LIMIT))
        if max_tokens > room:
            raise InvalidInput(
                f"{where}: {prompt_tokens} prompt tokens + max_tokens {max_tokens} exceed the model's context of "
                f"{context} tokens (at most {room} new tokens)"
            )
        return max_tokens

    def chat_prompt(self, messages: Sequence[Mapping[str, Any]]) -> str:
        """Render OpenAI-style messages with the tokenizer's chat template; bad messages raise InvalidInput."""
        if not self.has_chat_template:
            raise InvalidInput("this model's tokenizer has no chat template; use the completions endpoint")
        try:
            return self.backend.tokenizer.apply_chat_template(
                list(messages), tokenize=False, add_generation_prompt=True
            )
        except Exception as error:  # jinja TemplateError from raise_exception, or a template bug on odd input
            raise InvalidInput(f"messages do not fit the model's chat template: {error}") from None

    # ---------------------------------------------------------------- running

    def batch_key(self, item: GenerateItem) -> Hashable:
        if getattr(self.backend, "per_row_seeds", False) or item.sampling.greedy:
            return item.sampling
        return (item.sampling, item.seed)  # one seed per call: only rows with the same seed batch

    def batch_cost(self, items: Sequence[GenerateItem]) -> float:
        """Decoding work: rows x (longest prompt + most new tokens), as the batch is padded and run."""
        if not items:
            return 0.0
        return float(len(items) * (max(len(i.input_ids) for i in items) + max(i.max_tokens for i in items)))

    def run_batch(self, items: Sequence[GenerateItem]) -> list[Generation]:
        sampling = items[0].sampling
        if any(item.sampling != sampling for item in items):
            raise ValueError("a batch must share its sampling parameters")
        backend = self.backend
        states = [RowState(item, backend.decoder, backend.eos_token_ids) for item in items]
        for group in fitting_groups(items, backend.context_length):

            def row_states(indices: Sequence[int | None], group=group) -> list[RowState | None]:
                return [None if index is None else states[group[index]] for index in indices]

            backend.generate(
                [list(items[index].input_ids) for index in group],
                max(items[index].max_tokens for index in group),
                sampling,
                row_states,
                [items[index].seed for index in group],
            )
        for state in states:
            state.close()
        return [state.result() for state in states]

    # ---------------------------------------------------------------- encoding

    def v2_outputs(self, results: Sequence[Generation], binary: bool) -> list[InferOutput]:
        count = len(results)
        return [
            tensors.bytes_output("text_output", [r.text for r in results], [count], binary),
            tensors.bytes_output("finish_reason", [r.finish_reason for r in results], [count], binary),
        ]

    def v1_predictions(self, results: Sequence[Generation]) -> list[dict]:
        return [{"text": r.text, "finish_reason": r.finish_reason} for r in results]


def v2_stop(value: Any) -> Any:
    """v2 parameters are scalars: several stop sequences come as a JSON array in a string."""
    if isinstance(value, bytes):
        value = tensors.as_text(value, "parameter stop")
    if isinstance(value, str) and value.startswith("[") and value.endswith("]"):
        try:
            decoded = json.loads(value)
        except json.JSONDecodeError:
            return value
        if isinstance(decoded, list):
            return decoded
    return value
