"""AWS Neuron backends for the transformers tasks, behind the same lazy boundary as ``predictor.backends.neuron``.

Imported only with ``--device neuron``; ``optimum.neuron`` comes from the Neuron image. Models
are precompiled (``optimum-cli export neuron ...``) for static shapes, which these backends read
from the export and respect:

* causal LM (text-generation): ``NeuronModelForCausalLM`` from the export directory; batches are
  split into chunks of the compiled batch size (the last padded with repeats) and prompts plus
  new tokens must fit the compiled sequence length (the task answers 400 beyond it).
* classifiers and detectors: ``NeuronModelForSequenceClassification`` /
  ``NeuronModelForImageClassification`` / ``NeuronModelForObjectDetection``, fed tensors padded to
  the compiled batch size and sequence length (text) or image size, then post-processed here.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from predictor.backends.causal_lm import catch_up, generation_config_for, left_pad, row_criteria
from predictor.backends.neuron import import_optimum_neuron
from predictor.backends.tokenizers import eos_token_ids, generation_defaults, pad_token_id
from predictor.backends.transformers import class_scores, detect_batch

logger = logging.getLogger(__name__)

CLASSIFIER_CLASSES = {
    "text-classification": "NeuronModelForSequenceClassification",
    "image-classification": "NeuronModelForImageClassification",
    "object-detection": "NeuronModelForObjectDetection",
}


def neuron_config(model_dir: str | Path) -> dict[str, Any]:
    """Compiled shapes of an export: ``neuron_config.json`` (newer exports) or ``config.json``'s ``neuron``."""
    directory = Path(model_dir)
    separate = directory / "neuron_config.json"
    if separate.is_file():
        return json.loads(separate.read_text())
    config = directory / "config.json"
    if config.is_file():
        return json.loads(config.read_text()).get("neuron") or {}
    return {}


def _chunks(rows: list, size: int):
    """(chunk padded to ``size`` with repeats of its last row, real row count) pairs."""
    for start in range(0, len(rows), size):
        chunk = rows[start : start + size]
        yield chunk + [chunk[-1]] * (size - len(chunk)), len(chunk)


# ----------------------------------------------------------------------------- causal LM


class NeuronCausalLMBackend:
    """A precompiled optimum-neuron causal LM (Llama, Mistral, ...)."""

    def __init__(self, model_dir: str, sdk: Any = None):
        from transformers import AutoTokenizer

        sdk = sdk or import_optimum_neuron()
        shapes = neuron_config(model_dir)
        self.batch_size = int(shapes.get("batch_size") or shapes.get("static_batch_size") or 1)
        sequence_length = shapes.get("sequence_length") or shapes.get("static_sequence_length")
        self.model = sdk.NeuronModelForCausalLM.from_pretrained(model_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.decoder = AutoTokenizer.from_pretrained(model_dir)
        config = getattr(self.model, "config", None)
        self.context_length = int(sequence_length or getattr(config, "max_position_embeddings", 0) or 2048)
        self.generation_config = self.model.generation_config
        self.generation_defaults = generation_defaults(self.generation_config)
        self.eos_token_ids = eos_token_ids(self.generation_config.eos_token_id, self.tokenizer.eos_token_id)
        self.pad_id = pad_token_id(self.tokenizer, self.eos_token_ids)
        logger.info(
            "loaded NeuronModelForCausalLM from %s: batch %d, sequence length %d",
            model_dir,
            self.batch_size,
            self.context_length,
        )

    # optimum-neuron samples inside its own generate loop: one seed per call (the task batches only
    # rows with equal seeds together).
    per_row_seeds = False

    def generate(self, rows, max_new_tokens, sampling, row_states, seeds):
        import torch
        from transformers import StoppingCriteriaList

        config = generation_config_for(self.generation_config, max_new_tokens, sampling, self.pad_id)
        indices = list(range(len(rows)))
        for start in range(0, len(rows), self.batch_size):
            real = indices[start : start + self.batch_size]
            padded_rows = [rows[i] for i in real] + [rows[real[-1]]] * (self.batch_size - len(real))
            ids, mask = left_pad(padded_rows, self.pad_id)
            # Repeats only fill the static batch: the criterion treats them as done.
            chunk_criteria = row_criteria(row_states(real + [None] * (self.batch_size - len(real))))
            if not sampling.greedy and seeds[0] is not None:
                torch.manual_seed(seeds[0])
            with torch.inference_mode():
                output = self.model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    generation_config=config,
                    stopping_criteria=StoppingCriteriaList([chunk_criteria]),
                )
            sequences = output if isinstance(output, torch.Tensor) else output.sequences
            catch_up(chunk_criteria.rows, sequences, ids.shape[1])


# ----------------------------------------------------------------------------- classifiers, detectors


class NeuronPipelineBackend:
    """A precompiled optimum-neuron classifier or detector, with the model's own pre/post-processing."""

    def __init__(self, task: str, model_dir: str, sdk: Any = None):
        sdk = sdk or import_optimum_neuron()
        try:
            class_name = CLASSIFIER_CLASSES[task]
        except KeyError:
            raise ValueError(f"no Neuron backend for task {task!r}") from None
        self.task = task
        shapes = neuron_config(model_dir)
        self.batch_size = int(shapes.get("static_batch_size") or shapes.get("batch_size") or 1)
        self.sequence_length = int(shapes.get("static_sequence_length") or shapes.get("sequence_length") or 0)
        self.image_size = (int(shapes.get("static_height") or 0), int(shapes.get("static_width") or 0))
        self.model = getattr(sdk, class_name).from_pretrained(model_dir)
        id2label = self.model.config.id2label
        self.labels = [id2label[index] for index in sorted(id2label)]
        if task == "text-classification":
            from transformers import AutoTokenizer

            self.processor = AutoTokenizer.from_pretrained(model_dir)
        else:
            from transformers import AutoImageProcessor

            self.processor = AutoImageProcessor.from_pretrained(model_dir)
            height, width = self.image_size
            if height and width:  # the graph takes one image size: resize to it, no padding
                self.processor.size = {"height": height, "width": width}
                if hasattr(self.processor, "do_pad"):
                    self.processor.do_pad = False
        logger.info("loaded %s from %s: compiled shapes %s", class_name, model_dir, shapes)

    def _features(self, inputs: list):
        if self.task == "text-classification":
            length = self.sequence_length or None
            return self.processor(
                inputs,
                padding="max_length" if length else True,
                truncation=True,
                max_length=length,
                return_tensors="pt",
            )
        return self.processor(images=inputs, return_tensors="pt")

    def __call__(self, inputs: list) -> list[list[dict]]:
        """Every label's score per input (the task keeps its top K)."""
        import torch

        results = []
        for chunk, real in _chunks(list(inputs), self.batch_size):
            features = dict(self._features(chunk))
            with torch.inference_mode():
                logits = self.model(**features).logits[:real]
            results += class_scores(self.model.config, self.labels, logits)
        return results

    def detect(self, images: list, threshold: float) -> list[list[dict]]:
        results = []
        for chunk, real in _chunks(list(images), self.batch_size):
            results += detect_batch(self.processor, self.model, chunk, threshold)[:real]
        return results
