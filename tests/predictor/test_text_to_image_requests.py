"""Reading v1/v2 text-to-image requests: what is accepted, and the 400 message for what is not."""

import struct

import pytest
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferInput, InferRequest

from predictor.device import DeviceInfo
from predictor.tasks.base import ServingLimits
from predictor.tasks.text_to_image import ImageParams, TextToImageTask


class StubBackend:
    """Only the shape facts the request parser needs (no pipeline runs in these tests)."""

    def __init__(self, fixed_size=None):
        self.fixed_size = fixed_size
        self.default_size = fixed_size or (64, 64)


def task(fixed_size=None, **limits):
    settings = dict(max_batch_size=4, max_height=256, max_width=256, default_steps=2, max_steps=50)
    settings.update(limits)
    return TextToImageTask("unused", DeviceInfo("cpu", 1), ServingLimits(**settings), {},
                           backend=StubBackend(fixed_size))


def v2(prompts=("a cat",), datatype="BYTES", shape=None, parameters=None, negative=None):
    inputs = [InferInput("prompt", shape or [len(prompts)], datatype, list(prompts))]
    if negative is not None:
        inputs.append(InferInput("negative_prompt", [len(negative)], "BYTES", list(negative)))
    return InferRequest("sd", inputs, parameters=parameters)


def test_v2_defaults_come_from_the_command_line_and_the_model():
    (item,) = task().parse_v2(v2())
    assert item.prompt == "a cat" and item.negative_prompt == ""
    assert item.params == ImageParams(num_inference_steps=2, guidance_scale=7.5, height=64, width=64)


def test_v2_parameters_are_read_and_seed_is_per_item():
    items = task().parse_v2(v2(("a", "b"), parameters={"num_inference_steps": 3, "guidance_scale": 5,
                                                       "height": 128, "width": 96, "seed": 42}))
    assert [item.seed for item in items] == [42, 43]
    assert items[0].params == ImageParams(3, 5.0, 128, 96)


def test_same_seed_gives_same_items():
    assert task().parse_v2(v2(parameters={"seed": 7})) == task().parse_v2(v2(parameters={"seed": 7}))


def test_negative_prompts_pair_with_prompts():
    items = task().parse_v2(v2(("a", "b"), negative=("blurry", "dark")))
    assert [item.negative_prompt for item in items] == ["blurry", "dark"]


def test_binary_prompts_are_decoded_as_utf8():
    """gRPC and the binary extension carry BYTES as <uint32 length><bytes> in raw contents."""
    request = InferRequest("sd", [InferInput("prompt", [1], "BYTES", None)])
    encoded = "ünïcode".encode()
    request.inputs[0]._raw_data = struct.pack("<I", len(encoded)) + encoded
    assert task().parse_v2(request)[0].prompt == "ünïcode"


def test_truncated_binary_prompts_are_invalid_input_not_a_crash():
    request = InferRequest("sd", [InferInput("prompt", [1], "BYTES", None)])
    request.inputs[0]._raw_data = struct.pack("<I", 1000) + b"short"
    with pytest.raises(InvalidInput, match="prompt"):
        task().parse_v2(request)


@pytest.mark.parametrize("request_, message", [
    (InferRequest("sd", []), "'prompt' is required"),
    (v2(prompts=()), "empty"),
    (v2(prompts=("",)), "prompt[0] is empty"),
    (v2(prompts=("   ",)), "prompt[0] is empty"),
    (v2(datatype="FP32", prompts=(1.0,)), "datatype BYTES"),
    (v2(shape=[1, 2], prompts=("a", "b")), "shape [N]"),
    (v2(shape=[3], prompts=("a",)), "does not match shape"),
    (v2(prompts=("a",) * 5), "exceed the batch limit of 4"),
    (v2(parameters={"height": 100}), "height must be a multiple of 8"),
    (v2(parameters={"width": 512}), "width must be between 8 and 256"),
    (v2(parameters={"num_inference_steps": 0}), "num_inference_steps must be between 1 and 50"),
    (v2(parameters={"num_inference_steps": 2.5}), "num_inference_steps must be an integer"),
    (v2(parameters={"guidance_scale": -1}), "guidance_scale must be between"),
    (v2(parameters={"guidance_scale": "lots"}), "guidance_scale must be a number"),
    (v2(parameters={"seed": -3}), "seed must be between"),
    (v2(negative=("a", "b")), "must match 'prompt'"),
    (InferRequest("sd", [InferInput("prompt", [1], "BYTES", ["a"]), InferInput("extra", [1], "BYTES", ["b"])]),
     "unknown input"),
])
def test_v2_bad_input_is_rejected_with_a_message_naming_the_problem(request_, message):
    with pytest.raises(InvalidInput) as error:
        task().parse_v2(request_)
    assert message in str(error.value)


def test_compiled_models_accept_only_their_compiled_size():
    compiled = task(fixed_size=(512, 512), max_height=1024, max_width=1024)
    assert compiled.parse_v2(v2())[0].params.height == 512
    with pytest.raises(InvalidInput, match="compiled for 512x512"):
        compiled.parse_v2(v2(parameters={"height": 256, "width": 256}))


def test_v1_instances_carry_their_own_parameters():
    items = task().parse_v1({"instances": [{"prompt": "a", "seed": 1, "num_inference_steps": 3}, "b"],
                             "parameters": {"height": 32}})
    assert [item.prompt for item in items] == ["a", "b"]
    assert items[0].params == ImageParams(3, 7.5, 32, 64) and items[0].seed == 1
    assert items[1].params == ImageParams(2, 7.5, 32, 64)


@pytest.mark.parametrize("body, message", [
    ({}, "instances"),
    ({"instances": []}, "at least one instance"),
    ({"instances": [{"negative_prompt": "x"}]}, "instances[0].prompt is required"),
    ({"instances": [{"prompt": 3}]}, "instances[0].prompt must be a string"),
    ({"instances": [{"prompt": "a", "colour": "red"}]}, "unknown field"),
    ({"instances": [{"prompt": "a"}] * 5}, "batch limit"),
    ({"instances": [{"prompt": "a", "height": 12}]}, "instances[0]: height must be a multiple of 8"),
])
def test_v1_bad_input_is_rejected_with_a_message_naming_the_problem(body, message):
    with pytest.raises(InvalidInput) as error:
        task().parse_v1(body)
    assert message in str(error.value)
