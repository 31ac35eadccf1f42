"""Command-line arguments: kserve's own parser extended with the runtime's options.

Like KServe's huggingfaceserver, the parser inherits every kserve argument (``--model_name``,
``--http_port``, ``--grpc_port``, ``--workers``, ...) so the ServingRuntime passes the same
flags it passes to any KServe model server, and adds what this runtime needs.
"""

from __future__ import annotations

import argparse
import os

from kserve.model_server import parser as kserve_parser

DEVICE_CHOICES = ("auto", "neuron", "cuda", "cpu")
DTYPE_CHOICES = ("auto", "float32", "float16", "bfloat16")
DEVICE_ENV = "PREDICTOR_DEVICE"
BACKEND_CHOICES = ("auto", "transformers", "llama.cpp", "vllm")
BACKEND_ENV = "PREDICTOR_BACKEND"


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {value!r}")


def build_parser() -> argparse.ArgumentParser:
    """Return the predictor's parser (kserve's arguments plus ours)."""
    parser = argparse.ArgumentParser(
        prog="python -m predictor",
        parents=[kserve_parser],
        conflict_handler="resolve",
        description="Hardware-aware KServe predictor (Neuron, CUDA, CPU).",
    )
    # kserve's default is true: three log lines and a CPU-time probe per request (its TimingMiddleware
    # and the model's latency line), ~10% of the server's CPU per request on the tiny classifier.
    # predictor_request_seconds and the access log say the same.
    parser.add_argument(
        "--enable_latency_logging",
        type=_bool,
        default=False,
        help="Log kserve's per-request latency lines (kserve.trace timings, the model's latency line). Default: false.",
    )
    _add_model_arguments(parser.add_argument_group("model"))
    _add_device_arguments(parser.add_argument_group("device"))
    _add_serving_arguments(parser.add_argument_group("serving"))
    _add_http_arguments(parser.add_argument_group("http"))
    _add_lifecycle_arguments(parser.add_argument_group("lifecycle (docs/lifecycle.md)"))
    return parser


def _add_model_arguments(model: argparse._ArgumentGroup) -> None:
    """Where the model comes from, its task, and the text-generation engine."""
    model.add_argument(
        "--model_dir",
        default="/mnt/models",
        help="Local model directory (where KServe's storage initializer mounts storageUri).",
    )
    model.add_argument(
        "--model_id",
        default=None,
        help="Remote model to fetch into --model_dir when it holds no model: "
        "a Hugging Face repo id ('org/name' or 'hf://org/name') or 's3://bucket/prefix'.",
    )
    model.add_argument("--model_revision", default=None, help="Hugging Face revision (branch, tag, commit).")
    model.add_argument(
        "--task",
        default="auto",
        help="Pipeline task; 'auto' reads it from the model's model_index.json / config.json.",
    )
    model.add_argument(
        "--backend",
        choices=BACKEND_CHOICES,
        default=os.environ.get(BACKEND_ENV, "auto"),
        help="Text-generation engine. 'auto': llama.cpp for a model directory holding a .gguf file, vLLM on CUDA "
        f"where it is installed, else transformers (optimum-neuron on Neuron). Env: {BACKEND_ENV}.",
    )
    model.add_argument(
        "--context_length",
        type=int,
        default=None,
        help="Tokens of context per sequence for llama.cpp and vLLM (their KV cache is sized by it); default: "
        "llama.cpp min(the model's, 4096), vLLM the model's.",
    )
    model.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for llama.cpp; default: the container's CPU limit (cgroup cpu.max), else the usable CPUs.",
    )


def _add_device_arguments(device: argparse._ArgumentGroup) -> None:
    device.add_argument(
        "--device",
        choices=DEVICE_CHOICES,
        default=os.environ.get(DEVICE_ENV, "auto"),
        help=f"Accelerator to use; 'auto' picks neuron, then cuda, then cpu. Env: {DEVICE_ENV}.",
    )
    device.add_argument(
        "--dtype",
        choices=DTYPE_CHOICES,
        default="auto",
        help="Weights dtype on CUDA/CPU; 'auto' is float16 on CUDA and float32 on CPU.",
    )
    device.add_argument(
        "--torch_compile",
        type=_bool,
        default=False,
        help="Compile the UNet and VAE decoder with torch.compile (inductor) and channels_last. Requests are then "
        "limited to the default size (--default_height/--default_width or the model's), and every batch size up "
        "to --max_batch_size, with and without guidance, is compiled during warm-up, before the model is ready.",
    )


def _add_serving_arguments(serving: argparse._ArgumentGroup) -> None:
    """Batching, queueing and the bounds of request parameters."""
    serving.add_argument(
        "--max_batch_size",
        type=int,
        default=None,
        help="Most items (prompts, texts, images) in one device call and in one request; default: the task's "
        "(text-to-image, object-detection, text-generation 4; image-classification 16; text-classification 32).",
    )
    serving.add_argument(
        "--batch_wait_ms",
        type=float,
        default=5.0,
        help="Upper bound of the batcher's one hold: right after a batch of several, how long the next may wait "
        "for as many requests. An idle device never waits: a lone request runs at once.",
    )
    serving.add_argument(
        "--max_queue_size", type=int, default=64, help="Prompts waiting at most; beyond it requests get 503."
    )
    serving.add_argument("--max_height", type=int, default=1024, help="Largest image height accepted.")
    serving.add_argument("--max_width", type=int, default=1024, help="Largest image width accepted.")
    serving.add_argument("--default_height", type=int, default=None, help="Height when a request gives none.")
    serving.add_argument("--default_width", type=int, default=None, help="Width when a request gives none.")
    serving.add_argument("--default_steps", type=int, default=25, help="num_inference_steps when none is given.")
    serving.add_argument("--max_steps", type=int, default=150, help="Largest num_inference_steps accepted.")
    serving.add_argument(
        "--warmup", type=_bool, default=True, help="Run one synthetic inference before reporting ready."
    )


def _add_http_arguments(http: argparse._ArgumentGroup) -> None:
    http.add_argument(
        "--max_request_bytes",
        type=int,
        default=64 * 1024 * 1024,
        help="Largest REST request body accepted (bytes, after gzip/deflate decoding); beyond it HTTP 413. "
        "The default holds four 12-megapixel JPEG photos in base64 JSON.",
    )


def _add_lifecycle_arguments(lifecycle: argparse._ArgumentGroup) -> None:
    lifecycle.add_argument(
        "--drain_timeout_s",
        type=float,
        default=60.0,
        help="On SIGTERM, how long requests already accepted may take to finish before the server stops anyway. "
        "Keep it below the pod's terminationGracePeriodSeconds minus any preStop time "
        "(Knative: the revision timeout minus the queue-proxy drain).",
    )
    lifecycle.add_argument(
        "--batch_deadline_s",
        type=float,
        default=0.0,
        help="A device call running longer than this makes the model not ready and the server not live (the "
        "pod restarts). 0 derives it from the warm-up call, scaled by each call's work.",
    )
    lifecycle.add_argument(
        "--enable_repository_api",
        type=_bool,
        default=False,
        help="Serve the repository extension's model load / unload (REST /v2/repository/..., gRPC "
        "RepositoryModelLoad/Unload). Off: they answer 501 / UNIMPLEMENTED.",
    )
