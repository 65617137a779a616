"""Log setup: one line per event that matters, never one per record.

JSON lines on stdout by default (orjson), for log shippers: `ts`, `level`,
`logger`, `message`, and every `key=value` of our event messages as a field of
its own (`event`, `partition`, ...). `runtime.log_format = "text"` prints the
same lines for humans.
"""

from __future__ import annotations

import logging
import re
import sys
import time

import orjson

_FIELD = re.compile(r"(\w+)=('[^']*'|\"[^\"]*\"|\S+)")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        doc: dict[str, object] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
        }
        for key, value in _FIELD.findall(message):
            if key not in doc:
                doc[key] = value[1:-1] if value[:1] in "'\"" else value
        doc["message"] = message
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(doc).decode()


def setup(level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stdout)
    if fmt == "json":
        formatter: logging.Formatter = JsonFormatter()
        formatter.converter = time.gmtime  # type: ignore[assignment]
    else:
        formatter = logging.Formatter(
            "ts=%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
            datefmt="%Y-%m-%dT%H:%M:%S",
        )
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiokafka logs every group change at INFO; ours already say what matters.
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, root.level))
