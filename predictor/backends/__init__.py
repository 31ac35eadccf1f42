"""What runs each task on a device: diffusers, transformers, optimum-neuron, llama.cpp, vLLM.

A task (``predictor.tasks``) owns the protocol; a backend here runs its work items. Imports go
this way only (backends -> tasks). ``task_factory`` binds a task's protocol class to
``load_backend``, which picks the backend for the device and model when the task loads.

Every engine module is imported when it is chosen, not before: optional SDKs (``optimum.neuron``
with ``torch_neuronx``, ``vllm``, ``llama_cpp``) are never needed for CPU serving, and this package
imports neither kserve nor torch by itself (``predictor.backends.diffusers`` is reused by tools).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from predictor.tasks import task_class
from predictor.tasks.base import Task

#: ``--backend`` choices for text generation.
BACKENDS = ("auto", "transformers", "llama.cpp", "vllm")
PIPELINE_TASKS = ("text-classification", "image-classification", "object-detection")


def task_factory(task: str) -> Callable[..., Task]:
    """The served task: its protocol class (``predictor.tasks.task_class``) with ``load_backend``."""
    return functools.partial(task_class(task), load_backend=load_backend)


def load_backend(task: str, model_dir: str, device_kind: str, options: Mapping[str, Any]) -> Any:
    """The backend that runs ``task`` for this model on this device (blocking: loads the weights)."""
    if task == "text-to-image":
        return _image_backend(model_dir, device_kind, options)
    if task in PIPELINE_TASKS:
        return _pipeline_backend(task, model_dir, device_kind, options)
    if task == "text-generation":
        return _causal_lm_backend(model_dir, device_kind, options)
    raise ValueError(f"no backend for task {task!r}")


def _image_backend(model_dir: str, device_kind: str, options: Mapping[str, Any]) -> Any:
    if device_kind == "neuron":
        from predictor.backends.neuron import NeuronImageBackend

        return NeuronImageBackend(model_dir)
    from predictor.backends.diffusers import DiffusersBackend

    return DiffusersBackend(
        model_dir, device_kind, dtype=options.get("dtype", "auto"), compile_model=bool(options.get("torch_compile"))
    )


def _pipeline_backend(task: str, model_dir: str, device_kind: str, options: Mapping[str, Any]) -> Any:
    if device_kind == "neuron":
        from predictor.backends.neuron_transformers import NeuronPipelineBackend

        return NeuronPipelineBackend(task, model_dir)
    from predictor.backends.transformers import TransformersBackend

    return TransformersBackend(task, model_dir, device_kind, dtype=options.get("dtype", "auto"))


def select_backend(model_dir: str, device_kind: str, requested: str = "auto") -> str:
    """The engine for a model: ``requested``, or (auto) llama.cpp for a GGUF file, vLLM on an
    accelerator where it is importable, else transformers (optimum-neuron on Neuron)."""
    from predictor.backends.llama_cpp import gguf_files

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
        from predictor.backends.vllm import vllm_available

        if vllm_available():
            return "vllm"
    return "transformers"


def _causal_lm_backend(model_dir: str, device_kind: str, options: Mapping[str, Any]) -> Any:
    backend = select_backend(model_dir, device_kind, options.get("backend", "auto"))
    if backend == "llama.cpp":
        from predictor.backends.llama_cpp import LlamaCppBackend, gguf_file

        return LlamaCppBackend(
            gguf_file(model_dir),
            max_sequences=options.get("max_batch_size", 4),
            threads=options.get("threads"),
            context_length=options.get("context_length"),
        )
    if backend == "vllm":
        from predictor.backends.vllm import VLLMBackend

        return VLLMBackend(model_dir, device_kind, options)
    if device_kind == "neuron":
        from predictor.backends.neuron_transformers import NeuronCausalLMBackend

        return NeuronCausalLMBackend(model_dir)
    from predictor.backends.causal_lm import TransformersLMBackend

    return TransformersLMBackend(model_dir, device_kind, dtype=options.get("dtype", "auto"))
