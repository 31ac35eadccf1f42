"""--torch_compile: every shape a request can reach is compiled during warm-up, before ready.

torch.compile compiles on first use. A batch size or resolution first seen after the pod reports
ready would compile on the inference thread while clients wait. So a compiled model accepts one
resolution (the default, as a Neuron model does) and warms up every batch size up to
``--max_batch_size`` with and without classifier-free guidance (which doubles the denoiser rows).

The real compile path runs here with a counting torch.compile backend instead of inductor (which
would take minutes on this CPU): every graph dynamo hands to a backend is counted, recompilations
included.
"""

from __future__ import annotations

import pytest
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferInput, InferRequest

from predictor.backends.diffusers import DiffusersBackend
from predictor.device import DeviceInfo
from predictor.tasks.base import ServingLimits
from predictor.tasks.text_to_image import TextToImageTask


def _task(backend, max_batch_size: int) -> TextToImageTask:
    limits = ServingLimits(max_batch_size=max_batch_size, max_height=256, max_width=256, default_steps=2)
    return TextToImageTask("unused", DeviceInfo("cpu", 1), limits, {}, backend=backend)


def _request(count: int, **parameters) -> InferRequest:
    return InferRequest("sd", [InferInput("prompt", [count], "BYTES", ["a cat"] * count)], parameters=parameters)


class ShapeOnlyBackend:
    fixed_size = None
    default_size = (64, 64)
    empty_negative_is_zeros = False

    def __init__(self, compiled: bool):
        self.compiled = compiled


def test_compiled_model_warms_up_every_batch_size_with_and_without_guidance():
    batches = _task(ShapeOnlyBackend(compiled=True), max_batch_size=4).warmup_batches()
    shapes = {(len(batch), batch[0].params.guidance_scale > 1, batch[0].params.height, batch[0].params.width)
              for batch in batches}  # fmt: skip
    assert shapes == {(size, guided, 64, 64) for size in range(1, 5) for guided in (True, False)}
    assert len(batches) == len(shapes)


def test_uncompiled_model_warms_up_once():
    assert len(_task(ShapeOnlyBackend(compiled=False), max_batch_size=4).warmup_batches()) == 1


def test_compiled_model_accepts_only_its_warmed_up_size():
    task = _task(ShapeOnlyBackend(compiled=True), max_batch_size=4)
    assert task.parse_v2(_request(1, height=64, width=64))[0].params.height == 64
    with pytest.raises(InvalidInput, match="compiled for 64x64"):
        task.parse_v2(_request(1, height=128, width=64))
    assert _task(ShapeOnlyBackend(compiled=False), 4).parse_v2(_request(1, height=128))[0].params.height == 128


def test_no_request_compiles_after_the_warm_up(tiny_model):
    graphs: list[int] = []

    def counting_backend(graph_module, example_inputs):
        graphs.append(len(example_inputs))
        return graph_module.forward

    backend = DiffusersBackend(str(tiny_model), "cpu", compile_model=True, compile_backend=counting_backend)
    task = _task(backend, max_batch_size=2)
    for batch in task.warmup_batches():  # what the model runs before it reports ready
        task.run_batch(batch)
    compiled_at_ready = len(graphs)
    assert compiled_at_ready > 0
    for count in (1, 2):
        for guidance in (0.0, 1.0, 3.0, 7.5):
            items = task.parse_v2(_request(count, guidance_scale=guidance, num_inference_steps=3, seed=9))
            task.run_batch(items)
    assert len(graphs) == compiled_at_ready  # nothing compiled while serving
    with pytest.raises(InvalidInput, match="compiled for 64x64"):
        task.parse_v2(_request(1, height=32, width=32))
