"""The contract between the model server and a task (text-to-image, and more later).

The server owns protocol plumbing, batching and metrics; a task owns what its tensors mean:
how to read a request into work items, which items can share one pipeline call, how to run a
batch on the device, and how to write results back. Adding a task never touches the server.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:  # kserve only for hints: predictor.tasks imports without kserve (tools reuse it)
    from kserve.protocol.infer_type import InferOutput, InferRequest

    from predictor.device import DeviceInfo

#: ``load_backend(task_name, model_dir, device_kind, options)``: what runs a task (``predictor.backends``).
BackendLoader = Callable[[str, str, str, dict[str, Any]], Any]


@dataclass(frozen=True)
class ServingLimits:
    """Request limits from the command line, shared by all tasks."""

    max_batch_size: int = 4
    max_height: int = 1024
    max_width: int = 1024
    default_height: int | None = None
    default_width: int | None = None
    default_steps: int = 25
    max_steps: int = 150


class Task(ABC):
    """One served task. ``load`` and ``run_batch`` block and run on the inference thread."""

    name: str = ""
    #: ``--max_batch_size`` when none is given: what one device call holds without memory to spare
    #: on a typical model of the task (a batch of 512x512 images needs GBs of activations; a batch
    #: of 32 short texts a few MB, and under concurrent load it costs about what one text does).
    default_max_batch_size: ClassVar[int] = 4

    def __init__(
        self,
        model_dir: str,
        device: DeviceInfo,
        limits: ServingLimits,
        options: dict[str, Any],
        *,
        backend: Any = None,
        load_backend: BackendLoader | None = None,
    ):
        """``backend`` runs the task (tests pass one); else ``load`` gets it from ``load_backend``,
        which ``predictor.backends.task_factory`` supplies: tasks never import a backend."""
        self.model_dir = model_dir
        self.device = device
        self.limits = limits
        self.options = options
        self.backend = backend
        self._load_backend = load_backend

    async def off_loop(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run request parsing for this task; tasks whose parsing is slow (tokenizing long prompts)
        override it to run on their own thread, so the event loop keeps answering health checks."""
        return function(*args, **kwargs)

    def encodes_inline(self, results: Sequence[Any]) -> bool:
        """True when encoding these results costs less than the two thread hops of the encoder pool
        (labels, scores, a small image): the model then encodes them on the event loop."""
        return False

    def warmup_batches(self) -> list[list[Any]]:
        """Every batch to run before the model reports ready (one per shape a compiled model accepts)."""
        return [self.warmup_items()]

    def load(self) -> None:
        """Load weights onto the device (blocking): the backend, unless one was given."""
        if self.backend is None:
            if self._load_backend is None:
                raise RuntimeError(f"{self.name}: no backend; build the task with predictor.backends.task_factory")
            self.backend = self._load_backend(self.name, self.model_dir, self.device.kind, self.options)
        self.loaded()

    def loaded(self) -> None:
        """Called once the backend is there (tasks log what they serve)."""
        return None

    @abstractmethod
    def input_types(self) -> list[dict]:
        """v2 metadata of the inputs, as KServe's ``get_input_types`` returns it."""

    @abstractmethod
    def output_types(self) -> list[dict]:
        """v2 metadata of the outputs."""

    @abstractmethod
    def parse_v2(self, request: InferRequest) -> list[Any]:
        """Work items of a v2 request; raises ``kserve.errors.InvalidInput`` naming what is wrong."""

    @abstractmethod
    def parse_v1(self, body: dict) -> list[Any]:
        """Work items of a v1 ``{"instances": [...]}`` body."""

    @abstractmethod
    def batch_key(self, item: Any) -> Hashable:
        """Items with equal keys may share one pipeline call."""

    @abstractmethod
    def run_batch(self, items: Sequence[Any]) -> list[Any]:
        """Run one pipeline call for the items (blocking); one result per item, in order."""

    @abstractmethod
    def v2_outputs(self, results: Sequence[Any], binary: bool) -> list[InferOutput]:
        """v2 output tensors for one request's results."""

    @abstractmethod
    def v1_predictions(self, results: Sequence[Any]) -> list[dict]:
        """v1 ``predictions`` entries for one request's results."""

    @abstractmethod
    def warmup_items(self) -> list[Any]:
        """A small synthetic request run before the model reports ready."""

    def batch_cost(self, items: Sequence[Any]) -> float:
        """Relative device work of one call for ``items`` (any unit, compared only with the warm-up's).

        The deadline of a device call is the warm-up call's duration scaled by this ratio
        (``predictor.device_health.derived_deadline``). Tasks whose calls vary (steps, image size,
        tokens) override it.
        """
        return float(len(items))
