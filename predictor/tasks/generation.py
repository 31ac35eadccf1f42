"""What one text generation is, whatever runs it: the work item, the result, and per-row tracking.

``RowState`` turns a row's new token ids into text (incremental decoding, stop sequences held
back while streaming, ``finish_reason``); every backend feeds it, so transformers, optimum-neuron,
llama.cpp and vLLM stop and stream alike.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


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
        self,
        rows: list[list[int]],
        max_new_tokens: int,
        sampling: SamplingParams,
        row_states: Callable[[list[int | None]], list[RowState | None]],
        seeds: list[int | None],
    ) -> Any:
        """Run generation on token-id rows, feeding each new token to its ``RowState``.

        ``row_states(indices)`` gives the states of a chunk's rows (indices into ``rows``; ``None``
        pads a static-shape batch and gets ``None``); a row whose state is done may stop early.
        """


GREEDY = SamplingParams(0.0, 1.0)


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
