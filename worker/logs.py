"""Log setup: one key=value line per event that matters, never one per record."""

from __future__ import annotations

import logging
import sys


def setup(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(
            "ts=%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
            datefmt="%Y-%m-%dT%H:%M:%S",
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiokafka logs every group change at INFO; ours already say what matters.
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, root.level))
