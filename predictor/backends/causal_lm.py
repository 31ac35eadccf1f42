"""Causal LMs on transformers (CUDA, CPU), and the generate-loop pieces optimum-neuron reuses.

The task's ``RowState`` of each row sees every new token through a stopping criterion
(``row_criteria``), so rows stop and stream one by one inside one ``generate`` call; sampling is
per row (``RowSampler``), so a seeded row's text does not depend on its neighbours.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from predictor.backends.dtypes import torch_dtype
from predictor.backends.tokenizers import eos_token_ids, generation_defaults, pad_token_id
from predictor.storage import local_weights_variant, weights_variant
from predictor.tasks.generation import GREEDY, RowState, SamplingParams
from predictor.tasks.params import MAX_SEED


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


class TransformersLMBackend:
    """transformers ``AutoModelForCausalLM`` on CUDA or CPU."""

    def __init__(self, model_dir: str, device_kind: str, dtype: str = "auto"):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = device_kind
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.decoder = AutoTokenizer.from_pretrained(model_dir)
        variant = local_weights_variant(model_dir, weights_variant(device_kind, dtype))
        self.model = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=torch_dtype(dtype, device_kind, cuda_prefers_bfloat16=True), variant=variant
        ).to(device_kind)
        self.model.eval()
        config = self.model.config
        self.context_length = int(getattr(config, "max_position_embeddings", None) or 2048)
        self.generation_config = self.model.generation_config
        self.generation_defaults = generation_defaults(self.generation_config)
        self.eos_token_ids = eos_token_ids(self.generation_config.eos_token_id, self.tokenizer.eos_token_id)
        self.pad_id = pad_token_id(self.tokenizer, self.eos_token_ids)

    per_row_seeds = True

    def generate(self, rows, max_new_tokens, sampling, row_states, seeds):
        import torch
        from transformers import LogitsProcessorList, StoppingCriteriaList

        ids, mask = left_pad(rows, self.pad_id)
        chunk_criteria = row_criteria(row_states(list(range(len(rows)))))
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
        self.seeds = [random.randint(0, MAX_SEED) if seed is None else seed for seed in seeds]
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
