"""Accelerator detection: AWS Neuron, then NVIDIA CUDA, then CPU.

Detection never imports the Neuron SDK (importing ``torch_neuronx`` initialises the runtime);
it checks that the SDK is installed and that Neuron devices are exposed to the container.
The probes are injectable so the decision logic is testable on any machine.
"""

from __future__ import annotations

import glob
import importlib.util
import logging
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

KINDS = ("neuron", "cuda", "cpu")


class DeviceUnavailableError(RuntimeError):
    """The requested accelerator is not usable in this process."""


@dataclass(frozen=True)
class DeviceInfo:
    kind: str  # "neuron" | "cuda" | "cpu"
    count: int
    names: tuple[str, ...] = field(default_factory=tuple)
    requested: str = "auto"

    @property
    def torch_device(self) -> str:
        """The torch device string pipelines move to (Neuron pipelines manage their own)."""
        return {"cuda": "cuda", "cpu": "cpu"}.get(self.kind, "cpu")

    def describe(self) -> str:
        names = ", ".join(self.names) if self.names else "-"
        return f"{self.kind} (requested {self.requested}): {self.count} device(s): {names}"


@dataclass(frozen=True)
class Probes:
    """What the machine offers; each returns a list of device names (empty when absent)."""

    neuron: Callable[[], list[str]]
    cuda: Callable[[], list[str]]
    cpu: Callable[[], list[str]]


def probe_neuron() -> list[str]:
    """Neuron devices usable from here: SDK installed and /dev/neuron* present."""
    if importlib.util.find_spec("torch_neuronx") is None and importlib.util.find_spec("torch_xla") is None:
        return []
    return sorted(os.path.basename(path) for path in glob.glob("/dev/neuron[0-9]*"))


def probe_cuda() -> list[str]:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency
        return []
    if not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_name(index) for index in range(torch.cuda.device_count())]


def probe_cpu() -> list[str]:
    name = platform.processor() or platform.machine() or "cpu"
    return [f"{name} x{os.cpu_count() or 1}"]


DEFAULT_PROBES = Probes(neuron=probe_neuron, cuda=probe_cuda, cpu=probe_cpu)


def detect_device(requested: str = "auto", probes: Probes = DEFAULT_PROBES) -> DeviceInfo:
    """Pick the device: the requested one (an error if absent) or the first present of neuron, cuda, cpu."""
    requested = (requested or "auto").lower()
    if requested not in (*KINDS, "auto"):
        raise ValueError(f"unknown device {requested!r}; expected one of auto, {', '.join(KINDS)}")
    candidates = KINDS if requested == "auto" else (requested,)
    for kind in candidates:
        names = getattr(probes, kind)()
        if names:
            if kind == "cpu":
                return DeviceInfo(kind="cpu", count=1, names=tuple(names), requested=requested)
            return DeviceInfo(kind=kind, count=len(names), names=tuple(names), requested=requested)
    hints = {
        "neuron": "no Neuron device found: the Neuron SDK (torch-neuronx) must be installed and /dev/neuron* "
        "exposed (request aws.amazon.com/neuron or aws.amazon.com/neuroncore)",
        "cuda": "no CUDA device found: torch.cuda.is_available() is False (request nvidia.com/gpu and use a "
        "CUDA build of torch)",
    }
    raise DeviceUnavailableError(f"--device {requested}: {hints.get(requested, 'no device found')}")
