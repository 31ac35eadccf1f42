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
import random
from collections.abc import Callable, Hashable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferOutput, InferRequest

from predictor.pipelines import tensors
from predictor.pipelines.base import Task

logger = logging.getLogger(__name__)

PARAMETER_NAMES = ("max_tokens", "temperature", "top_p", "stop", "seed")
MAX_PROMPT_CHARS = 200_000
MAX_STOP_SEQUENCES = 4
MAX_STOP_CHARS = 256
DEFAULT_MAX_TOKENS = int(os.environ.get("PREDICTOR_DEFAULT_MAX_TOKENS", "256"))
MAX_TOKENS_LIMIT = int(os.environ.get("PREDICTOR_MAX_TOKENS", "4096"))


@dataclass(frozen=True)
class SamplingParams:
    """What one ``generate`` call shares; equal params may be batched together."""

    temperature: float  # 0: greedy
    top_p: float

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(eq=False)
class GenerateItem:
    input_ids: tuple[int, ...]
    max_tokens: int
    stop: tuple[str, ...]
    sampling: SamplingParams
    #: Called on the inference thread with each new piece of text (streaming); None otherwise.
    sink: Callable[[str], None] | None = None
    #: Set by a streaming client that went away; its row stops at the next step.
    cancelled: bool = False
    #: Seed of this row's own random generator when sampling (None: a random one).
    seed: int | None = None


@dataclass(frozen=True)
class Generation:
    text: str
    finish_reason: str  # "stop" | "length"
    prompt_tokens: int
    completion_tokens: int


class CausalLMBackend(Protocol):
    """What a device backend offers the task."""

    tokenizer: Any  # for the event loop: templates and encoding
    decoder: Any  # a second tokenizer for the inference thread (fast tokenizers are not thread-safe)
    context_length: int
    generation_defaults: Mapping[str, Any]  # do_sample, temperature, top_p from generation_config
    eos_token_ids: frozenset[int]
    #: True when each row samples from its own generator (``seeds``); else one seed per call.
    per_row_seeds: bool

    def generate(
        self, rows: list[list[int]], max_new_tokens: int, sampling: SamplingParams, criteria, seeds: list[int | None]
    ) -> Any:
        """Run generation on token-id rows; ``criteria(chunk_rows)`` returns the stopping criterion for a chunk."""


# ----------------------------------------------------------------------------- per-row tracking


@dataclass
class RowState:
    """The progress of one item during a ``generate`` call.

    Text is decoded incrementally: each step decodes only the tokens since the last emitted
    piece plus the piece before it (for tokenizers whose decoding depends on the previous token,
    e.g. SentencePiece's leading space), as TGI and vLLM do, so a row of n tokens costs O(n)
    decoding rather than O(n^2). A step whose text ends in an incomplete UTF-8 character waits
    for the next token.
    """

    item: GenerateItem
    decoder: Any
    eos_token_ids: frozenset[int]
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    emitted: int = 0  # characters of ``text`` handed to the sink
    finish_reason: str | None = None
    _prefix_offset: int = 0  # tokens[_prefix_offset:_read_offset] decode to the end of ``text``
    _read_offset: int = 0
    _searched: int = 0  # characters of ``text`` already searched for stop sequences

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def add(self, token: int) -> None:
        if self.done:
            return
        if self.item.cancelled:
            self.finish_reason = "cancelled"
            return
        if token in self.eos_token_ids:
            self._finish("stop", len(self.text + self._pending_text()))
            return
        self.tokens.append(token)
        self.text += self._decoded_delta()
        cut = self._stop_at()
        if cut is not None:
            self._finish("stop", cut)
        elif len(self.tokens) >= self.item.max_tokens:
            self._finish("length", len(self.text + self._pending_text()))
        else:
            self._emit(self._safe_end())

    def close(self) -> None:
        """Generation ended (batch length or context reached) before the row finished."""
        self.end("length")

    def end(self, reason: str) -> None:
        """The engine ended the row (an engine that stops by itself, e.g. vLLM at an end token)."""
        if not self.done:
            self._finish(reason, len(self.text + self._pending_text()))

    def result(self) -> Generation:
        return Generation(self.text, self.finish_reason or "length", len(self.item.input_ids), len(self.tokens))

    def _decoded_delta(self) -> str:
        """Text the tokens since ``_read_offset`` add, or "" while it ends in a partial character."""
        decode = self.decoder.decode
        before = decode(self.tokens[self._prefix_offset : self._read_offset], skip_special_tokens=True)
        after = decode(self.tokens[self._prefix_offset :], skip_special_tokens=True)
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""
        self._prefix_offset, self._read_offset = self._read_offset, len(self.tokens)
        return after[len(before) :]

    def _pending_text(self) -> str:
        """Text of tokens held back for an incomplete character (flushed when the row ends)."""
        if self._read_offset == len(self.tokens):
            return ""
        decode = self.decoder.decode
        before = decode(self.tokens[self._prefix_offset : self._read_offset], skip_special_tokens=True)
        after = decode(self.tokens[self._prefix_offset :], skip_special_tokens=True)
        return after[len(before) :]

    def _stop_at(self) -> int | None:
        if not self.item.stop:
            return None
        longest = max(len(stop) for stop in self.item.stop)
        start = max(0, self._searched - longest + 1)  # a stop may straddle the old end of the text
        self._searched = len(self.text)
        hits = [index for index in (self.text.find(stop, start) for stop in self.item.stop) if index >= 0]
        return min(hits) if hits else None

    def _safe_end(self) -> int:
        """Text that can be streamed now: not a possible start of a stop sequence, no partial character."""
        end = len(self.text)
        while end > self.emitted and self.text[end - 1] == "\ufffd":
            end -= 1
        for stop in self.item.stop:
            for size in range(min(len(stop) - 1, end), 0, -1):
                if self.text[end - size : end] == stop[:size]:
                    end -= size
                    break
        return end

    def _finish(self, reason: str, end: int) -> None:
        self.text = (self.text + self._pending_text())[:end]
        self._read_offset = len(self.tokens)
        self._emit(end)
        self.finish_reason = reason

    def _emit(self, end: int) -> None:
        if end > self.emitted and self.item.sink is not None:
            self.item.sink(self.text[self.emitted : end])
        self.emitted = max(self.emitted, end)


def row_criteria(rows: Sequence[RowState | None]):
    """A transformers stopping criterion over a chunk: reads each step's new tokens, says which rows are done.

    ``None`` rows pad a static-shape batch (Neuron); they are always done. Works for any
    ``generate`` loop that calls its stopping criteria once per new token.
    """
    import torch
    from transformers import StoppingCriteria

    class _RowCriteria(StoppingCriteria):
        def __call__(self, input_ids, scores=None, **kwargs):
            last = input_ids[:, -1].tolist()
            for row, token in zip(rows, last, strict=False):
                if row is not None:
                    row.add(int(token))
            done = [row is None or row.done for row in rows]
            done += [True] * (input_ids.shape[0] - len(done))
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    criteria = _RowCriteria()
    criteria.rows = rows
    return criteria


def catch_up(rows: Sequence[RowState | None], sequences, prompt_width: int) -> None:
    """Feed tokens a backend produced without calling the criterion every step (after ``generate``)."""
    for index, row in enumerate(rows):
        if row is None or row.done:
            continue
        generated = sequences[index][prompt_width:].tolist()
        for token in generated[len(row.tokens) :]:
            row.add(int(token))
            if row.done:
                break


def left_pad(rows: Sequence[Sequence[int]], pad_id: int):
    """input_ids and attention_mask tensors of left-padded rows (decoder-only models continue on the right)."""
    import torch

    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for index, row in enumerate(rows):
        if row:
            ids[index, width - len(row) :] = torch.tensor(list(row), dtype=torch.long)
            mask[index, width - len(row) :] = 1
    return ids, mask


def generation_config_for(base, max_new_tokens: int, sampling: SamplingParams, pad_id: int):
    import copy

    config = copy.deepcopy(base)
    config.max_new_tokens = max_new_tokens
    config.max_length = None
    config.pad_token_id = pad_id
    config.num_return_sequences = 1
    config.num_beams = 1
    if sampling.greedy:
        config.do_sample = False
        config.temperature = None
        config.top_p = None
        config.top_k = None
    else:
        config.do_sample = True
        config.temperature = sampling.temperature
        config.top_p = sampling.top_p
    return config


def _eos_ids(*sources) -> frozenset[int]:
    ids: set[int] = set()
    for source in sources:
        if source is None:
            continue
        ids.update([source] if isinstance(source, int) else list(source))
    return frozenset(ids)


def _defaults(generation_config) -> dict[str, Any]:
    do_sample = bool(getattr(generation_config, "do_sample", False))
    return {
        "do_sample": do_sample,
        "temperature": float(getattr(generation_config, "temperature", None) or 1.0),
        "top_p": float(getattr(generation_config, "top_p", None) or 1.0),
    }


def _dtype(name: str, device_kind: str):
    import torch

    if name == "auto":
        if device_kind == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


class TransformersLMBackend:
    """transformers ``AutoModelForCausalLM`` on CUDA or CPU."""

    def __init__(self, model_dir: str, device_kind: str, dtype: str = "auto"):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from predictor.storage import local_weights_variant, weights_variant

        self.device = device_kind
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.decoder = AutoTokenizer.from_pretrained(model_dir)
        variant = local_weights_variant(model_dir, weights_variant(device_kind, dtype))
        self.model = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=_dtype(dtype, device_kind), variant=variant
        ).to(device_kind)
        self.model.eval()
        config = self.model.config
        self.context_length = int(getattr(config, "max_position_embeddings", None) or 2048)
        self.generation_config = self.model.generation_config
        self.generation_defaults = _defaults(self.generation_config)
        self.eos_token_ids = _eos_ids(self.generation_config.eos_token_id, self.tokenizer.eos_token_id)
        self.pad_id = _pad_id(self.tokenizer, self.eos_token_ids)

    per_row_seeds = True

    def generate(self, rows, max_new_tokens, sampling, criteria, seeds):
        import torch
        from transformers import LogitsProcessorList, StoppingCriteriaList

        ids, mask = left_pad(rows, self.pad_id)
        chunk_criteria = criteria(list(range(len(rows))))
        # Sampling is done by RowSampler with one generator per row; generate() itself runs greedy
        # over the one-hot scores it returns, so it never draws from the global random stream.
        config = generation_config_for(self.generation_config, max_new_tokens, GREEDY, self.pad_id)
        processors = LogitsProcessorList()
        if not sampling.greedy:
            processors.append(RowSampler(sampling, seeds, top_k=getattr(self.generation_config, "top_k", None)))
        with torch.inference_mode():
            output = self.model.generate(
                input_ids=ids.to(self.device),
                attention_mask=mask.to(self.device),
                generation_config=config,
                logits_processor=processors,
                stopping_criteria=StoppingCriteriaList([chunk_criteria]),
            )
        catch_up(chunk_criteria.rows, output.cpu(), ids.shape[1])


GREEDY = SamplingParams(0.0, 1.0)


class RowSampler:
    """A logits processor that samples each row's next token from that row's own generator.

    transformers' sampling draws every row from the one global random stream, so a seeded row's
    text would depend on the rows batched with it. Here each row has its own ``torch.Generator``
    on the scores' device (seeded from its ``seed``, or at random), the usual warpers
    (temperature, top-k, top-p, in transformers' order) apply to the whole batch, and the chosen
    tokens come back as one-hot scores that greedy decoding then picks.
    """

    def __init__(self, sampling: SamplingParams, seeds: Sequence[int | None], top_k: int | None = None):
        from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

        self.warpers = [TemperatureLogitsWarper(sampling.temperature)]
        if top_k:
            self.warpers.append(TopKLogitsWarper(int(top_k)))
        if sampling.top_p < 1.0:
            self.warpers.append(TopPLogitsWarper(sampling.top_p))
        self.seeds = [random.randint(0, tensors.MAX_SEED) if seed is None else seed for seed in seeds]
        self.generators: list | None = None  # created on the scores' device at the first step

    def __call__(self, input_ids, scores):
        import torch

        for warper in self.warpers:
            scores = warper(input_ids, scores)
        probabilities = torch.softmax(scores.float(), dim=-1)
        if self.generators is None:
            device = probabilities.device
            self.generators = [torch.Generator(device=device).manual_seed(seed) for seed in self.seeds]
        tokens = torch.stack(
            [
                torch.multinomial(probabilities[row], 1, generator=generator)
                for row, generator in enumerate(self.generators[: scores.shape[0]])
            ]
        )
        chosen = torch.full_like(scores, float("-inf"))
        return chosen.scatter_(1, tokens, 0.0)


def _pad_id(tokenizer, eos_ids: frozenset[int]) -> int:
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    return min(eos_ids) if eos_ids else 0


BACKENDS = ("auto", "transformers", "llama.cpp", "vllm")


def select_backend(model_dir: str, device_kind: str, requested: str = "auto") -> str:
    """The engine for a model: ``requested``, or (auto) llama.cpp for a GGUF file, vLLM on an
    accelerator where it is importable, else transformers (optimum-neuron on Neuron)."""
    from predictor.pipelines.llama_cpp_backend import gguf_files

    if requested not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {requested!r}")
    has_gguf = bool(gguf_files(model_dir))
    if requested != "auto":
        if requested == "llama.cpp" and not has_gguf:
            raise ValueError(f"{model_dir}: --backend llama.cpp needs a .gguf file in the model directory")
        if requested != "llama.cpp" and has_gguf and not (Path(model_dir) / "config.json").is_file():
            raise ValueError(f"{model_dir} holds only GGUF weights: serve it with --backend llama.cpp (or auto)")
        return requested
    if has_gguf:
        return "llama.cpp"
    if device_kind == "cuda":
        from predictor.pipelines.vllm_backend import vllm_available

        if vllm_available():
            return "vllm"
    return "transformers"


def load_backend(model_dir: str, device_kind: str, options: Mapping[str, Any]) -> CausalLMBackend:
    backend = select_backend(model_dir, device_kind, options.get("backend", "auto"))
    if backend == "llama.cpp":
        from predictor.pipelines.llama_cpp_backend import LlamaCppBackend, gguf_file

        return LlamaCppBackend(
            gguf_file(model_dir),
            max_sequences=options.get("max_batch_size", 4),
            threads=options.get("threads"),
            context_length=options.get("context_length"),
        )
    if backend == "vllm":
        from predictor.pipelines.vllm_backend import VLLMBackend

        return VLLMBackend(model_dir, device_kind, options)
    if device_kind == "neuron":
        from predictor.pipelines.neuron_transformers import NeuronCausalLMBackend

        return NeuronCausalLMBackend(model_dir)
    return TransformersLMBackend(model_dir, device_kind, dtype=options.get("dtype", "auto"))


# ----------------------------------------------------------------------------- the task


class TextGenerationTask(Task):
    name = "text-generation"

    def __init__(self, *args, backend: CausalLMBackend | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.backend = backend
        # Tokenizing and chat templating a prompt of 200k characters takes a while: never on the
        # event loop. One thread, as the event-loop tokenizer is not shared with any other thread.
        self._tokenizer_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenize")

    async def off_loop(self, function, *args, **kwargs):
        import asyncio
        import functools

        call = functools.partial(function, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._tokenizer_thread, call)

    # ---------------------------------------------------------------- lifecycle

    def load(self) -> None:
        if self.backend is None:
            self.backend = load_backend(self.model_dir, self.device.kind, self.options)
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
        raw = tensors.request_parameters(request, PARAMETER_NAMES)
        if "stop" in raw:
            raw["stop"] = v2_stop(raw["stop"])
        prompts = tensors.text_elements(request, "text_input", MAX_PROMPT_CHARS)
        return self.items(prompts, raw)

    def parse_v1(self, body: dict) -> list[GenerateItem]:
        instances, parameters = tensors.v1_instances(
            body, self.limits.max_batch_size, '"prompt" or {"prompt": ...}', PARAMETER_NAMES
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
        sampling = self.sampling(raw)
        seed = raw.get("seed")
        first = None if seed is None else tensors.seed(seed, len(prompts))
        if first is None or sampling.greedy:
            seeds = [None] * len(prompts)
        else:  # one seed per prompt, as for images: prompt i samples with seed + i
            seeds = [first + index for index in range(len(prompts))]
        stop = stop_sequences(raw.get("stop"))
        items = []
        for index, prompt in enumerate(prompts):
            ids = tuple(self.backend.tokenizer.encode(prompt, add_special_tokens=not templated))
            max_tokens = self._max_tokens(raw.get("max_tokens"), len(ids), f"prompt[{index}]")
            sink = sink_for(index) if sink_for is not None else None
            items.append(GenerateItem(ids, max_tokens, stop, sampling, sink, seed=seeds[index]))
        return items

    def sampling(self, raw: Mapping[str, Any]) -> SamplingParams:
        defaults = self.backend.generation_defaults
        default_temperature = defaults["temperature"] if defaults["do_sample"] else 0.0
        temperature = raw.get("temperature")
        temperature = default_temperature if temperature is None else tensors.number(temperature, "temperature", 0, 2)
        top_p = raw.get("top_p")
        top_p = defaults["top_p"] if top_p is None else tensors.number(top_p, "top_p", 0, 1)
        if top_p == 0:
            raise InvalidInput("parameter top_p must be greater than 0")
        if temperature == 0.0:
            return GREEDY  # every greedy item batches together
        return SamplingParams(temperature, top_p)

    def _max_tokens(self, value: Any, prompt_tokens: int, where: str) -> int:
        context = self.backend.context_length
        room = context - prompt_tokens
        if room < 1:
            raise InvalidInput(f"{where} has {prompt_tokens} tokens; the model's context is {context} tokens")
        if value is None:
            return max(1, min(DEFAULT_MAX_TOKENS, room, MAX_TOKENS_LIMIT))
        max_tokens = tensors.integer(value, "max_tokens", 1, MAX_TOKENS_LIMIT)
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

            def criteria(indices: Sequence[int | None], group=group):
                return row_criteria([None if index is None else states[group[index]] for index in indices])

            backend.generate(
                [list(items[index].input_ids) for index in group],
                max(items[index].max_tokens for index in group),
                sampling,
                criteria,
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


def fitting_groups(items: Sequence[GenerateItem], context_length: int) -> list[list[int]]:
    """Split a batch into calls that fit the context: longest prompt + largest max_tokens <= context.

    Rows are left-padded to the longest prompt of their call and the call runs until its largest
    ``max_tokens``, so a long prompt with few new tokens and a short prompt with many would
    together run past the position embeddings (an IndexError, or a device-side assert on CUDA) or
    Neuron's compiled sequence length. Each item fits on its own (the task checked it); items go
    first-fit into calls in order of prompt length, so similar lengths share a call.
    """
    groups: list[list[int]] = []
    shapes: list[tuple[int, int]] = []  # (longest prompt, largest max_tokens) per group
    order = sorted(range(len(items)), key=lambda index: len(items[index].input_ids), reverse=True)
    for index in order:
        prompt, new = len(items[index].input_ids), items[index].max_tokens
        for slot, (longest, largest) in enumerate(shapes):
            if max(longest, prompt) + max(largest, new) <= context_length:
                groups[slot].append(index)
                shapes[slot] = (max(longest, prompt), max(largest, new))
                break
        else:
            groups.append([index])
            shapes.append((prompt, new))
    return [sorted(group) for group in groups]


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


def stop_sequences(value: Any) -> tuple[str, ...]:
    """``stop``: None, a string, or a list of up to 4 non-empty strings."""
    if value is None:
        return ()
    values = [value] if isinstance(value, (str, bytes)) else value
    if not isinstance(values, (list, tuple)):
        raise InvalidInput(f"parameter stop must be a string or a list of strings, got {type(value).__name__}")
    if len(values) > MAX_STOP_SEQUENCES:
        raise InvalidInput(f"parameter stop has {len(values)} sequences; at most {MAX_STOP_SEQUENCES} are allowed")
    result = []
    for index, stop in enumerate(values):
        stop = tensors.as_text(stop, f"parameter stop[{index}]")
        if not stop:
            raise InvalidInput(f"parameter stop[{index}] is empty")
        if len(stop) > MAX_STOP_CHARS:
            raise InvalidInput(f"parameter stop[{index}] is longer than {MAX_STOP_CHARS} characters")
        result.append(stop)
    return tuple(result)
