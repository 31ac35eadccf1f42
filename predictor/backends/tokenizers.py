"""What every text-generation backend reads from a tokenizer and a ``generation_config``, in one place."""

from __future__ import annotations

from typing import Any


def eos_token_ids(*sources: int | list[int] | None) -> frozenset[int]:
    """Every end-of-sequence id of the sources (``generation_config.eos_token_id`` may be a list)."""
    ids: set[int] = set()
    for source in sources:
        if source is None:
            continue
        ids.update([source] if isinstance(source, int) else list(source))
    return frozenset(ids)


def pad_token_id(tokenizer: Any, eos_ids: frozenset[int]) -> int:
    """The tokenizer's pad id, else an end-of-sequence id (padding is masked out either way)."""
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    return min(eos_ids) if eos_ids else 0


def generation_defaults(generation_config: Any) -> dict[str, Any]:
    """``do_sample``, ``temperature`` and ``top_p`` of a model's generation_config (what omitted parameters take)."""
    do_sample = bool(getattr(generation_config, "do_sample", False))
    return {
        "do_sample": do_sample,
        "temperature": float(getattr(generation_config, "temperature", None) or 1.0),
        "top_p": float(getattr(generation_config, "top_p", None) or 1.0),
    }
