"""Logging: kserve's own configuration, optionally rendered as one JSON object per line."""

from __future__ import annotations

import json
import logging
import time

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


def setup_logging(configure_kserve: bool, log_config_file: str | None, log_format: str) -> None:
    if configure_kserve:
        from kserve.logging import configure_logging

        configure_logging(log_config_file)
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=logging.INFO)
    logging.getLogger("predictor").setLevel(logging.INFO)
    if log_format == "json":
        formatter = JsonFormatter()
        for name in LOGGERS:
            for handler in logging.getLogger(name).handlers:
                handler.setFormatter(formatter)
