"""``python -m predictor`` whose model volume "arrives" only when a gate file exists.

Stands for a pod whose model never finishes loading (a stuck storage mount, a download that
hangs): the real server runs, answers liveness and /metrics, and reports the model not ready
until ``PREDICTOR_LOAD_GATE`` exists. Only the start of the model's one real load
(``PredictorModel._load_and_warm_up``, on the inference thread) waits.

    PREDICTOR_LOAD_GATE=/tmp/gate python -m tests.observability.gated_predictor --model_name ... ...
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from predictor.__main__ import main
from predictor.model import PredictorModel

_real_load = PredictorModel._load_and_warm_up


def _gated_load(self: PredictorModel) -> bool:
    gate = Path(os.environ["PREDICTOR_LOAD_GATE"])
    while not gate.exists():
        time.sleep(0.2)
    return _real_load(self)


if __name__ == "__main__":
    PredictorModel._load_and_warm_up = _gated_load
    sys.exit(main(sys.argv[1:]))
