"""The Neuron backends' contract with optimum-neuron, against a fake ``optimum.neuron`` module.

optimum-neuron cannot be installed beside this runtime (it pins an older transformers and needs
torch-neuronx), so these tests inject a stand-in and assert what is loaded from where and what
the compiled (static-shape) models are called with.
"""

from __future__ import annotations

import json
import math
import sys
import types

import pytest
import torch

from modelbuild.tiny_models import build
from predictor.device import DeviceInfo
from predictor.tasks.base import ServingLimits
from tests.tasks.helpers import png

NEURON = DeviceInfo(kind="neuron", count=1, names=("neuron0",), requested="neuron")


class FakeCausalLM:
    """Greedy stand-in: each row writes 'a', 'b', 'c', ... calling the stopping criteria per step."""

    loaded_from: list[str] = []
    calls: list[dict] = []
    report_steps = True

    def __init__(self, model_dir):
        from transformers import AutoConfig, GenerationConfig

        self.config = AutoConfig.from_pretrained(model_dir)
        self.generation_config = GenerationConfig.from_pretrained(model_dir)
        from transformers import AutoTokenizer

        self.letters = AutoTokenizer.from_pretrained(model_dir).convert_tokens_to_ids(list("abcdefghijklmnop"))

    @classmethod
    def from_pretrained(cls, model_dir, **kwargs):
        cls.loaded_from.append(str(model_dir))
        assert not kwargs.get("export"), "serving must load precompiled artefacts, never export"
        return cls(model_dir)

    def generate(self, input_ids, attention_mask, generation_config, stopping_criteria):
        type(self).calls.append(
            {"shape": tuple(input_ids.shape), "mask": attention_mask.clone(), "config": generation_config}
        )
        sequences = input_ids
        for step in range(generation_config.max_new_tokens):
            column = torch.full((input_ids.shape[0], 1), self.letters[step], dtype=torch.long)
            sequences = torch.cat([sequences, column], dim=1)
            if self.report_steps and stopping_criteria(sequences, None).all():
                break
        return sequences


class FakeClassifier:
    """Returns logits that favour label (row index % labels); records the features it was called with."""

    loaded_from: list[str] = []
    calls: list[dict] = []

    def __init__(self, model_dir):
        from transformers import AutoConfig

        self.config = AutoConfig.from_pretrained(model_dir)

    @classmethod
    def from_pretrained(cls, model_dir, **kwargs):
        cls.loaded_from.append(str(model_dir))
        return cls(model_dir)

    def __call__(self, **features):
        type(self).calls.append({key: tuple(value.shape) for key, value in features.items()})
        batch = next(iter(features.values())).shape[0]
        labels = len(self.config.id2label)
        logits = torch.zeros(batch, labels)
        for row in range(batch):
            logits[row, row % labels] = 5.0
        return types.SimpleNamespace(logits=logits)


@pytest.fixture
def fake_sdk(monkeypatch):
    module = types.ModuleType("optimum.neuron")
    module.NeuronModelForCausalLM = type("NeuronModelForCausalLM", (FakeCausalLM,), {"loaded_from": [], "calls": []})
    module.NeuronModelForSequenceClassification = type(
        "NeuronModelForSequenceClassification", (FakeClassifier,), {"loaded_from": [], "calls": []}
    )
    module.NeuronModelForImageClassification = type(
        "NeuronModelForImageClassification", (FakeClassifier,), {"loaded_from": [], "calls": []}
    )
    monkeypatch.setitem(sys.modules, "optimum.neuron", module)
    return module


def test_missing_sdk_is_a_clear_error(monkeypatch):
    from predictor.backends.neuron import NeuronSDKMissingError
    from predictor.backends.neuron_transformers import NeuronCausalLMBackend

    monkeypatch.setitem(sys.modules, "optimum.neuron", None)  # as if not installed
    with pytest.raises(NeuronSDKMissingError, match="AWS Neuron SDK"):
        NeuronCausalLMBackend("/nowhere")


@pytest.fixture(scope="module")
def neuron_llm_dir(tmp_path_factory):
    directory = build("text-generation", tmp_path_factory.mktemp("neuron-llm"))
    (directory / "neuron_config.json").write_text(json.dumps({"batch_size": 2, "sequence_length": 64}))
    return directory


def _llm_task(model_dir):
    from predictor.backends import task_factory

    task = task_factory("text-generation")(str(model_dir), NEURON, ServingLimits(max_batch_size=4), {})
    task.load()
    return task


def test_causal_lm_loads_precompiled_and_pads_the_static_batch(fake_sdk, neuron_llm_dir):
    task = _llm_task(neuron_llm_dir)
    sdk_class = fake_sdk.NeuronModelForCausalLM
    assert sdk_class.loaded_from == [str(neuron_llm_dir)]
    assert task.backend.context_length == 64 and task.backend.batch_size == 2

    pieces: dict[int, list[str]] = {0: [], 1: [], 2: []}
    items = task.items(
        ["one", "second prompt", "3"],
        {"max_tokens": 5, "stop": "cd"},
        sink_for=lambda index: pieces[index].append,
    )
    items[2].max_tokens = 2
    results = task.run_batch(items)

    # 3 rows in chunks of the compiled batch size 2: the second chunk is padded with a repeat.
    assert [call["shape"][0] for call in sdk_class.calls] == [2, 2]
    first = sdk_class.calls[0]
    assert first["mask"][0].tolist()[: first["shape"][1] - 4] == [0] * (first["shape"][1] - 4)  # left padding
    assert first["config"].max_new_tokens == 5 and first["config"].do_sample is False
    assert [(r.text, r.finish_reason) for r in results] == [("ab", "stop"), ("ab", "stop"), ("ab", "length")]
    assert {index: "".join(p) for index, p in pieces.items()} == {0: "ab", 1: "ab", 2: "ab"}


def test_causal_lm_without_per_step_criteria_catches_up(fake_sdk, neuron_llm_dir):
    fake_sdk.NeuronModelForCausalLM.report_steps = False
    task = _llm_task(neuron_llm_dir)
    results = task.run_batch(task.items(["x"], {"max_tokens": 4, "temperature": 0.7, "top_p": 0.5, "seed": 3}))
    assert results[0].text == "abcd" and results[0].finish_reason == "length"
    config = fake_sdk.NeuronModelForCausalLM.calls[-1]["config"]
    assert (config.do_sample, config.temperature, config.top_p) == (True, 0.7, 0.5)


def test_causal_lm_context_is_the_compiled_sequence_length(fake_sdk, neuron_llm_dir):
    from kserve.errors import InvalidInput

    task = _llm_task(neuron_llm_dir)
    with pytest.raises(InvalidInput, match="context of 64 tokens"):
        task.items(["hello"], {"max_tokens": 60})


def test_text_classifier_pads_to_compiled_shapes(fake_sdk, tmp_path):
    from predictor.backends import task_factory

    directory = build("text-classification", tmp_path / "bert")
    config = json.loads((directory / "config.json").read_text())
    config["neuron"] = {"static_batch_size": 2, "static_sequence_length": 16}
    (directory / "config.json").write_text(json.dumps(config))

    task = task_factory("text-classification")(str(directory), NEURON, ServingLimits(), {})
    task.load()
    sdk_class = fake_sdk.NeuronModelForSequenceClassification
    assert sdk_class.loaded_from == [str(directory)]
    items = task.parse_v1({"instances": ["good", "bad", "hello world"], "parameters": {"top_k": 2}})
    results = task.run_batch(items)
    assert [call["input_ids"] for call in sdk_class.calls] == [(2, 16), (2, 16)]
    assert [r.labels[0] for r in results] == ["NEGATIVE", "POSITIVE", "NEGATIVE"]
    assert all(len(r.scores) == 2 and r.scores[0] > r.scores[1] for r in results)


def test_image_classifier_resizes_to_compiled_size(fake_sdk, tmp_path):
    from predictor.backends import task_factory
    from predictor.tasks.images import read_image

    directory = build("image-classification", tmp_path / "vit")
    config = json.loads((directory / "config.json").read_text())
    config["neuron"] = {"static_batch_size": 1, "static_height": 32, "static_width": 32}
    (directory / "config.json").write_text(json.dumps(config))

    task = task_factory("image-classification")(str(directory), NEURON, ServingLimits(), {})
    task.load()
    from predictor.tasks.classification import ClassifyItem

    results = task.run_batch([ClassifyItem(read_image(png(50, 20, i), "x"), 3) for i in range(2)])
    calls = fake_sdk.NeuronModelForImageClassification.calls
    assert calls == [{"pixel_values": (1, 3, 32, 32)}] * 2
    assert [r.labels[0] for r in results] == ["cat", "cat"]  # each chunk of one is row 0


def test_a_single_logit_classifier_is_scored_with_a_sigmoid_as_transformers_scores_it(fake_sdk, tmp_path):
    from predictor.backends import task_factory

    directory = build("text-classification", tmp_path / "bert")
    config = json.loads((directory / "config.json").read_text())
    config.update(id2label={"0": "TOXIC"}, label2id={"TOXIC": 0}, neuron={"static_batch_size": 1})
    (directory / "config.json").write_text(json.dumps(config))

    task = task_factory("text-classification")(str(directory), NEURON, ServingLimits(), {})
    task.load()
    (result,) = task.run_batch(task.parse_v1({"instances": ["you fool"]}))
    assert result.labels == ("TOXIC",)
    assert result.scores[0] == pytest.approx(1 / (1 + math.exp(-5.0)))  # the fake's logit 5; a softmax gives 1.0
