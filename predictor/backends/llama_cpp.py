"""llama.cpp backend for text generation on CPU (GGUF models, e.g. quantized Llama on Graviton).

``llama_cpp`` (llama-cpp-python, the ``llama`` extra) is imported only when this backend is
chosen: a model directory holding one ``.gguf`` file, or ``--backend llama.cpp``.

Batching. One ``llama_context`` holds ``max_batch_size`` sequences (``n_seq_max``, each with
its own KV cells of the full context: ``kv_unified`` off), as llama.cpp's own server does with
its parallel slots. The task's batcher hands over up to ``max_batch_size`` requests with the same
sampling parameters; their prompts are prefilled together in ``n_batch``-token chunks, then
every decoding step is ONE ``llama_decode`` over the next token of every unfinished row (one
sequence id per row), so the weights are read once per step for all rows. What this is not:
continuous batching. A request that arrives while a batch is decoding waits for that batch (as on
the transformers path); rows that finish early leave the step smaller, not refilled.

The high-level ``llama_cpp.Llama`` is one sequence per object and not thread-safe, so it is not
used: this backend drives ``llama_cpp._internals`` (``LlamaModel``, ``LlamaContext``,
``LlamaBatch``) from the inference thread only. Tokenizing (the event-loop side) touches only
the model's vocabulary (``llama_tokenize`` on ``llama_vocab``), which is read-only.

Sampling happens here, per row, from the logits llama.cpp returns (greedy = argmax; else
temperature, then top-p, then a draw from the row's own numpy generator seeded from its
``seed``), so parameters mean what they mean on the transformers path and a seeded row's text
does not depend on its neighbours.

Threads default to the container's CPU limit (cgroup v2 ``cpu.max``, else v1 quota, else the
CPUs this process may run on), not the host's core count: llama.cpp's default would start one
thread per host core and thrash under a Kubernetes CPU limit.
"""

from __future__ import annotations

import logging
import math
import os
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from predictor.tasks.params import MAX_SEED

logger = logging.getLogger(__name__)


DEFAULT_CONTEXT = 4096  # tokens per sequence unless --context_length says otherwise


class LlamaCppMissingError(RuntimeError):
    pass


def import_llama_cpp():
    """``llama_cpp`` or a clear error: the runtime installs it with the ``llama`` extra."""
    try:
        import llama_cpp
        from llama_cpp import _internals  # noqa: F401  (the backend's building blocks)
        from llama_cpp import _logger as llama_logger
    except ImportError as error:
        raise LlamaCppMissingError(
            f"the llama.cpp backend needs llama-cpp-python (pip install '.[llama]'): {error}"
        ) from None
    # llama.cpp prints its load and context details to stderr; keep them for --log level DEBUG
    llama_logger.set_verbose(logger.isEnabledFor(logging.DEBUG))
    return llama_cpp


def gguf_files(model_dir: str | Path) -> list[Path]:
    directory = Path(model_dir)
    if directory.is_file() and directory.suffix == ".gguf":
        return [directory]
    if not directory.is_dir():
        return []
    return sorted(path for path in directory.glob("*.gguf") if path.is_file())


def gguf_file(model_dir: str | Path) -> Path:
    """The one GGUF file of a model directory (several would make the choice a guess)."""
    files = gguf_files(model_dir)
    if len(files) != 1:
        found = ", ".join(path.name for path in files) or "none"
        raise ValueError(f"{model_dir}: the llama.cpp backend needs exactly one .gguf file (found {found})")
    return files[0]


def container_cpus() -> int:
    """CPUs this container may use: cgroup v2 ``cpu.max``, cgroup v1 quota, else the affinity mask."""
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = _cgroup_quota()
    if quota is not None:
        return max(1, min(available, math.ceil(quota)))
    return max(1, available)


def _cgroup_quota(root: str = "/sys/fs/cgroup") -> float | None:
    """CPU limit in cores from cgroup files (None: unlimited or unknown)."""
    try:
        quota, period = Path(root, "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int(Path(root, "cpu", "cpu.cfs_quota_us").read_text())
        period = int(Path(root, "cpu", "cpu.cfs_period_us").read_text())
        return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None


class GGUFTokenizer:
    """The tokenizer calls the task makes (``encode``, ``decode``, ``apply_chat_template``), on llama.cpp's vocabulary."""

    def __init__(self, model: Any, chat_template: str | None, bos_token: str, eos_token: str):
        self._model = model
        self.chat_template = chat_template or None
        self.bos_token, self.eos_token = bos_token, eos_token
        self._add_bos = bool(model.add_bos_token())
        self._template = None

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        # special=True: control tokens written in the text (a chat template's role markers) are parsed,
        # as transformers' tokenizers parse their added special tokens
        return self._model.tokenize(text.encode("utf-8"), add_bos=add_special_tokens and self._add_bos, special=True)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        if not ids:
            return ""
        return self._model.detokenize(list(ids), special=not skip_special_tokens).decode("utf-8", errors="replace")

    def apply_chat_template(self, messages: list[dict], tokenize: bool = False, add_generation_prompt: bool = True):
        """Render the GGUF's ``tokenizer.chat_template`` as transformers renders a template (sandboxed jinja)."""
        if self._template is None:
            from jinja2.exceptions import TemplateError
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            def raise_exception(message):
                raise TemplateError(message)

            environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
            environment.globals["raise_exception"] = raise_exception
            self._template = environment.from_string(self.chat_template)
        text = self._template.render(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token,
            eos_token=self.eos_token,
        )
        return self.encode(text, add_special_tokens=False) if tokenize else text


class LlamaCppBackend:
    """A GGUF model on llama.cpp: ``max_batch_size`` sequences decoded together (see the module doc)."""

    per_row_seeds = True

    def __init__(
        self,
        model_path: str | Path,
        max_sequences: int = 4,
        threads: int | None = None,
        context_length: int | None = None,
        n_batch: int = 512,
    ):
        llama_cpp = import_llama_cpp()
        from llama_cpp import _internals

        self._lib = llama_cpp
        llama_cpp.llama_backend_init()
        self.path = Path(model_path)
        self.threads = threads or container_cpus()
        model_params = llama_cpp.llama_model_default_params()
        self.model = _internals.LlamaModel(path_model=str(self.path), params=model_params, verbose=False)
        trained = int(self.model.n_ctx_train())
        # The KV cache holds max_sequences x per_sequence cells: a 128k-token trained context times
        # 8 sequences would not fit a node's memory, so the default is capped.
        per_sequence = min(context_length or DEFAULT_CONTEXT, trained)
        self.max_sequences = max(1, int(max_sequences))
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = per_sequence * self.max_sequences
        params.n_seq_max = self.max_sequences
        params.kv_unified = False  # each sequence gets its own per_sequence cells
        params.n_batch = max(n_batch, self.max_sequences)
        params.n_ubatch = params.n_batch
        params.n_threads = params.n_threads_batch = self.threads
        params.no_perf = True
        self.context = _internals.LlamaContext(model=self.model, params=params, verbose=False)
        self.n_batch = int(params.n_batch)
        self.context_length = min(per_sequence, int(llama_cpp.llama_n_ctx_seq(self.context.ctx)))
        self.n_vocab = int(self.model.n_vocab())
        self._batch = _internals.LlamaBatch(n_tokens=self.n_batch, embd=0, n_seq_max=1, verbose=False)

        metadata = self.model.metadata()
        vocab = self.model.vocab
        self.eos_token_ids = frozenset(
            token for token in range(self.n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, token)
        )
        bos, eos = self.model.token_bos(), self.model.token_eos()
        piece = self.model.token_get_text
        self.tokenizer = GGUFTokenizer(
            self.model,
            metadata.get("tokenizer.chat_template"),
            piece(bos) if bos >= 0 else "",
            piece(eos) if eos >= 0 else "",
        )
        self.decoder = self.tokenizer  # llama.cpp's vocabulary calls are thread-safe (read-only)
        # GGUF carries no generation_config: greedy unless a request samples, as for a transformers
        # model whose generation_config does not sample
        self.generation_defaults: Mapping[str, Any] = {"do_sample": False, "temperature": 1.0, "top_p": 1.0}
        logger.info(
            "llama.cpp: %s (%s), %d sequences x %d tokens, %d threads, batch %d",
            self.path.name,
            self.model.desc(),
            self.max_sequences,
            self.context_length,
            self.threads,
            self.n_batch,
        )

    # ---------------------------------------------------------------- generation

    def generate(self, rows, max_new_tokens, sampling, row_states, seeds):
        """Decode ``rows`` as parallel sequences; every new token goes to its row's state (stop, stream)."""
        import numpy as np

        if len(rows) > self.max_sequences:
            raise ValueError(f"{len(rows)} rows exceed the context's {self.max_sequences} sequences")
        states = row_states(list(range(len(rows))))
        generators = [np.random.default_rng(random.randint(0, MAX_SEED) if seed is None else seed) for seed in seeds]
        self.context.kv_cache_clear()
        logits = self._prefill(rows)
        positions = [len(row) for row in rows]
        active = list(range(len(rows)))
        for step in range(max_new_tokens):
            next_tokens = {}
            for index in active:
                token = self._sample(logits[index], sampling, generators[index])
                states[index].add(token)
                if not states[index].done and positions[index] < self.context_length:
                    next_tokens[index] = token
            active = list(next_tokens)
            if not active or step == max_new_tokens - 1:
                break
            logits = self._decode([(index, positions[index], token) for index, token in next_tokens.items()])
            for index in active:
                positions[index] += 1
        self.context.kv_cache_clear()

    def _prefill(self, rows: Sequence[Sequence[int]]) -> dict[int, Any]:
        """Feed every prompt (chunks of ``n_batch`` tokens over all rows); logits of each row's last token."""
        entries = [(index, position, token) for index, row in enumerate(rows) for position, token in enumerate(row)]
        last = {index: len(row) - 1 for index, row in enumerate(rows)}
        logits: dict[int, Any] = {}
        for start in range(0, len(entries), self.n_batch):
            logits.update(self._decode(entries[start : start + self.n_batch], want=last))
        return logits

    def _decode(self, entries: Sequence[tuple[int, int, int]], want: Mapping[int, int] | None = None):
        """One ``llama_decode`` of (sequence, position, token) entries; logits per sequence that asked for them."""
        import numpy as np

        batch = self._batch.batch
        batch.n_tokens = len(entries)
        wanted: dict[int, int] = {}
        for slot, (sequence, position, token) in enumerate(entries):
            batch.token[slot] = token
            batch.pos[slot] = position
            batch.n_seq_id[slot] = 1
            batch.seq_id[slot][0] = sequence
            needs = want is None or want.get(sequence) == position
            batch.logits[slot] = needs
            if needs:
                wanted[sequence] = slot
        status = self._lib.llama_decode(self.context.ctx, batch)
        if status != 0:
            raise RuntimeError(f"llama_decode failed with status {status} ({len(entries)} tokens)")
        return {
            sequence: np.ctypeslib.as_array(self.context.get_logits_ith(slot), shape=(self.n_vocab,)).copy()
            for sequence, slot in wanted.items()
        }

    @staticmethod
    def _sample(logits, sampling, generator) -> int:
        """Greedy argmax, or temperature -> top-p -> a draw from this row's generator."""
        import numpy as np

        if sampling.greedy:
            return int(np.argmax(logits))
        scaled = logits.astype(np.float64) / sampling.temperature
        scaled -= scaled.max()
        probabilities = np.exp(scaled)
        probabilities /= probabilities.sum()
        if sampling.top_p < 1.0:
            order = np.argsort(-probabilities, kind="stable")
            cumulative = np.cumsum(probabilities[order])
            keep = order[: int(np.searchsorted(cumulative, sampling.top_p)) + 1]  # smallest set reaching top_p
            kept = np.zeros_like(probabilities)
            kept[keep] = probabilities[keep]
            probabilities = kept / kept.sum()
        return int(generator.choice(len(probabilities), p=probabilities))
