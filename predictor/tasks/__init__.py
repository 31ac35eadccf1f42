"""The protocol side of each served task, and which task a model directory holds.

A task (this package) reads requests into work items, validates them, and writes results back;
a backend (``predictor.backends``) runs the items on a device. Imports go backends -> tasks, never
the other way: a task gets its backend from the loader ``predictor.backends.task_factory`` gives it.

Like KServe's huggingfaceserver (``huggingfaceserver/task.py`` ``ARCHITECTURES_2_TASK``), the task
is read from the model's own config with one lookup table: diffusers' ``model_index.json``
``_class_name`` or transformers' ``config.json`` ``architectures``.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from pathlib import Path

from predictor.tasks.base import ServingLimits, Task

# Class name in the model's config -> task. Neuron exports keep the diffusers class name.
TASK_BY_CLASS: dict[str, str] = {
    "StableDiffusionPipeline": "text-to-image",
    "StableDiffusionXLPipeline": "text-to-image",
    "StableDiffusion3Pipeline": "text-to-image",
    "LatentConsistencyModelPipeline": "text-to-image",
    "PixArtAlphaPipeline": "text-to-image",
    "FluxPipeline": "text-to-image",
    "NeuronStableDiffusionPipeline": "text-to-image",
    "NeuronStableDiffusionXLPipeline": "text-to-image",
    # transformers config.json ``architectures`` (optimum-neuron exports keep them too)
    **dict.fromkeys(
        (
            "BertForSequenceClassification",
            "DistilBertForSequenceClassification",
            "RobertaForSequenceClassification",
            "XLMRobertaForSequenceClassification",
            "DebertaV2ForSequenceClassification",
            "AlbertForSequenceClassification",
            "ElectraForSequenceClassification",
            "ModernBertForSequenceClassification",
        ),
        "text-classification",
    ),
    **dict.fromkeys(
        (
            "ViTForImageClassification",
            "DeiTForImageClassification",
            "DeiTForImageClassificationWithTeacher",
            "BeitForImageClassification",
            "ConvNextForImageClassification",
            "ConvNextV2ForImageClassification",
            "SwinForImageClassification",
            "ResNetForImageClassification",
            "MobileViTForImageClassification",
            "EfficientNetForImageClassification",
        ),
        "image-classification",
    ),
    **dict.fromkeys(
        (
            "YolosForObjectDetection",
            "DetrForObjectDetection",
            "ConditionalDetrForObjectDetection",
            "TableTransformerForObjectDetection",
            "RTDetrForObjectDetection",
        ),
        "object-detection",
    ),
    **dict.fromkeys(
        (
            "LlamaForCausalLM",
            "MistralForCausalLM",
            "MixtralForCausalLM",
            "Qwen2ForCausalLM",
            "Qwen3ForCausalLM",
            "GemmaForCausalLM",
            "Gemma2ForCausalLM",
            "Phi3ForCausalLM",
            "GraniteForCausalLM",
            "GPT2LMHeadModel",
            "GPTNeoXForCausalLM",
            "OPTForCausalLM",
        ),
        "text-generation",
    ),
}

# Task name -> "module:Class" of its protocol side; imported only when that task is served.
TASK_IMPLEMENTATIONS: dict[str, str] = {
    "text-to-image": "predictor.tasks.text_to_image:TextToImageTask",
    "text-classification": "predictor.tasks.classification:TextClassificationTask",
    "image-classification": "predictor.tasks.classification:ImageClassificationTask",
    "object-detection": "predictor.tasks.detection:ObjectDetectionTask",
    "text-generation": "predictor.tasks.text_generation:TextGenerationTask",
}


class UnknownTaskError(ValueError):
    pass


def infer_task(model_dir: str | Path) -> str:
    """Read the task from model_index.json (diffusers) or config.json (transformers); a lone GGUF file is text generation."""
    directory = Path(model_dir)
    index = directory / "model_index.json"
    config = directory / "config.json"
    if not index.is_file() and not config.is_file() and any(directory.glob("*.gguf")):
        return "text-generation"  # GGUF holds causal LMs (llama.cpp's format); served by the llama.cpp backend
    if index.is_file():
        names = [json.loads(index.read_text()).get("_class_name", "")]
    else:
        if not config.is_file():
            raise UnknownTaskError(f"{directory}: neither model_index.json, config.json nor a .gguf file found")
        names = json.loads(config.read_text()).get("architectures") or []
    for name in names:
        if name in TASK_BY_CLASS:
            return TASK_BY_CLASS[name]
    raise UnknownTaskError(
        f"{directory}: cannot infer the task from {names or 'an empty class list'}; pass --task "
        f"(supported: {', '.join(sorted(TASK_IMPLEMENTATIONS))})"
    )


def task_class(task: str) -> Callable[..., Task]:
    try:
        target = TASK_IMPLEMENTATIONS[task]
    except KeyError:
        supported = ", ".join(sorted(TASK_IMPLEMENTATIONS))
        raise UnknownTaskError(f"task {task!r} is not supported (supported: {supported})") from None
    module_name, _, class_name = target.partition(":")
    return getattr(importlib.import_module(module_name), class_name)


__all__ = [
    "TASK_BY_CLASS",
    "TASK_IMPLEMENTATIONS",
    "ServingLimits",
    "Task",
    "UnknownTaskError",
    "infer_task",
    "task_class",
]
