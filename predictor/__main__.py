"""``python -m predictor``: detect the device, fetch the model, serve it with KServe."""

from __future__ import annotations

import logging
import os
import sys

from predictor.args import build_parser

logger = logging.getLogger("predictor")


def _fail(message: str) -> int:
    logger.error(message)
    print(f"predictor: error: {message}", file=sys.stderr)
    return 2


def _check_backend(model_dir: str, device_kind: str, args) -> str | None:
    """Resolve --backend for text generation now (a clear exit, not a failed load); None when usable."""
    from predictor.backends import select_backend

    try:
        args.backend = select_backend(model_dir, device_kind, args.backend)
    except ValueError as error:
        return str(error)
    logger.info("text-generation backend: %s", args.backend)
    try:
        if args.backend == "llama.cpp":
            from predictor.backends.llama_cpp import import_llama_cpp

            import_llama_cpp()
        elif args.backend == "vllm":
            from predictor.backends.vllm import import_vllm

            import_vllm()
    except RuntimeError as error:
        return str(error)
    return None


def _use_engine_batching(model, task, args) -> None:
    """vLLM batches continuously by itself: its requests skip the dynamic batcher."""
    if args.backend != "vllm":
        return
    from predictor import metrics
    from predictor.backends.vllm import EngineSubmitter

    model.batcher = EngineSubmitter(
        task,
        args.max_queue_size,
        on_batch=model._observe_batch,
        on_depth=metrics.QUEUE_DEPTH.labels(**model.labels).set,
        on_device_failure=model._device_failed,
    )


class _StartupError(Exception):
    """A reason not to start, reported as one line and exit code 2."""


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)

    from predictor.logs import setup_logging

    setup_logging(args.configure_logging, args.log_config_file, args.log_format)
    try:
        if args.workers != 1:
            raise _StartupError("--workers must be 1: one process owns the accelerator; scale with replicas instead")
        if not args.model_name:
            raise _StartupError("--model_name is required")
        device = _detect_device(args)
        task_name, task = _load_task(args, device)
    except _StartupError as error:
        return _fail(str(error))
    model = _build_model(args, task_name, task, device)
    server = _build_server(args, task_name, model)

    def load_failed(error: BaseException) -> None:
        logger.error("loading model %s failed: %s", args.model_name, error, exc_info=error)
        logging.shutdown()
        os._exit(1)  # the pod restarts and its events show the error

    model.load_in_background(load_failed)
    server.start([])  # the model is registered already; it reports ready once warmed up
    return _exit_after_serving(model)


def _parse_args(argv: list[str] | None):
    parser = build_parser()
    parser.add_argument(
        "--log_format",
        choices=("text", "json"),
        default=os.environ.get("LOG_FORMAT", "text"),
        help="Log records as text (kserve's format) or one JSON object per line.",
    )
    return parser.parse_args(argv)


def _detect_device(args):
    """The device to serve on (published as predictor_device_info), its SDK checked for Neuron."""
    from predictor import metrics
    from predictor.device import DeviceUnavailableError, detect_device

    try:
        device = detect_device(args.device)
    except (DeviceUnavailableError, ValueError) as error:
        raise _StartupError(str(error)) from None
    logger.info("device: %s", device.describe())
    metrics.DEVICE_INFO.info(
        {
            "kind": device.kind,
            "count": str(device.count),
            "names": ";".join(device.names),
            "requested": device.requested,
        }
    )

    if device.kind == "neuron":
        from predictor.backends.neuron import NeuronSDKMissingError, import_optimum_neuron

        try:
            import_optimum_neuron()
        except NeuronSDKMissingError as error:
            raise _StartupError(str(error)) from None
    return device


def _load_task(args, device):
    """Fetch the model, work out its task and backend, and build the task (not loaded yet)."""
    from predictor.backends import task_factory
    from predictor.storage import ModelSourceError, prepare_model_dir, weights_variant
    from predictor.tasks import UnknownTaskError, infer_task, task_class
    from predictor.tasks.base import ServingLimits

    variant = weights_variant(device.kind, args.dtype)  # the loaders pick the same (predictor.storage)
    try:
        model_dir = prepare_model_dir(
            args.model_dir, args.model_id, args.model_revision, variant=variant, neuron=device.kind == "neuron"
        )
        task_name = infer_task(model_dir) if args.task == "auto" else args.task
        build_task = task_factory(task_name)
    except (ModelSourceError, UnknownTaskError) as error:
        raise _StartupError(str(error)) from None
    logger.info("serving task %s from %s as model %r", task_name, model_dir, args.model_name)
    if args.max_batch_size is None:
        args.max_batch_size = task_class(task_name).default_max_batch_size
        logger.info("max_batch_size: %d (the task's default; --max_batch_size overrides)", args.max_batch_size)
    if args.max_batch_size < 1:
        raise _StartupError(f"--max_batch_size must be at least 1, got {args.max_batch_size}")
    if task_name == "text-generation":
        error = _check_backend(str(model_dir), device.kind, args)
        if error:
            raise _StartupError(error)

    limits = ServingLimits(
        max_batch_size=args.max_batch_size,
        max_height=args.max_height,
        max_width=args.max_width,
        default_height=args.default_height,
        default_width=args.default_width,
        default_steps=args.default_steps,
        max_steps=args.max_steps,
    )
    options = {
        "dtype": args.dtype,
        "torch_compile": args.torch_compile,
        "backend": args.backend,  # resolved by _check_backend
        "threads": args.threads,
        "context_length": args.context_length,
        "max_batch_size": args.max_batch_size,
    }
    return task_name, build_task(str(model_dir), device, limits, options)


def _build_model(args, task_name: str, task, device):
    from predictor.model import PredictorModel

    model_class = PredictorModel
    if task_name == "text-generation":  # also serves the OpenAI completions and chat completions
        from predictor.openai_model import OpenAITextGenerationModel

        model_class = OpenAITextGenerationModel
    model = model_class(
        args.model_name,
        task,
        device,
        max_batch_size=args.max_batch_size,
        batch_wait_ms=args.batch_wait_ms,
        max_queue_size=args.max_queue_size,
        warmup=args.warmup,
        batch_deadline_s=args.batch_deadline_s,
    )
    if task_name == "text-generation":
        _use_engine_batching(model, task, args)
    model.enable_latency_logging = args.enable_latency_logging
    return model


def _build_server(args, task_name: str, model):
    """KServe's model server with the runtime's routes, error handling and lifecycle, the model registered."""
    from predictor.http_lifecycle import install_lifecycle_middleware
    from predictor.lifecycle import LifecycleModelServer
    from predictor.server import install_error_handlers

    install_error_handlers()
    from predictor.rest_requests import install_rest_request_handling

    install_rest_request_handling(args.max_request_bytes)
    if task_name == "text-generation":
        from predictor.openai_model import install_openai_routes

        install_openai_routes(model)
    install_lifecycle_middleware(model.lifecycle, model.name)
    server = LifecycleModelServer(
        lifecycle=model.lifecycle,
        served_model_names=[model.name],
        drain_timeout_s=args.drain_timeout_s,
        enable_repository_api=args.enable_repository_api,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        workers=1,
        max_threads=args.max_threads,
        max_asyncio_workers=args.max_asyncio_workers,
        enable_grpc=args.enable_grpc,
        enable_docs_url=args.enable_docs_url,
        enable_latency_logging=args.enable_latency_logging,
        access_log_format=args.access_log_format,
        event_loop=args.event_loop,
        timeout_keep_alive=args.timeout_keep_alive,
    )
    server.register_model(model)
    return server


def _exit_after_serving(model) -> int:
    """The servers have stopped (a drain, docs/lifecycle.md). A thread still inside a device call
    (a load in progress, a wedged call) would keep the interpreter from exiting: leave without it."""
    if model.device_busy:
        logger.warning("exiting while the inference thread is still inside a device call")
        logging.shutdown()
        os._exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
