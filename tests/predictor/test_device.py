"""Device detection: Neuron, then CUDA, then CPU; explicit requests are honoured or refused clearly."""

import pytest

from predictor.args import build_parser
from predictor.device import DeviceUnavailableError, Probes, detect_device


def probes(neuron=(), cuda=(), cpu=("x86_64 x2",)):
    return Probes(neuron=lambda: list(neuron), cuda=lambda: list(cuda), cpu=lambda: list(cpu))


def test_auto_prefers_neuron_over_cuda_and_cpu():
    info = detect_device("auto", probes(neuron=["neuron0", "neuron1"], cuda=["NVIDIA A10G"]))
    assert (info.kind, info.count, info.names) == ("neuron", 2, ("neuron0", "neuron1"))


def test_auto_picks_cuda_when_no_neuron_device():
    info = detect_device("auto", probes(cuda=["NVIDIA L4"]))
    assert info.kind == "cuda" and info.torch_device == "cuda" and info.names == ("NVIDIA L4",)


def test_auto_falls_back_to_cpu():
    info = detect_device("auto", probes())
    assert info.kind == "cpu" and info.torch_device == "cpu" and info.count == 1


def test_explicit_cpu_overrides_present_accelerators():
    assert detect_device("cpu", probes(neuron=["neuron0"], cuda=["H100"])).kind == "cpu"


@pytest.mark.parametrize("kind, needle", [("neuron", "Neuron SDK"), ("cuda", "nvidia.com/gpu")])
def test_requested_device_that_is_absent_is_a_clear_error(kind, needle):
    with pytest.raises(DeviceUnavailableError, match=needle):
        detect_device(kind, probes())


def test_unknown_device_name_is_rejected():
    with pytest.raises(ValueError, match="unknown device"):
        detect_device("tpu", probes())


def test_describe_names_the_devices_found():
    text = detect_device("auto", probes(cuda=["NVIDIA A10G"])).describe()
    assert "cuda" in text and "NVIDIA A10G" in text and "1 device" in text


def test_device_env_var_sets_the_default_and_the_flag_wins(monkeypatch):
    monkeypatch.setenv("PREDICTOR_DEVICE", "cpu")
    assert build_parser().parse_args([]).device == "cpu"
    assert build_parser().parse_args(["--device", "cuda"]).device == "cuda"


def test_parser_keeps_kserve_arguments():
    args = build_parser().parse_args(
        ["--model_name", "sd", "--http_port", "9000", "--grpc_port", "9001", "--workers", "1"]
    )
    assert (args.model_name, args.http_port, args.grpc_port, args.model_dir) == ("sd", 9000, 9001, "/mnt/models")
