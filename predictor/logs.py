"""Logging: kserve's own configuration, optionally rendered as one JSON object per line."""

from __future__ import annotations

import json
import logging
import time
import warnings

LOGGERS = ("", "kserve", "kserve.trace", "uvicorn", "uvicorn.error", "uvicorn.access", "predictor")


class JsonFormatter(logging.Formatter):
    """One JSON object per record: what log collectors (Fluent Bit, CloudWatch) parse without regexes."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def quiet_libraries() -> None:
    """Keep the libraries' console noise out of the pod log: progress bars and advice that needs no action.

    Cheap on purpose (no diffusers or torch import here: the HTTP server must answer liveness soon).
    - Progress bars (huggingface_hub downloads; transformers "Loading weights", which follows
      huggingface_hub's switch when it is imported) are tqdm redraws: in a log collector each is a
      line of junk. diffusers keeps its own switch: the text-to-image backend turns it off.
    - transformers warns once per image processor that torchvision is missing and falls back to the
      PIL implementation (transformers/utils/import_utils.py ``_LazyModule.__getattr__``); the
      fallback is what this runtime uses, so the advice is noise.
    - FastAPI deprecates ``ORJSONResponse``, which kserve's app uses as its default response class
      (kserve/model_server.py); nothing here can act on it.
    """
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()
    logging.getLogger("transformers.utils.import_utils").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message="ORJSONResponse is deprecated")


def setup_logging(configure_kserve: bool, log_config_file: str | None, log_format: str) -> None:
    if configure_kserve:
        from kserve.logging import configure_logging

        configure_logging(log_config_file)
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=logging.INFO)
    logging.getLogger("predictor").setLevel(logging.INFO)
    quiet_libraries()
    if log_format == "json":
        formatter = JsonFormatter()
        for name in LOGGERS:
            for handler in logging.getLogger(name).handlers:
                handler.setFormatter(formatter)
