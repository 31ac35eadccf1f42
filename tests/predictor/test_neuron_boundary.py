"""The Neuron path without the Neuron SDK: its contract with optimum.neuron, and clean failures."""

from __future__ import annotations

import json
import subprocess
import sys
import types

import pytest

from predictor.backends import neuron
from predictor.backends.neuron import NeuronImageBackend, NeuronSDKMissingError, compiled_shapes
from predictor.tasks.text_to_image import ImageParams


class FakeImage:
    def __init__(self, prompt):
        self.prompt = prompt


class FakeNeuronPipeline:
    """Records how optimum.neuron's pipeline is loaded and called."""

    loaded_from: list[str] = []
    calls: list[dict] = []

    @classmethod
    def from_pretrained(cls, model_dir, **kwargs):
        cls.loaded_from.append(model_dir)
        assert not kwargs.get("export"), "serving must load precompiled artefacts, never compile"
        return cls()

    def __call__(self, **kwargs):
        self.calls.append(kwargs)
        return types.SimpleNamespace(images=[FakeImage(p) for p in kwargs["prompt"]])


@pytest.fixture
def compiled_dir(tmp_path):
    (tmp_path / "unet").mkdir()
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "NeuronStableDiffusionPipeline"}))
    (tmp_path / "unet" / "config.json").write_text(json.dumps(
        {"neuron": {"static_batch_size": 2, "static_height": 64, "static_width": 64}}))
    FakeNeuronPipeline.loaded_from, FakeNeuronPipeline.calls = [], []
    return tmp_path


def test_compiled_shapes_are_read_from_the_unet_config_in_pixels(compiled_dir):
    assert compiled_shapes(compiled_dir) == {"batch_size": 2, "height": 512, "width": 512}


def test_backend_loads_the_precompiled_pipeline_and_reports_its_fixed_size(compiled_dir):
    sdk = types.SimpleNamespace(NeuronStableDiffusionPipeline=FakeNeuronPipeline)
    backend = NeuronImageBackend(str(compiled_dir), sdk=sdk)
    assert FakeNeuronPipeline.loaded_from == [str(compiled_dir)]
    assert backend.fixed_size == (512, 512) and backend.compiled_batch == 2


def test_backend_runs_static_batches_padding_the_last_one(compiled_dir):
    sdk = types.SimpleNamespace(NeuronStableDiffusionPipeline=FakeNeuronPipeline)
    backend = NeuronImageBackend(str(compiled_dir), sdk=sdk)
    images = backend.generate(["a", "b", "c"], ["", "", ""], ImageParams(20, 7.5, 512, 512), [1, 2, 3])
    assert [image.prompt for image in images] == ["a", "b", "c"]
    assert [call["prompt"] for call in FakeNeuronPipeline.calls] == [["a", "b"], ["c", "c"]]
    assert all(call["num_inference_steps"] == 20 and call["guidance_scale"] == 7.5 for call in FakeNeuronPipeline.calls)
    assert all(len(call["generator"]) == 2 for call in FakeNeuronPipeline.calls)


def test_missing_sdk_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "optimum.neuron", None)  # import fails as if not installed
    with pytest.raises(NeuronSDKMissingError, match="needs the AWS Neuron SDK"):
        neuron.import_optimum_neuron()


def test_cpu_serving_never_imports_the_neuron_sdk(tiny_model):
    code = (
        "import sys; from predictor.device import detect_device; from predictor.backends import task_factory;"
        "from predictor.tasks.base import ServingLimits;"
        f"t = task_factory('text-to-image')({str(tiny_model)!r}, detect_device('cpu'), ServingLimits(), {{}}); t.load();"
        "print(sorted(m for m in sys.modules if m.startswith(('optimum', 'torch_neuronx', 'torch_xla'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("argv, message", [
    (["--device", "neuron"], "Neuron"),
    (["--device", "cuda"], "no CUDA device"),
    (["--workers", "2"], "--workers must be 1"),
    (["--model_dir", "/nonexistent"], "holds no model"),
    (["--max_batch_size", "0"], "--max_batch_size must be at least 1, got 0"),
])
def test_server_refuses_to_start_with_a_clear_message(tiny_model, argv, message):
    command = [sys.executable, "-m", "predictor", "--model_name", "sd", "--model_dir", str(tiny_model),
               "--http_port", "0", "--grpc_port", "0", *argv]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 2, completed.stderr[-2000:]
    assert message in completed.stderr
