"""The real predictor with a device that misbehaves when a prompt asks it to (a test-only entry point).

``python -m tests.predictor.lifecycle_faults <predictor args>`` runs ``predictor.__main__.main``
unchanged, except that the two device calls of the text-to-image task, ``TextToImageTask.load``
and ``TextToImageTask.run_batch``, are wrapped. Everything else (protocols, batching, lifecycle,
signals) is the production code path; only the device misbehaves:

  prompt "hold..."           the call waits until the file $FAULT_GATE_FILE exists (work stays in flight)
  prompt "hang..."           the call never returns (a wedged device)
  prompt "device-assert..."  raises torch.AcceleratorError as a CUDA device-side assert does
  prompt "oom-always..."     raises torch.OutOfMemoryError
  prompt "oom..."            raises torch.OutOfMemoryError when the call holds more than one item
  $FAULT_LOAD_GATE_FILE      ``load`` waits until this file exists (the model stays "loading")
  $FAULT_LOAD_LOG            each ``load`` call appends one line to this file

Each ``run_batch`` call first prints ``FAULT device call: [prompts]`` to the server's log, so a test
can see what reached the device and when a call has started.

The module also holds the test-side launcher, :func:`launch`, which starts it on free loopback ports.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

from tests.predictor.harness import Server, start_server


def _wait_for_file(path: str | None) -> None:
    while path and not Path(path).exists():
        time.sleep(0.02)


def _install_faults() -> None:
    import torch

    from predictor.tasks.text_to_image import TextToImageTask

    real_load, real_run_batch = TextToImageTask.load, TextToImageTask.run_batch

    def load(self) -> None:
        log = os.environ.get("FAULT_LOAD_LOG")
        if log:
            with open(log, "a") as sink:
                sink.write(f"load {os.getpid()}\n")
        _wait_for_file(os.environ.get("FAULT_LOAD_GATE_FILE"))
        real_load(self)

    def run_batch(self, items):
        prompts = [item.prompt for item in items]
        print(f"FAULT device call: {prompts}", flush=True)
        if any(p.startswith("hold") for p in prompts):
            _wait_for_file(os.environ.get("FAULT_GATE_FILE"))
        if any(p.startswith("hang") for p in prompts):
            threading.Event().wait()
        if any(p.startswith("device-assert") for p in prompts):
            raise torch.AcceleratorError("CUDA error: device-side assert triggered")
        if any(p.startswith("oom-always") for p in prompts) or (
            len(items) > 1 and any(p.startswith("oom") for p in prompts)
        ):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_run_batch(self, items)

    TextToImageTask.load = load
    TextToImageTask.run_batch = run_batch


def launch(
    model_dir: Path,
    log_dir: Path,
    *extra: str,
    env: dict[str, str] | None = None,
    wait_ready: bool = True,
    timeout: float = 90,
) -> Server:
    """Start this entry point as the server; wait until the model is ready (or only live)."""
    return start_server(
        model_dir, log_dir, "--default_steps", "2", *extra, module="tests.predictor.lifecycle_faults",
        env=env, wait="model" if wait_ready else "live", timeout=timeout,
    )  # fmt: skip


def main() -> None:
    _install_faults()
    from predictor.__main__ import main as predictor_main

    sys.argv[0] = "predictor"
    sys.exit(predictor_main(sys.argv[1:]))


if __name__ == "__main__":
    main()
