"""Request parameters are pydantic models: one declaration per field, errors naming the field path."""

from __future__ import annotations

import pytest
from kserve.errors import InvalidInput

from predictor.tasks.classification import ClassifyParameters
from predictor.tasks.detection import DetectParameters
from predictor.tasks.params import MAX_SEED, seed_context
from predictor.tasks.text_generation import GenerationParameters
from predictor.tasks.text_to_image import ImageParameters

MODELS = (ImageParameters, ClassifyParameters, DetectParameters, GenerationParameters)
IMAGE_LIMITS = {
    "default_steps": 25,
    "max_steps": 50,
    "default_height": 64,
    "max_height": 256,
    "default_width": 64,
    "max_width": 256,
}


@pytest.mark.parametrize("model", MODELS, ids=lambda model: model.__name__)
def test_every_parameter_is_documented_where_it_is_declared(model):
    undocumented = [name for name, field in model.model_fields.items() if not field.description]
    assert undocumented == []


def test_server_defaults_come_from_the_limits_and_are_checked_like_given_values():
    parsed = ImageParameters.parse({}, **IMAGE_LIMITS, **seed_context(1))
    assert (parsed.num_inference_steps, parsed.height, parsed.width, parsed.seed) == (25, 64, 64, None)
    # a --default_steps above --max_steps is refused the same way a request's value would be
    with pytest.raises(InvalidInput, match="num_inference_steps must be between 1 and 50, got 60"):
        ImageParameters.parse({}, **{**IMAGE_LIMITS, "default_steps": 60}, **seed_context(1))


def test_every_wrong_parameter_is_named_in_one_answer():
    with pytest.raises(InvalidInput) as caught:
        ImageParameters.parse(
            {"height": 100, "width": 1024, "guidance_scale": "lots"}, "instances[2]", **IMAGE_LIMITS, **seed_context(1)
        )
    message = str(caught.value)
    assert "instances[2]: guidance_scale must be a number, got 'lots'" in message
    assert "instances[2]: height must be a multiple of 8, got 100" in message
    assert "instances[2]: width must be between 8 and 256, got 1024" in message


def test_nested_values_are_named_by_their_path():
    with pytest.raises(InvalidInput, match=r"^parameter stop\[1\] is empty$"):
        GenerationParameters.parse({"stop": ["end", ""]})


def test_a_request_of_n_elements_leaves_room_for_n_seeds():
    assert GenerationParameters.parse({"seed": MAX_SEED - 3}, **seed_context(4)).seed == MAX_SEED - 3
    with pytest.raises(InvalidInput, match=f"seed must be between 0 and {MAX_SEED - 4}"):
        GenerationParameters.parse({"seed": MAX_SEED - 3}, **seed_context(5))


def test_bounds_from_the_model_are_context_values():
    assert ClassifyParameters.parse({"top_k": "3"}, label_count=3).top_k == 3
    with pytest.raises(InvalidInput, match="parameter top_k must be between 1 and 2, got 3"):
        ClassifyParameters.parse({"top_k": 3}, label_count=2)


def test_unknown_names_are_refused_before_any_value_is_read():
    with pytest.raises(
        InvalidInput, match=r"unknown parameter\(s\) \['treshold'\]; supported: \['threshold', 'top_k'\]"
    ):
        DetectParameters.parse({"treshold": object()})
